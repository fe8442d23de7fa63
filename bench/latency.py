"""(4) Latency percentiles, through a real worker process, timed from outside.

* start -> first step running: wall clock before ``handle.start`` vs the ``time.time()`` the
  first step body returns (recorded in its memo);
* ``engine.signal`` -> run resumed: wall clock before ``engine.signal`` vs the first step after
  ``ctx.signal`` (the run was parked in ``awaiting_signal``; the signal result must say
  ``delivered``);
* timer due -> run resumed (lateness): ``ctx.sleep(until=due)`` vs the step right after it;
* run finished -> ``handle.result`` returns: the worker process logs the time its finishing
  transaction returned (``BENCH_FINISH_LOG``); the client was already waiting in ``result``.

Client and worker run on the same host, so their wall clocks agree.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from datetime import UTC, datetime, timedelta

from iterflow import Engine
from iterflow.core.models import RunStatus

from .config import Context
from .flows import Due, Stamps, register
from .report import Section, Target, percentiles
from .steps import wait_worker_ready
from .workers import WorkerProcess

__all__ = ["run"]


async def _wait_status(
    engine: Engine, run_id: uuid.UUID, status: RunStatus, timeout: float
) -> None:
    deadline = time.perf_counter() + timeout
    while True:
        run = await engine.store.get_run(run_id)
        if run is not None and run.status is status:
            return
        if time.perf_counter() > deadline:
            raise TimeoutError(f"run {run_id} did not reach {status.value}")
        await asyncio.sleep(0.005)


def _rows(
    section: Section, label: str, samples_s: list[float], target: Target | None, target_on: str
) -> dict[str, float]:
    ms = [s * 1000 for s in samples_s]
    p = percentiles(ms)
    for key in ("p50", "p95", "p99"):
        section.add(
            f"{label} {key}",
            p.get(key),
            "ms",
            target if key == target_on else None,
            note=f"n={p['n']}, max {p.get('max', 0):.1f} ms" if key == "p99" else "",
        )
    return p


async def run(ctx: Context) -> Section:
    """Measure the four latencies."""
    section = Section("latency", "4. Latency percentiles (worker process, wall clock)")
    sizes = ctx.sizes
    rng = random.Random(5)
    with ctx.server.database("latency") as url:
        worker = WorkerProcess(
            url,
            ctx.log_dir,
            name="latency",
            concurrency=sizes.worker_concurrency,
            finish_log=True,
        ).start()
        try:
            engine = Engine(url, pool_size=4)
            flows = register(engine)
            async with engine:
                await wait_worker_ready(engine, [worker], 60)
                start_lat: list[float] = []
                signal_lat: list[float] = []
                signal_call: list[float] = []
                result_at: dict[str, float] = {}
                for i in range(sizes.latency_samples + 2):
                    t_start = time.time()
                    started = await flows.latency.start(Stamps(first=0, resumed=0))
                    await _wait_status(engine, started.run_id, RunStatus.AWAITING_SIGNAL, 30)
                    await asyncio.sleep(rng.uniform(0.02, 0.05))
                    t_signal = time.time()
                    sent = await engine.signal(started.run_id, "go", {"sent_at": t_signal})
                    t_called = time.time()
                    stamps = await flows.latency.result(started.run_id, timeout=30)
                    t_result = time.time()
                    if sent.kind != "delivered":
                        raise RuntimeError(f"signal was {sent.kind}, expected delivered")
                    if i < 2:  # warm-up samples
                        continue
                    start_lat.append(stamps.first - t_start)
                    signal_lat.append(stamps.resumed - t_signal)
                    signal_call.append(t_called - t_signal)
                    result_at[str(started.run_id)] = t_result
                    await asyncio.sleep(rng.uniform(0.03, 0.08))

                # timers: sleeps due at spread-out, random times; the worker is otherwise idle
                base = datetime.now(UTC) + timedelta(seconds=1.5)
                dues = [
                    base + timedelta(seconds=i * sizes.timer_spacing + rng.uniform(0, 0.2))
                    for i in range(sizes.timer_samples)
                ]
                handles = [await flows.timer.start(Due(due=d)) for d in dues]
                lateness: list[float] = []
                for due, h in zip(dues, handles, strict=True):
                    woke = await flows.timer.result(h.run_id, timeout=60)
                    lateness.append(woke - due.timestamp())
            finishes = worker.finishes()
        finally:
            worker.stop()
    result_lat = [at - finishes[rid] for rid, at in result_at.items() if rid in finishes]
    p_start = _rows(section, "start -> first step running", start_lat, None, "")
    p_signal = _rows(
        section, "engine.signal -> run resumed", signal_lat, Target("<=", 20, "p50 < 20 ms"), "p50"
    )
    p_timer = _rows(
        section,
        "timer due -> run resumed (lateness)",
        lateness,
        Target("<=", 1000, "p99 < 1 s"),
        "p99",
    )
    p_result = _rows(
        section,
        "run finished -> handle.result returns",
        result_lat,
        Target("<=", 10, "p50 < 10 ms"),
        "p50",
    )
    p_call = percentiles([s * 1000 for s in signal_call])
    section.add(
        "engine.signal call itself p50",
        p_call.get("p50"),
        "ms",
        note="part of signal -> resumed: validation, get_run, one transaction",
    )
    section.raw = {
        "start_to_first_step_ms": p_start,
        "signal_to_resumed_ms": p_signal,
        "timer_lateness_ms": p_timer,
        "finish_to_result_ms": p_result,
        "signal_call_ms": p_call,
        "worker_poll_interval_s": engine.settings.worker_poll_interval,
    }
    return section
