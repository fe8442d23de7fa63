"""Worker app for the fault-injection suite (``flowctl worker chaos_app:engine``).

Short leases and a fast reconciler, so recovery latency is bounded by a few seconds:
``lease_seconds=2``, ``reconcile_every_seconds=1``, ``worker_poll_interval=0.2``.

Every step body appends one line ``<run id> <cursor key> <pid> <time.time_ns() at body start>``
to a counter file *outside* the workers (one ``os.write`` on an ``O_APPEND`` descriptor, atomic
for lines this short), so a test can count executions and compare their start times with the
commit time of the step's checkpoint (``steps.finished_at``).
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import timedelta

from pydantic import BaseModel

from iterflow import Engine, FlowContext

engine = Engine(lease_seconds=2.0, reconcile_every_seconds=1, worker_poll_interval=0.2, pool_size=4)


def record(path: str, run_id: str, key: str) -> None:
    """Append one execution line (called first thing in every step body)."""
    line = f"{run_id} {key} {os.getpid()} {time.time_ns()}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class Exec(BaseModel):
    """What a step returns: who ran it and the value it computed."""

    pid: int
    value: int


async def work(path: str, run_id: str, key: str, work_ms: int, value: int) -> Exec:
    """A step body: record the execution, hold for ``work_ms`` (a window for kills), return."""
    record(path, run_id, key)
    await asyncio.sleep(work_ms / 1000)
    return Exec(pid=os.getpid(), value=value)


# -- the mixed flow: steps, a sleep, a signal, a child ------------------------------------------


class MixedJob(BaseModel):
    counter_file: str
    n: int
    work_ms: int
    sleep_ms: int


class Go(BaseModel):
    ok: bool
    bonus: int


class ChildJob(BaseModel):
    counter_file: str
    n: int
    work_ms: int


class MixedOut(BaseModel):
    n: int
    total: int
    pids: list[int]


@engine.flow("chaos-child", input=ChildJob, output=int)
async def chaos_child(ctx: FlowContext, job: ChildJob) -> int:
    doubled = await ctx.step(
        "double", work, job.counter_file, str(ctx.run_id), "double", job.work_ms, job.n * 2
    )
    return doubled.value


@engine.flow("chaos-mixed", input=MixedJob, output=MixedOut, signals={"go": Go})
async def chaos_mixed(ctx: FlowContext, job: MixedJob) -> MixedOut:
    rid, path = str(ctx.run_id), job.counter_file
    a = await ctx.step("a", work, path, rid, "a", job.work_ms, job.n)
    await ctx.sleep(timedelta(milliseconds=job.sleep_ms), "nap")
    b = await ctx.step("b", work, path, rid, "b", job.work_ms, a.value + 1)
    go = await ctx.signal("go", Go)
    if not go.ok:
        raise RuntimeError(f"run {job.n} was rejected by its signal")
    child = await ctx.invoke(chaos_child, ChildJob(counter_file=path, n=job.n, work_ms=job.work_ms))
    c = await ctx.step("c", work, path, rid, "c", job.work_ms, b.value + go.bonus + child)
    return MixedOut(n=job.n, total=c.value, pids=[a.pid, b.pid, c.pid])


def expected_total(n: int, bonus: int) -> int:
    """``c`` of a successful mixed run: (n + 1) + bonus + 2n."""
    return 3 * n + 1 + bonus


# -- one step that blocks until released and reports its executor (two workers on one run) ------


class HoldJob(BaseModel):
    counter_file: str
    release_file: str


async def held(path: str, run_id: str, key: str, release: str) -> Exec:
    """Record the execution, then wait until the release file exists."""
    record(path, run_id, key)
    while not os.path.exists(release):
        await asyncio.sleep(0.05)
    return Exec(pid=os.getpid(), value=1)


@engine.flow("hold", input=HoldJob, output=Exec)
async def hold(ctx: FlowContext, job: HoldJob) -> Exec:
    return await ctx.step("slow", held, job.counter_file, str(ctx.run_id), "slow", job.release_file)


# -- load for database faults: steps around a durable sleep --------------------------------------


class LoadJob(BaseModel):
    counter_file: str
    n: int
    work_ms: int
    sleep_ms: int


@engine.flow("load", input=LoadJob, output=int)
async def load(ctx: FlowContext, job: LoadJob) -> int:
    rid, path = str(ctx.run_id), job.counter_file
    total = 0
    for i in range(3):
        key = f"s{i}"
        step = await ctx.step(key, work, path, rid, key, job.work_ms, job.n + i)
        total += step.value
        if i == 0:
            await ctx.sleep(timedelta(milliseconds=job.sleep_ms), "pause")
    return total


def expected_load(n: int) -> int:
    return 3 * n + 3
