"""Per-key concurrency across two worker processes under load, measured from outside.

Two ``flowctl worker`` processes (concurrency 8 each, so 16 attempt slots; the second started
with ``--queues default --flows limited``) share 80 runs over 4 keys limited to 3 live attempts
per key. Each attempt's step logs its entry and exit with a clock every process shares;
replaying the log, no key ever had more than 3 live attempts, every key reached 3 (the limit,
not the load, was the bound), both processes ran attempts, and every run finished.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

from iterflow import Engine
from iterflow.core.models import RunStatus
from tests.e2e.flow_control_app import LIMIT, Job, limited
from tests.e2e.workers import start_worker, stop

KEYS = ("a", "b", "c", "d")
RUNS = 80


def peaks(log: Path) -> tuple[dict[str, int], set[str], int]:
    """Per key, the most attempts live at once; the pids that ran attempts; attempts made."""
    events = []
    pids = set()
    for line in log.read_text().splitlines():
        key, what, at, pid = line.split()
        events.append((int(at), 0 if what == "exit" else 1, key))
        pids.add(pid)
    live: dict[str, int] = defaultdict(int)
    peak: dict[str, int] = defaultdict(int)
    for _, enter, key in sorted(events):
        live[key] += 1 if enter else -1
        peak[key] = max(peak[key], live[key])
    return dict(peak), pids, sum(1 for e in events if e[1])


async def test_per_key_limit_holds_across_two_worker_processes(
    database_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "live.log"
    log.touch()
    workers = [
        start_worker(
            "flow_control_app:engine",
            database_url,
            tmp_path / f"w{i}.log",
            concurrency=8,
            options=options,
        )
        for i, options in enumerate([(), ("--queues", "default", "--flows", "limited")])
    ]
    try:
        async with Engine(database_url, pool_size=4) as client:
            client.register(limited.definition)
            ids = [
                (await client.start("limited", Job(key=KEYS[i % 4], log=str(log)))).run_id
                for i in range(RUNS)
            ]
            deadline = time.monotonic() + 120
            for run_id in ids:
                left = max(1.0, deadline - time.monotonic())
                assert await client.result(run_id, timeout=left) in KEYS
            statuses = {(await client.status(r)).run.status for r in ids}
            assert statuses == {RunStatus.DONE}
    finally:
        for proc in workers:
            stop(proc)
    peak, pids, attempts = peaks(log)
    assert attempts == RUNS, "each run's step ran once"
    assert peak == dict.fromkeys(KEYS, LIMIT), f"live attempts per key: {peak}"
    assert len(pids) == 2, "both worker processes ran attempts"
