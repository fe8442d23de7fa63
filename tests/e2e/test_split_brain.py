"""Issue 4: two workers forced onto the same run. Worker A is frozen with SIGSTOP in the middle
of a step; its lease expires, the reconciler re-drives the run and worker B completes it. After
SIGCONT, A's writes are refused by the lease token and A writes nothing at all."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

from iterflow import Engine
from iterflow.core.errors import ResultTimeout
from tests.e2e.chaos_app import HoldJob, hold
from tests.e2e.chaos_app import engine as app
from tests.e2e.harness import WorkerPool, drained, read_executions, undrained, until
from tests.integration.flows import sql

LEASE = app.settings.lease_seconds  # 2s
RECONCILE = app.settings.reconcile_every_seconds  # 1s
POLL = app.settings.worker_poll_interval  # 0.2s


def run_rows(database_url: str, run_id: str) -> dict[str, Any]:
    """Everything stored about one run, including its procrastinate jobs."""
    q = {
        "run": "SELECT * FROM iterflow.runs WHERE id = %s",
        "steps": "SELECT * FROM iterflow.steps WHERE run_id = %s ORDER BY position",
        "events": "SELECT * FROM iterflow.events WHERE run_id = %s ORDER BY id",
        "timers": "SELECT * FROM iterflow.timers WHERE run_id = %s ORDER BY cursor_key",
        "signals": "SELECT * FROM iterflow.signals WHERE run_id = %s ORDER BY id",
        "jobs": "SELECT id, status, worker_id, attempts FROM procrastinate_jobs "
        "WHERE lock = %s::text ORDER BY id",
    }
    return {k: sql(database_url, v, run_id) for k, v in q.items()}


def stuck_state(database_url: str, run_id: str) -> str:
    """The run, its jobs and events, every procrastinate job and worker: why nobody took over."""
    rows = run_rows(database_url, run_id)
    everything = {
        "all jobs": sql(
            database_url,
            "SELECT id, queue_name, task_name, status, lock, worker_id, scheduled_at "
            "FROM procrastinate_jobs ORDER BY id",
        ),
        "procrastinate workers": sql(
            database_url, "SELECT id, last_heartbeat, now() FROM procrastinate_workers"
        ),
        "sessions": sql(
            database_url,
            "SELECT pid, state, wait_event_type, wait_event, xact_start, left(query, 100) "
            "FROM pg_stat_activity WHERE datname = current_database() ORDER BY xact_start",
        ),
        "job events": sql(
            database_url,
            "SELECT job_id, type, at FROM procrastinate_events ORDER BY id DESC LIMIT 30",
        ),
    }
    lines = [f"{k}: {v}" for k, v in {**rows, **everything}.items() if k != "steps"]
    return "\n".join(lines)


async def test_sigstopped_worker_is_fenced_after_lease_expiry(
    database_url: str, tmp_path: Path
) -> None:
    counter = tmp_path / "executions.txt"
    counter.touch()
    pool = WorkerPool(database_url, tmp_path / "logs", 2, concurrency=2)
    async with Engine(database_url, pool_size=2) as client:
        handle = client.register(hold.definition)
        pool.start_all()
        try:
            release = tmp_path / "release"
            run = await handle.start(HoldJob(counter_file=str(counter), release_file=str(release)))
            rid = str(run.run_id)
            first = await until(
                lambda: read_executions(counter), timeout=60, what="the step to start"
            )
            a_pid = first[0].pid
            a_slot = next(s for s in pool.slots if s.proc is not None and s.proc.pid == a_pid)
            b_slot = next(s for s in pool.slots if s is not a_slot)
            assert b_slot.proc is not None
            b_pid = b_slot.proc.pid
            os.kill(a_pid, signal.SIGSTOP)
            stopped_at = time.time()
            release.touch()  # A is frozen: only B can see it (until SIGCONT)
            print(
                f"\ninjected: SIGSTOP worker A (pid {a_pid}) in the middle of step 'slow' of "
                f"run {rid}, then released the step (only B can see that); worker B "
                f"(pid {b_pid}) idle"
            )
            try:
                try:
                    out = await handle.result(run.run_id, timeout=60)
                except ResultTimeout as exc:  # say where it stood, for the flake hunt
                    raise AssertionError(f"{exc}\n{stuck_state(database_url, rid)}") from exc
                await until(
                    lambda: drained(database_url),
                    timeout=30,
                    what="B's job to finish",
                    explain=lambda: undrained(database_url),
                )
                frozen = run_rows(database_url, rid)
            finally:
                os.kill(a_pid, signal.SIGCONT)
            resumed_at = time.time()
            print(f"injected: SIGCONT worker A after {resumed_at - stopped_at:.1f}s")

            def a_gave_up() -> bool:
                return f"lease lost on run {rid}" in a_slot.log.read_text(errors="replace")

            await until(a_gave_up, timeout=30, what="worker A to log its lost lease")
            # A's body and renewer timers fired on resume; give any late write time to land.
            await asyncio.sleep(LEASE)
            after = run_rows(database_url, rid)
        finally:
            pool.stop_all()

    a_log = a_slot.log.read_text(errors="replace")
    executions = read_executions(counter)
    assert [e.pid for e in executions] == [a_pid, b_pid], executions
    takeover = executions[1].started_ns / 1e9 - stopped_at
    assert out.pid == b_pid, out
    memo = sql(database_url, "SELECT cursor_key, output FROM iterflow.steps WHERE run_id = %s", rid)
    assert memo == [("slow", {"pid": b_pid, "value": 1})], memo
    events = [
        t
        for (t,) in sql(
            database_url, "SELECT type FROM iterflow.events WHERE run_id = %s ORDER BY id", rid
        )
    ]
    assert events == ["started", "recovered", "completed"], events
    assert after == frozen, "worker A wrote after SIGCONT"
    refusals = [
        line.split(": ", 1)[-1] for line in a_log.splitlines() if "WARNING" in line and rid in line
    ]
    assert refusals, a_log[-2000:]
    print(
        f"verified: B took the run over {takeover:.2f}s after A froze (lease {LEASE}s + "
        f"reconcile every {RECONCILE}s + poll {POLL}s) and completed it: memo and output "
        f"hold B's pid; events {events}"
    )
    print(
        f"verified: A resumed and was refused; its log says {refusals}; runs/steps/events/"
        f"timers/signals/jobs rows unchanged after SIGCONT; A ran the step once, B once"
    )
    assert takeover < LEASE + RECONCILE + POLL + 2.0, takeover
