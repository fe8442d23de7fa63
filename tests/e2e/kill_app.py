"""A worker app for the SIGKILL tests: flows whose steps append to a counter file.

``four-steps``: step 3 blocks until a release file exists, so the test can kill the worker
mid-step with steps 1-2 checkpointed; each step execution can also record the attempt number
it saw. ``burst``: ten quick steps, for many concurrent runs whose
checkpoints are committed together (group commit). Run with ``flowctl worker kill_app:engine``
(``PYTHONPATH`` = this folder).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic import BaseModel

from iterflow import Engine, FlowContext, step_attempt

engine = Engine(lease_seconds=2.0, reconcile_every_seconds=1, worker_poll_interval=0.2)


class Job(BaseModel):
    counter_file: str
    release_file: str
    #: Where each step execution appends ``<step> <step_attempt()>`` (None: nowhere).
    attempts_file: str | None = None


def _count(path: str, name: str) -> None:
    with Path(path).open("a") as f:
        f.write(name + "\n")


@engine.flow("four-steps", input=Job, output=list[str])
async def four_steps(ctx: FlowContext, job: Job) -> list[str]:
    async def step(name: str) -> str:
        _count(job.counter_file, name)
        if job.attempts_file is not None:
            _count(job.attempts_file, f"{name} {step_attempt()}")
        if name == "s3":
            while not Path(job.release_file).exists():
                await asyncio.sleep(0.05)
        return name

    return [await ctx.step(n, step, n) for n in ("s1", "s2", "s3", "s4")]


class Burst(BaseModel):
    counter_file: str
    n: int


@engine.flow("burst", input=Burst, output=int)
async def burst(ctx: FlowContext, job: Burst) -> int:
    """Ten quick steps that each append ``<n> <step>`` to the counter file: concurrent runs'
    checkpoints fall due together (group commit)."""

    def step(name: str) -> int:
        _count(job.counter_file, f"{job.n} {name}")
        return 1

    total = 0
    for i in range(10):
        total += await ctx.step(f"b{i}", step, f"b{i}")
    return total
