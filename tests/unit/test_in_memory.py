"""Users' unit tests: Engine.in_memory with a fake clock, no PostgreSQL involved."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from pydantic import BaseModel

from iterflow import Engine, FlowContext, FlowError
from iterflow.core.models import RunStatus
from iterflow.testing import FakeClock

ROOT = Path(__file__).resolve().parents[2]


async def test_docs_unit_testing_example_runs() -> None:
    spec = importlib.util.spec_from_file_location(
        "unit_testing_example", ROOT / "docs" / "examples" / "unit_testing.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert await module.main() == "ana@example.com scored 9"


class N(BaseModel):
    n: int


async def test_fake_clock_fires_timeouts_and_children_and_retries_work() -> None:
    clock = FakeClock()
    engine = Engine.in_memory(clock=clock)

    @engine.flow("child", input=N, output=int)
    async def child(ctx: FlowContext, x: N) -> int:
        return x.n + 1

    @engine.flow("parent", input=N, output=int, signals={"go": N})
    async def parent(ctx: FlowContext, x: N) -> int:
        a, b = await ctx.gather(ctx.invoke(child, x), ctx.invoke(child, N(n=10)))
        got = await ctx.signal("go", N, timeout="1h")
        return a + b + got.n

    async with engine:
        run = await parent.start(N(n=1))
        await engine.drain()
        assert (await engine.status(run.run_id)).run.status is RunStatus.AWAITING_SIGNAL
        clock.advance("2h")
        await engine.drain()
        with pytest.raises(FlowError) as info:
            await parent.result(run.run_id, timeout=1)
        assert info.value.error_code == "SIGNAL_TIMEOUT"
        assert (await engine.retry(run.run_id)).kind == "queued"
        await engine.drain()
        await engine.signal(run.run_id, "go", {"n": 100})
        await engine.drain()
        assert await parent.result(run.run_id, timeout=1) == 2 + 11 + 100
