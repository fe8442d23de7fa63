"""Fault-injection helpers: a supervised pool of worker processes, the executions recorded by
step bodies, and the end-of-test invariants checked against the database."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tests.e2e.workers import HERE, ROOT, start_worker
from tests.integration.flows import sql

T = TypeVar("T")
APP = "chaos_app:engine"
LIVE = ("pending", "running", "sleeping", "awaiting_signal", "awaiting_child", "retrying")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ns(ts: datetime) -> int:
    """A timestamptz as integer nanoseconds since the epoch (no float rounding)."""
    return (ts - _EPOCH) // timedelta(microseconds=1) * 1000


class Proc(Protocol):
    """What the pool needs of a worker process (``subprocess.Popen`` or a forked child)."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def terminate(self) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...


def kill(proc: Proc, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the worker and reap it."""
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait(timeout=30)


def stop(proc: Proc) -> None:
    """Stop a worker gracefully (SIGTERM: it finishes running attempts), SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            kill(proc)


class ForkedWorker:
    """A worker forked by :class:`ForkServer`; Popen-like, reaped by the server."""

    def __init__(self, server: ForkServer, pid: int) -> None:
        self.server = server
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.exits.get(self.pid)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.server.changed:
            while self.poll() is None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0)
                self.server.changed.wait(left)
        assert self.returncode is not None
        return self.returncode


class ForkServer:
    """Runs ``forkserver.py``: warm imports once, fork a ``flowctl worker`` per spawn."""

    def __init__(self, database_url: str, *, app: str = APP, concurrency: int = 2) -> None:
        env = dict(os.environ)
        env["ITERFLOW_DATABASE_URL"] = database_url
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "forkserver.py"), app, str(concurrency)],
            cwd=HERE,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        self.exits: dict[int, int] = {}
        self.changed = threading.Condition()
        self._pids: list[int] = []
        self._ready = False
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        with self.changed:
            if not self.changed.wait_for(lambda: self._ready, 60):
                raise RuntimeError("fork server did not start")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            if not raw.strip():
                continue
            kind, *rest = raw.decode().split()
            with self.changed:
                if kind == "ready":
                    self._ready = True
                elif kind == "pid":
                    self._pids.append(int(rest[0]))
                elif kind == "exit":
                    self.exits[int(rest[0])] = int(rest[1])
                self.changed.notify_all()

    def spawn(self, log: Path) -> ForkedWorker:
        with self._lock:
            assert self.proc.stdin is not None
            with self.changed:
                before = len(self._pids)
            self.proc.stdin.write(f"spawn {log}\n".encode())
            self.proc.stdin.flush()
            with self.changed:
                if not self.changed.wait_for(lambda: len(self._pids) > before, 30):
                    raise RuntimeError("fork server did not answer")
                pid = self._pids[before]
        return ForkedWorker(self, pid)

    def close(self) -> None:
        """Close stdin: the server SIGKILLs any child left and exits."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class Slot:
    """One supervised worker: its current process and every pid it has had."""

    index: int
    log: Path
    proc: Proc | None = None
    pids: list[int] = field(default_factory=list)
    started_at: float = 0.0


class WorkerPool:
    """``size`` worker subprocesses (``flowctl worker``), restarted like a supervisor would."""

    def __init__(
        self,
        database_url: str,
        logs: Path,
        size: int,
        *,
        concurrency: int = 2,
        app: str = APP,
        fork: ForkServer | None = None,
    ) -> None:
        self.database_url = database_url
        self.concurrency = concurrency
        self.app = app
        self.fork = fork
        logs.mkdir(parents=True, exist_ok=True)
        self.slots = [Slot(i, logs / f"worker{i}.log") for i in range(size)]
        self.kills = 0
        self.exits: list[tuple[int, int | None]] = []  # (pid, returncode) of unplanned exits
        self.before_kill: Callable[[int], Any] | None = None
        #: Wall-clock time of the last SIGKILL (``None``: none yet).
        self.killed_at: float | None = None

    def start(self, slot: Slot) -> None:
        if self.fork is not None:
            slot.proc = self.fork.spawn(slot.log)
        else:
            slot.proc = start_worker(
                self.app, self.database_url, slot.log, concurrency=self.concurrency
            )
        slot.pids.append(slot.proc.pid)
        slot.started_at = time.monotonic()

    def start_all(self) -> None:
        for slot in self.slots:
            self.start(slot)

    def live(self) -> list[Slot]:
        return [s for s in self.slots if s.proc is not None and s.proc.poll() is None]

    def sigkill(self, slot: Slot) -> int:
        """SIGKILL the slot's worker (no cleanup at all) and reap it; return its pid."""
        assert slot.proc is not None
        pid = slot.proc.pid
        if self.before_kill is not None:
            self.before_kill(pid)
        kill(slot.proc, signal.SIGKILL)
        self.kills += 1
        self.killed_at = time.time()
        return pid

    def supervise(self) -> list[int]:
        """Restart every worker that exited on its own; return the pids that had exited."""
        exited = []
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is not None:
                exited.append(slot.proc.pid)
                self.exits.append((slot.proc.pid, slot.proc.returncode))
                self.start(slot)
        return exited

    def stop_all(self) -> None:
        for slot in self.slots:
            if slot.proc is not None:
                stop(slot.proc)

    def exit_reasons(self) -> list[str]:
        """Why workers exited on their own, read from their logs."""
        reasons: Counter[str] = Counter()
        for slot in self.slots:
            text = slot.log.read_text(errors="replace") if slot.log.exists() else ""
            for block in text.split("Traceback (most recent call last):")[1:]:
                last = next((ln for ln in block.splitlines() if ln and not ln[0].isspace()), "?")
                where = "fetch_job" if "in fetch_job" in block else "worker"
                if "run_worker_async" in block:
                    reasons[f"{last.rstrip(': ')} in procrastinate {where}"] += 1
            reasons["procrastinate listener side task failed (#1116)"] += text.count(
                "Side task listener failed"
            )
        return [f"{n}x {r}" for r, n in reasons.items() if n]

    def reconciler_totals(self) -> Counter[str]:
        """Sum of the reconciler's ``ReconcileReport`` log lines over every worker."""
        totals: Counter[str] = Counter()
        for text in self.log_text().splitlines():
            match = re.search(r"reconciler repaired ReconcileReport\((.*)\)", text)
            if match:
                for part in match.group(1).split(","):
                    key, _, value = part.strip().partition("=")
                    if value.isdigit():
                        totals[key] += int(value)
        return totals

    def all_pids(self) -> set[int]:
        return {pid for s in self.slots for pid in s.pids}

    def log_text(self) -> str:
        return "\n".join(s.log.read_text(errors="replace") for s in self.slots if s.log.exists())

    async def chaos(
        self,
        stop_event: asyncio.Event,
        *,
        every: tuple[float, float],
        min_age: float,
        rng: random.Random,
    ) -> None:
        """Until ``stop_event``: every ``every`` seconds SIGKILL a random worker that has been up
        at least ``min_age`` seconds, and start its replacement at once."""
        while not stop_event.is_set():
            try:
                await asyncio.wait_for(stop_event.wait(), rng.uniform(*every))
                return
            except TimeoutError:
                pass
            self.supervise()
            now = time.monotonic()
            candidates = [s for s in self.live() if now - s.started_at >= min_age]
            if not candidates:
                continue
            slot = rng.choice(candidates)
            await asyncio.to_thread(self.sigkill, slot)
            self.start(slot)


@dataclass(frozen=True)
class Execution:
    run_id: str
    key: str
    pid: int
    started_ns: int


def read_executions(path: Path) -> list[Execution]:
    """Parse the counter file written by ``chaos_app.record``."""
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 4:
            out.append(Execution(parts[0], parts[1], int(parts[2]), int(parts[3])))
    return out


def check_checkpoints(
    database_url: str, executions: list[Execution], *, tolerance_ms: float = 5.0
) -> dict[str, object]:
    """No step body started after its checkpoint committed; every checkpoint had ≥1 execution.

    ``steps.finished_at`` is ``now()`` of the checkpoint's one-statement transaction (the
    transaction start, i.e. a lower bound of its commit); the executions' timestamps are
    ``time.time_ns()`` taken in the worker when the body starts. Both read the same kernel
    clock (CLOCK_REALTIME) on this machine, so the tolerance only absorbs PostgreSQL's
    microsecond rounding and a possible NTP slew between the two reads; an execution begun
    after the commit would follow it by at least a claim round trip (a new attempt must load
    the history first).
    """
    rows = sql(
        database_url,
        "SELECT run_id::text, cursor_key, finished_at, (output ->> 'pid')::int "
        "FROM iterflow.steps WHERE kind = 'step' AND status = 'ok'",
    )
    by_key: dict[tuple[str, str], list[Execution]] = defaultdict(list)
    for e in executions:
        by_key[(e.run_id, e.key)].append(e)
    tol = int(tolerance_ms * 1e6)
    late: list[str] = []
    missing: list[tuple[str, str]] = []
    wrong_pid: list[tuple[str, str]] = []
    closest_ms = float("inf")
    for run_id, key, finished_at, pid in rows:
        execs = by_key.get((run_id, key), [])
        if not execs:
            missing.append((run_id, key))
            continue
        if pid not in {e.pid for e in execs}:
            wrong_pid.append((run_id, key))
        committed = ns(finished_at)
        for e in execs:
            closest_ms = min(closest_ms, (committed - e.started_ns) / 1e6)
            if e.started_ns > committed + tol:
                late.append(
                    f"{run_id} {key}: pid {e.pid} started "
                    f"{(e.started_ns - committed) / 1e6:.1f} ms after the checkpoint"
                )
    assert not late, "step bodies ran after their checkpoint committed:\n" + "\n".join(late)
    assert not missing, f"checkpoints without a recorded execution: {missing[:5]}"
    assert not wrong_pid, f"memo pid is not among the executions: {wrong_pid[:5]}"
    distribution = Counter(len(by_key[(r, k)]) for r, k, _, _ in rows)
    return {
        "checkpoints": len(rows),
        "executions": sum(len(by_key[(r, k)]) for r, k, _, _ in rows),
        "distribution": dict(sorted(distribution.items())),
        "min_margin_ms": round(closest_ms, 2),
    }


def check_quiescent(database_url: str) -> dict[str, int]:
    """Nothing left live, no wake-up job stuck; return the reconciler's repair counts."""
    live = sql(
        database_url,
        "SELECT status, count(*) FROM iterflow.runs WHERE status = ANY(%s) GROUP BY status",
        list(LIVE),
    )
    assert not live, f"runs left in a live status: {live}"
    doing = sql(
        database_url,
        "SELECT id, task_name, lock FROM procrastinate_jobs WHERE status = 'doing'",
    )
    assert not doing, f"procrastinate jobs stuck in doing: {doing}\n" + "\n".join(
        describe_run(database_url, lock) for _, _, lock in doing
    )
    todo = sql(
        database_url,
        "SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo' "
        "AND task_name = 'iterflow.advance'",
    )[0][0]
    assert todo == 0, f"{todo} wake-ups still queued for terminal runs"
    events = dict(
        sql(
            database_url,
            "SELECT type, count(*) FROM iterflow.events "
            "WHERE type IN ('recovered', 'rewoken') GROUP BY type",
        )
    )
    recovered_runs = sql(
        database_url,
        "SELECT count(DISTINCT run_id) FROM iterflow.events WHERE type IN ('recovered', 'rewoken')",
    )[0][0]
    return {
        "recovered": int(events.get("recovered", 0)),
        "rewoken": int(events.get("rewoken", 0)),
        "runs_repaired": int(recovered_runs),
    }


def describe_run(database_url: str, run_id: str) -> str:
    """A run's row, events and jobs, for assertion messages."""
    run = sql(
        database_url,
        "SELECT status, waiting_for, lease_owner, lease_expires_at, attempts, updated_at "
        "FROM iterflow.runs WHERE id::text = %s",
        run_id,
    )
    events = sql(
        database_url,
        "SELECT at, type, cursor_key, data FROM iterflow.events WHERE run_id::text = %s "
        "ORDER BY id",
        run_id,
    )
    jobs = sql(
        database_url,
        "SELECT j.id, j.status, j.worker_id, w.last_heartbeat, j.scheduled_at "
        "FROM procrastinate_jobs AS j LEFT JOIN procrastinate_workers AS w "
        "ON w.id = j.worker_id WHERE j.lock = %s ORDER BY j.id",
        run_id,
    )
    steps = sql(
        database_url,
        "SELECT position, cursor_key, status, started_at, finished_at FROM iterflow.steps "
        "WHERE run_id::text = %s ORDER BY position",
        run_id,
    )
    history = sql(
        database_url,
        "SELECT e.job_id, e.type, e.at FROM procrastinate_events AS e "
        "JOIN procrastinate_jobs AS j ON j.id = e.job_id WHERE j.lock = %s ORDER BY e.id",
        run_id,
    )
    lines = [
        f"run {run_id}: {run}",
        *map(str, events),
        *map(str, steps),
        *map(str, jobs),
        *map(str, history),
    ]
    return "\n  ".join(lines)


def _undrained_sql(killed_at: float | None) -> tuple[str, tuple[Any, ...]]:
    dead = "w.last_heartbeat < now() - interval '5 seconds'"
    params: tuple[Any, ...] = ()
    if killed_at is not None:  # a worker killed then never heartbeats again
        dead += " OR w.last_heartbeat <= to_timestamp(%s)"
        params = (killed_at,)
    query = (
        "SELECT j.id, j.task_name, j.status, j.lock, j.scheduled_at, j.worker_id, "
        "w.last_heartbeat FROM procrastinate_jobs AS j "
        "LEFT JOIN procrastinate_workers AS w ON w.id = j.worker_id "
        "WHERE (j.task_name = 'iterflow.advance' AND j.status IN ('todo', 'doing')) "
        f"OR (j.status = 'doing' AND (w.id IS NULL OR {dead})) "
    )
    return query, params


def drained(database_url: str, *, killed_at: float | None = None) -> bool:
    """No wake-up job queued or running, and no job of any task left ``doing`` by a dead worker
    (checked while workers, and so the reconciler, still run). A worker is dead when it has not
    heartbeaten for 5 s or, given the wall-clock time of the last SIGKILL, not since then."""
    query, params = _undrained_sql(killed_at)
    return not sql(database_url, query + "LIMIT 1", *params)


def undrained(database_url: str, *, killed_at: float | None = None) -> str:
    """What keeps :func:`drained` false: the jobs, and each wake-up's run, for a failure message."""
    query, params = _undrained_sql(killed_at)
    jobs = sql(database_url, query + "ORDER BY j.id LIMIT 5", *params)
    lines = [f"job {job}" for job in jobs]
    lines += [describe_run(database_url, lock) for _, _, _, lock, *_ in jobs if lock]
    return "\n".join(lines)


async def until(
    check: Callable[[], T],
    *,
    timeout: float,
    every: float = 0.1,
    what: str = "condition",
    explain: Callable[[], str] | None = None,
) -> T:
    """Poll a synchronous ``check`` (run in a thread) until it returns a truthy value; on timeout
    the error message includes ``explain()`` when given."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n{explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")
        await asyncio.sleep(every)
