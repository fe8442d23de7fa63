"""A worker app for the flow-control e2e test: a flow limited to 3 live attempts per key.

Its step appends ``enter``/``exit`` lines (key, pid, a clock shared by every process) to a log
file, so the test measures from outside how many attempts of one key were live at once. Run with
``flowctl worker flow_control_app:engine`` (``PYTHONPATH`` = this folder).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from pydantic import BaseModel

from iterflow import Engine, FlowContext

#: The per-key limit under test.
LIMIT = 3

engine = Engine(worker_poll_interval=0.2)


class Job(BaseModel):
    key: str
    log: str
    hold: float = 0.1


def _mark(job: Job, what: str) -> None:
    line = f"{job.key} {what} {time.monotonic_ns()} {os.getpid()}\n"
    with Path(job.log).open("a") as f:  # one small O_APPEND write: lines never interleave
        f.write(line)


@engine.flow("limited", input=Job, output=str, concurrency=LIMIT, concurrency_key=lambda j: j.key)
async def limited(ctx: FlowContext, job: Job) -> str:
    async def work() -> str:
        _mark(job, "enter")
        await asyncio.sleep(job.hold)
        _mark(job, "exit")
        return job.key

    return await ctx.step("work", work)
