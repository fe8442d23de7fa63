"""``iterflow.sync.SyncEngine``: blocking calls on a private loop thread (``publish``,
``signal_with_start`` and a saga's ``cancel(compensate=True)`` on both stores); refused from its
own loop; and the plugin is declared as a pytest entry point."""

from __future__ import annotations

import asyncio
import threading
import time
import tomllib
from pathlib import Path

import pytest
from pydantic import BaseModel

from iterflow import Engine, FlowContext, FlowError, Signal
from iterflow.core.errors import ConfigInvalid, EventInputInvalid, ResultTimeout
from iterflow.pytest_plugin import PG_TEST_SETTINGS
from iterflow.sync import SyncEngine

ROOT = Path(__file__).resolve().parents[2]


def test_blocking_calls_from_plain_threads() -> None:
    engine = Engine.in_memory()
    holder: dict[str, SyncEngine] = {}

    @engine.flow("echo", input=str, output=str, signals={"go": str})
    async def echo(ctx: FlowContext, text: str) -> str:
        await ctx.signal("go", str)
        return await ctx.step("echo", lambda: text.upper())

    @engine.flow("nested", input=str, output=str)
    async def nested(ctx: FlowContext, text: str) -> str:
        def inside() -> str:
            try:
                holder["sync"].status(ctx.run_id)
            except ConfigInvalid as exc:
                return exc.error_code
            return "no error"

        return await ctx.step("inside", inside)

    with SyncEngine(engine, worker=True) as flows:
        holder["sync"] = flows
        run = flows.start(echo, "hi", idempotency_key="k")
        with pytest.raises(ResultTimeout):
            flows.result(run.run_id, timeout=0.05)
        results: list[str] = []
        thread = threading.Thread(target=lambda: results.append(flows.result(run.run_id)))
        thread.start()
        assert flows.signal(run.run_id, "go", "now").kind in ("delivered", "buffered")
        thread.join(10)
        assert results == ["HI"]
        assert flows.status(run.run_id).run.status == "done"
        assert [r.id for r in flows.list_runs(name="echo").runs] == [run.run_id]
        assert flows.retry(run.run_id).kind == "not_failed"
        other = flows.start("echo", "again")
        assert flows.cancel(other.run_id).kind == "canceled"
        # a sync step runs in a worker thread: the call reaches the loop and works
        assert flows.result(flows.start(nested, "x").run_id, timeout=10) == "no error"
    flows.close()  # idempotent
    with pytest.raises(ConfigInvalid, match="wraps an iterflow Engine"):
        SyncEngine("postgresql://")  # type: ignore[arg-type]


class Cart(BaseModel):
    cart: str


class Item(BaseModel):
    sku: str


add = Signal("add", Item)


@pytest.fixture(params=["memory", "postgres"])
def store_engine(request: pytest.FixtureRequest) -> Engine:
    """An unopened engine on each store: in memory, then on a fresh migrated database."""
    if request.param == "memory":
        return Engine.in_memory()
    url: str = request.getfixturevalue("database_url")
    return Engine(url, **PG_TEST_SETTINGS)


def test_publish_signal_with_start_and_compensating_cancel_block(store_engine: Engine) -> None:
    engine = store_engine
    undone: list[str] = []

    @engine.flow("basket", input=Cart, output=list[str], signals=[add], on=["cart.opened"])
    async def basket(ctx: FlowContext, inp: Cart) -> list[str]:
        first = await ctx.signal(add)
        second = await ctx.signal(add)
        return [inp.cart, first.sku, second.sku]

    @engine.flow("hold", input=Cart, output=str, signals=[add])
    async def hold(ctx: FlowContext, inp: Cart) -> str:
        held = await ctx.step("hold", lambda: f"held {inp.cart}", compensate=undone.append)
        await ctx.signal(add)
        return held

    with SyncEngine(engine, worker=True) as flows:
        published = flows.publish("cart.opened", {"cart": "c-1"}, idempotency_key="e-1")
        (run,) = published.runs
        assert (published.event, published.created, run.flow) == ("cart.opened", 1, "basket")
        again = flows.publish("cart.opened", {"cart": "c-1"}, idempotency_key="e-1")
        assert again.created == 0 and again.runs[0].run_id == run.run_id
        with pytest.raises(EventInputInvalid, match="basket"):
            flows.publish("cart.opened", {"nope": 1})

        started = flows.signal_with_start(
            basket, Cart(cart="c-2"), add, Item(sku="a"), idempotency_key="cart-2"
        )
        assert started.created and started.signal.kind == "buffered"
        joined = flows.signal_with_start(
            "basket", {"cart": "ignored"}, "add", {"sku": "b"}, idempotency_key="cart-2"
        )
        assert not joined.created and joined.run_id == started.run_id
        assert joined.signal.kind in ("delivered", "buffered")
        assert flows.result(started.run_id, timeout=20) == ["c-2", "a", "b"]

        held = flows.start(hold, Cart(cart="c-3"))
        deadline = time.monotonic() + 20
        while flows.status(held.run_id).run.status != "awaiting_signal":
            assert time.monotonic() < deadline, "the saga run never waited for its signal"
            time.sleep(0.02)
        assert flows.cancel(held.run_id, compensate=True).kind == "canceling"
        with pytest.raises(FlowError) as ended:
            flows.result(held.run_id, timeout=20)
        assert ended.value.error_code == "RUN_CANCELED"
        assert ended.value.details["compensation"]["steps"] == ["compensate:hold"]
        assert undone == ["held c-3"]


async def test_a_call_from_its_own_loop_is_refused() -> None:
    engine = Engine.in_memory()
    flows = SyncEngine(engine)
    loop = flows._ensure()  # the private loop, to run code on it as a flow body would

    async def call() -> str:
        try:
            flows.status("00000000-0000-4000-8000-000000000000")
        except ConfigInvalid as exc:
            return exc.error_code
        return "no error"

    try:
        assert asyncio.run_coroutine_threadsafe(call(), loop).result(5) == "CONFIG_INVALID"
    finally:
        flows.close()


def test_the_plugin_is_a_pytest11_entry_point() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"iterflow": "iterflow.pytest_plugin"}
