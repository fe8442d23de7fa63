"""``--profile``: profile the sequential hot path (in-process, 100-step flows), and a worker.

* pyinstrument (a statistical profiler; ``pip install pyinstrument``) for the call tree, written
  to ``profile.txt`` / ``profile.html`` in the results directory;
* cProfile (deterministic) for call counts per step — how many event-loop iterations, greenlet
  switches, socket sends and JSON encodings one checkpointed step costs — in ``cprofile.txt``;
* pyinstrument inside a ``flowctl worker`` process running 200 concurrent 10-step runs, in
  ``profile-worker.txt``;
* PostgreSQL's CPU per statement while a worker drains 200 runs, per run (the embedded server
  only: ``log_statement_stats``, read back from its log by ``bench/pglog.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import io
import pstats
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from iterflow import Engine

from . import concurrency
from .config import Context
from .flows import BenchFlows, Steps, register
from .measure import wait_for_count
from .pglog import statement_cpu
from .report import Section
from .server import admin_exec
from .stats import PgCpu
from .steps import wait_worker_ready
from .workers import WorkerProcess

__all__ = ["run"]

#: Functions whose call count per step is reported: (file name suffix, function name part).
COUNTED = {
    "event-loop iterations": ("asyncio/base_events.py", "_run_once"),
    "greenlet switches (SQLAlchemy async)": ("~", "method 'switch' of 'greenlet.greenlet'"),
    "socket sends": ("~", "method 'send' of '_socket.socket'"),
    "json.dumps": ("json/__init__.py", "dumps"),
    "pool checkouts": ("pool/base.py", "_checkout"),
    "pydantic validate_python": ("pydantic/type_adapter.py", "validate_python"),
    "asyncio tasks created": ("asyncio/base_events.py", "create_task"),
}


async def _workload(url: str, runs: int, n: int) -> None:
    engine = Engine(url)
    flows = register(engine)
    async with engine:
        for _ in range(runs):
            started = await flows.steps.start(Steps(n=n))
            await engine.worker.advance(started.run_id)


async def run(ctx: Context) -> Section:
    """Profile ``runs`` in-process 100-step runs twice: pyinstrument, then cProfile."""
    section = Section("profile", "Profile of the sequential hot path (in-process, 100 steps)")
    runs, n = (3 if ctx.quick else 20), 100
    ctx.results_dir.mkdir(parents=True, exist_ok=True)
    with ctx.server.database("profile") as url:
        await _workload(url, 2, n)  # warm-up
        try:
            from pyinstrument import Profiler
        except ImportError:
            section.add("pyinstrument", None, note="not installed: pip install pyinstrument")
        else:
            profiler = Profiler(interval=0.0005, async_mode="disabled")
            t0 = time.perf_counter()
            profiler.start()
            await _workload(url, runs, n)
            profiler.stop()
            seconds = time.perf_counter() - t0
            text = profiler.output_text(unicode=False, color=False, show_all=True)
            (ctx.results_dir / "profile.txt").write_text(text)
            (ctx.results_dir / "profile.html").write_text(profiler.output_html())
            section.add(
                "pyinstrument: wall ms per step (profiled)",
                seconds / (runs * n) * 1000,
                "ms",
                note=f"tree in {ctx.results_dir / 'profile.txt'}",
            )
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        await _workload(url, runs, n)
        prof.disable()
        seconds = time.perf_counter() - t0
    buffer = io.StringIO()
    stats = pstats.Stats(prof, stream=buffer)
    stats.sort_stats("tottime").print_stats(40)
    stats.sort_stats("cumulative").print_stats(60)
    (ctx.results_dir / "cprofile.txt").write_text(buffer.getvalue())
    steps = runs * n
    section.add("cProfile: wall ms per step (profiled)", seconds / steps * 1000, "ms")
    raw_stats: Any = stats.stats  # type: ignore[attr-defined]
    counts: dict[str, float] = {}
    for label, needle in COUNTED.items():
        suffix, name = needle
        calls = sum(
            value[1]
            for (file, _line, func), value in raw_stats.items()
            if file.endswith(suffix) and (name in func if suffix == "~" else func == name)
        )
        counts[label] = calls / steps
        section.add(f"{label} per step", calls / steps, "calls")
    section.raw = {"calls_per_step": counts, "runs": runs, "steps_per_run": n}
    with ctx.server.database("profile_worker") as url:
        worker_steps, worker_cpu = await _profile_worker(ctx, url)
    section.add(
        "worker process CPU per step under load (profiled)",
        worker_cpu / worker_steps * 1000,
        "ms",
        note=f"tree in {ctx.results_dir / 'profile-worker.txt'}",
    )
    await _statement_profile(ctx, section)
    return section


async def _statement_profile(ctx: Context, section: Section) -> None:
    """PostgreSQL's CPU per statement while a worker drains ``concurrent_runs`` 10-step runs
    (their starts included), per run: ``log_statement_stats`` on the profile's own database,
    read back from the embedded server's log (``bench/pglog.py``)."""
    sizes = ctx.sizes
    log = ctx.server.log_path()
    if log is None:
        section.add("PostgreSQL CPU per statement", None, note="needs the embedded server's log")
        return
    runs = sizes.concurrent_runs
    with ctx.server.database("profile_sql") as url:
        name = make_url(url).database
        admin_exec(ctx.server.admin_url, f"ALTER DATABASE {name} SET log_statement_stats = on")
        async with _worker_and_engine(ctx, url, "profile-sql") as (worker, engine, flows):
            offset = log.stat().st_size
            await concurrency.drain(
                engine,
                flows.steps,
                runs,
                sizes.concurrent_steps,
                asyncio.Semaphore(10),
                [worker],
                PgCpu(None),
            )
        with log.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    rows = [r for r in statement_cpu(text) if r.seconds * 1e6 / runs >= 5]
    total = sum(r.seconds for r in rows)
    for row in rows[:12]:
        section.add(
            f"PostgreSQL CPU per run: {row.label}",
            row.seconds * 1e6 / runs,
            "us",
            note=f"{row.calls / runs:.2f} per run, {row.seconds / total * 100:.0f} % of the logged",
        )
    section.raw = {
        **(section.raw or {}),
        "statement_cpu": [[r.label, r.calls, r.seconds] for r in rows],
        "statement_cpu_runs": runs,
    }


async def _profile_worker(ctx: Context, url: str) -> tuple[int, float]:
    """A ``flowctl worker`` under pyinstrument while it runs the concurrency workload."""
    sizes = ctx.sizes
    profile = ctx.results_dir / "profile-worker.txt"
    async with _worker_and_engine(ctx, url, "profile-worker", profile) as (worker, engine, flows):
        gate = asyncio.Semaphore(10)

        async def start_one() -> None:
            async with gate:
                await flows.steps.start(Steps(n=sizes.concurrent_steps))

        cpu0 = worker.cpu_seconds()
        await asyncio.gather(*(start_one() for _ in range(sizes.concurrent_runs)))
        done = f"SELECT count(*) FROM {engine.settings.db_schema}.runs WHERE status = 'done'"
        await wait_for_count(engine, done, sizes.concurrent_runs, timeout=300)
        cpu = worker.cpu_seconds() - cpu0
    return sizes.concurrent_runs * sizes.concurrent_steps, cpu


@contextlib.asynccontextmanager
async def _worker_and_engine(
    ctx: Context, url: str, name: str, profile: Path | None = None
) -> AsyncIterator[tuple[WorkerProcess, Engine, BenchFlows]]:
    """A ``flowctl worker`` process on the bench flows (under pyinstrument with ``profile``;
    stopped with SIGINT, which writes it) and an open engine with them registered, the worker
    ready."""
    worker = WorkerProcess(
        url, ctx.log_dir, name=name, concurrency=ctx.sizes.worker_concurrency, profile=profile
    ).start()
    try:
        engine = Engine(url, pool_size=10)
        flows = register(engine)
        async with engine:
            await wait_worker_ready(engine, [worker], 60)
            yield worker, engine, flows
    finally:
        worker.stop(signal.SIGINT)
