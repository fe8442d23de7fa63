"""The benchmark's flows, and the engine worker processes run (``bench.flows:engine``).

Worker processes are real ``flowctl worker bench.flows:engine`` subprocesses. Two optional
instruments, switched on by environment variables of the worker process, observe them without
changing what they do:

* ``BENCH_MONITOR``: a file that receives a JSON line every half second with the worker's RSS
  and its number of asyncio tasks (``asyncio.all_tasks()``).
* ``BENCH_FINISH_LOG``: a file that receives ``<run_id> <unix time>`` when a run's finishing
  transaction has committed (the store's ``finish`` returned), to time ``handle.result``.
* ``BENCH_PYINSTRUMENT``: a file that receives a pyinstrument profile of the whole worker when
  it is stopped with SIGINT.
* ``BENCH_SETTINGS``: a JSON object of :class:`~iterflow.Settings` fields for the worker's
  engine (the concurrency section turns ``group_commit`` off for its paired baseline).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]
from pydantic import BaseModel

from iterflow import Engine, FlowContext, Settings, Tick
from iterflow.runtime.engine import FlowHandle

__all__ = ["BenchEngine", "BenchFlows", "engine", "flows", "register"]


class Steps(BaseModel):
    """Input of the no-op flow: how many steps to run."""

    n: int


class Go(BaseModel):
    """The payload of the ``go`` signal."""

    sent_at: float = 0.0


class Stamps(BaseModel):
    """Wall-clock times taken inside step bodies (``time.time()``)."""

    first: float
    resumed: float


class Due(BaseModel):
    """When the run's sleep is due."""

    due: datetime


class Park(BaseModel):
    """Park at a sleep until ``due``, or at the ``go`` signal when ``due`` is None."""

    due: datetime | None = None


async def noop() -> None:
    """A no-op step body."""
    return None


async def stamp() -> float:
    """A step body that returns the wall-clock time it ran at."""
    return time.time()


@dataclass(frozen=True)
class BenchFlows:
    """Handles on the benchmark's flows, registered on one engine."""

    steps: FlowHandle[Steps, int]
    latency: FlowHandle[Stamps, Stamps]
    timer: FlowHandle[Due, float]
    park: FlowHandle[Park, int]
    tick: FlowHandle[Tick, float]


def register(target: Engine) -> BenchFlows:
    """Register the benchmark's flows on ``target`` (client and worker engines alike)."""

    @target.flow("bench.steps", input=Steps, output=int)
    async def steps(ctx: FlowContext, inp: Steps) -> int:
        for i in range(inp.n):
            await ctx.step(f"s{i}", noop)
        return inp.n

    @target.flow("bench.latency", input=Stamps, output=Stamps, signals={"go": Go})
    async def latency(ctx: FlowContext, inp: Stamps) -> Stamps:
        first = await ctx.step("first", stamp)
        await ctx.signal("go", Go)
        resumed = await ctx.step("resumed", stamp)
        return Stamps(first=first, resumed=resumed)

    @target.flow("bench.timer", input=Due, output=float)
    async def timer(ctx: FlowContext, inp: Due) -> float:
        await ctx.sleep(inp.due, label="due")
        return await ctx.step("woke", stamp)

    @target.flow("bench.park", input=Park, output=int, signals={"go": Go})
    async def park(ctx: FlowContext, inp: Park) -> int:
        # step bodies as closures over the input, the way the README writes them
        async def before() -> str:
            return f"parking until {inp.due}" if inp.due else "parking for a signal"

        async def after() -> int:
            return 1

        await ctx.step("before", before)
        if inp.due is not None:
            await ctx.sleep(inp.due, label="park")
        else:
            await ctx.signal("go", Go)
        return await ctx.step("after", after)

    @target.flow("bench.tick", input=Tick, output=float)
    async def tick(ctx: FlowContext, inp: Tick) -> float:
        return await ctx.step("ran", stamp)  # started by a schedule (the schedules section)

    return BenchFlows(steps=steps, latency=latency, timer=timer, park=park, tick=tick)


class BenchEngine(Engine):
    """An :class:`Engine` with the optional worker instruments described in the module doc."""

    async def open(self) -> None:
        await super().open()
        path = os.environ.get("BENCH_FINISH_LOG")
        if path:
            _log_finishes(self.store, path)

    async def run_worker(
        self,
        *,
        concurrency: int = 4,
        queues: Sequence[str] | None = None,
        flows: Sequence[str] | None = None,
    ) -> None:
        path = os.environ.get("BENCH_MONITOR")
        monitor = asyncio.create_task(_monitor(path)) if path else None
        profile = os.environ.get("BENCH_PYINSTRUMENT")
        profiler: Any = None
        if profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005, async_mode="disabled")
            profiler.start()
        try:
            await super().run_worker(concurrency=concurrency, queues=queues, flows=flows)
        finally:
            if profiler is not None and profile:  # SIGINT: asyncio.run cancels the worker
                profiler.stop()
                with open(profile, "w") as out:
                    out.write(profiler.output_text(unicode=False, color=False, show_all=True))
            if monitor is not None:
                monitor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await monitor


def _log_finishes(store: Any, path: str) -> None:
    original = store.finish
    out = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the worker process

    async def finish(lease: Any, *args: Any, **kwargs: Any) -> None:
        await original(lease, *args, **kwargs)
        out.write(f"{lease.run_id} {time.time():.6f}\n")

    store.finish = finish


async def _monitor(path: str) -> None:
    proc = psutil.Process()
    with open(path, "a", buffering=1) as out:
        while True:
            line = {
                "t": time.time(),
                "rss": proc.memory_info().rss,
                "tasks": len(asyncio.all_tasks()),
            }
            out.write(json.dumps(line) + "\n")
            await asyncio.sleep(0.5)


def _settings() -> Settings:
    """The worker's settings: the defaults, with ``BENCH_SETTINGS`` (a JSON object) over them."""
    overrides = os.environ.get("BENCH_SETTINGS")
    return Settings(**json.loads(overrides)) if overrides else Settings()


engine = BenchEngine(settings=_settings())
flows = register(engine)
