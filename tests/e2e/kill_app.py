"""A worker app for the SIGKILL test: four steps that append to a counter file.

Step 3 blocks until a release file exists, so the test can kill the worker mid-step with steps
1-2 checkpointed. Run with ``flowctl worker kill_app:engine`` (``PYTHONPATH`` = this folder).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic import BaseModel

from iterflow import Engine, FlowContext

engine = Engine(lease_seconds=2.0, reconcile_every_seconds=1, worker_poll_interval=0.2)


class Job(BaseModel):
    counter_file: str
    release_file: str


def _count(path: str, name: str) -> None:
    with Path(path).open("a") as f:
        f.write(name + "\n")


@engine.flow("four-steps", input=Job, output=list[str])
async def four_steps(ctx: FlowContext, job: Job) -> list[str]:
    async def step(name: str) -> str:
        _count(job.counter_file, name)
        if name == "s3":
            while not Path(job.release_file).exists():
                await asyncio.sleep(0.05)
        return name

    return [await ctx.step(n, step, n) for n in ("s1", "s2", "s3", "s4")]
