"""(12) Flow control: the cost of a per-key concurrency limit.

200 concurrent runs of ``concurrent_steps`` steps over 20 keys, on one in-process worker
(``--concurrency worker_concurrency``) and started from a second engine, once with a limit of 5
live attempts per key and once without (the same flow otherwise). The clock starts before the
first start and stops when the last run is ``done``; each measurement uses a fresh database, the
two kinds alternate. The limit's overhead is how much lower the limited throughput is (target
under 20 %).
"""

from __future__ import annotations

import asyncio
import statistics
import time

from pydantic import BaseModel

from iterflow import Engine, FlowContext

from .config import Context
from .measure import wait_for_count
from .report import Section, Target, spread

__all__ = ["run"]

KEYS = 20
PER_KEY = 5
#: Measurement pairs per repeat.
PAIRS = 2


class Keyed(BaseModel):
    key: str
    steps: int


async def _one() -> int:
    return 1


def _engine(url: str, limited: bool) -> Engine:
    engine = Engine(url, pool_size=10)

    async def body(ctx: FlowContext, job: Keyed) -> int:
        total = 0
        for i in range(job.steps):
            total += await ctx.step(f"s{i}", _one)
        return total

    if limited:
        engine.flow(
            "keyed", input=Keyed, output=int, concurrency=PER_KEY, concurrency_key=lambda j: j.key
        )(body)
    else:
        engine.flow("keyed", input=Keyed, output=int)(body)
    return engine


async def _once(ctx: Context, url: str, limited: bool) -> float:
    """Runs per second. The runs are started by a second engine that runs no worker (as a web
    tier would), so both kinds go through the queue: a start in the worker's own process would
    be claimed in its commit when unlimited (``runtime/eager.py``) and not when limited, and the
    difference would be measured as the limit's cost."""
    sizes = ctx.sizes
    async with _engine(url, limited) as worker, _engine(url, limited) as client:
        await worker.listen(concurrency=sizes.worker_concurrency)
        gate = asyncio.Semaphore(10)

        async def start_one(n: int) -> None:
            async with gate:
                await client.start("keyed", Keyed(key=f"k{n % KEYS}", steps=sizes.concurrent_steps))

        done_sql = f"SELECT count(*) FROM {worker.settings.db_schema}.runs WHERE status = 'done'"
        t0 = time.perf_counter()
        await asyncio.gather(*(start_one(n) for n in range(sizes.concurrent_runs)))
        t_done = await wait_for_count(worker, done_sql, sizes.concurrent_runs, timeout=300)
    return sizes.concurrent_runs / (t_done - t0)


async def run(ctx: Context) -> Section:
    """Pairs of measurements (unlimited and limited, in alternating order so that a drift of
    the machine's load does not favour one); the overhead is the median of the pairs'."""
    sizes = ctx.sizes
    section = Section(
        "flow-control",
        f"12. Flow control: {sizes.concurrent_runs} concurrent {sizes.concurrent_steps}-step runs "
        f"over {KEYS} keys, limit {PER_KEY} live per key vs none (in-process worker, concurrency "
        f"{sizes.worker_concurrency})",
    )
    samples: dict[str, list[float]] = {"none": [], "limited": []}
    for i in range(PAIRS * sizes.repeats):
        for kind in ("none", "limited") if i % 2 == 0 else ("limited", "none"):
            with ctx.server.database(f"fc_{kind}") as url:
                samples[kind].append(await _once(ctx, url, kind == "limited"))
    for kind, label in (("none", "no limit"), ("limited", f"limit {PER_KEY} per key")):
        runs = spread(samples[kind])
        note = f"min-max {runs['min']:,.1f}-{runs['max']:,.1f}" if runs["n"] > 1 else ""
        section.add(f"runs/s, {label}", runs["median"], "/s", note=note)
    lost = [
        max(0.0, (plain - limited) / plain * 100)
        for plain, limited in zip(samples["none"], samples["limited"], strict=True)
    ]
    section.add(
        "throughput lost to the per-key limit",
        statistics.median(lost),
        "%",
        Target("<=", 20.0, "under 20 %"),
        note=f"median of {len(lost)} pairs; min-max {min(lost):.0f}-{max(lost):.0f} %",
    )
    section.raw = {"samples": samples, "lost_percent": lost}
    return section
