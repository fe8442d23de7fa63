"""``SyncEngine``'s blocking ``publish`` and ``signal_with_start`` on the typed path, as the
async engine's: a handle's input model and a signal descriptor's payload model, or a flow name
(untyped).

Checked clean under mypy --strict and pyright strict (``tests/typing/check.py``).
"""

from __future__ import annotations

from typing import assert_type

from pydantic import BaseModel

from iterflow import CancelResult, Engine, FlowContext, PublishResult, Signal, SignalWithStartResult
from iterflow.sync import SyncEngine


class Cart(BaseModel):
    cart: str


class Item(BaseModel):
    sku: str


class Order(BaseModel):
    skus: list[str]


add = Signal("add", Item)
engine = Engine("memory://")
flows = SyncEngine(engine)


@engine.flow("cart", input=Cart, output=Order, signals=[add], on=["cart.opened"])
async def cart(ctx: FlowContext, inp: Cart) -> Order:
    return Order(skus=[(await ctx.signal(add)).sku])


def blocking() -> None:
    assert_type(flows.publish("cart.opened", {"cart": "c"}, idempotency_key="e"), PublishResult)
    c, i = Cart(cart="c"), Item(sku="a")
    typed = flows.signal_with_start(cart, c, add, i, idempotency_key="k")
    assert_type(typed, SignalWithStartResult)
    mapping = flows.signal_with_start(cart, {"cart": "c"}, "add", {"sku": "a"}, idempotency_key="k")
    assert_type(mapping, SignalWithStartResult)
    named = flows.signal_with_start("cart", {"cart": "c"}, add, i, idempotency_key="k", tags=["t"])
    assert_type(named, SignalWithStartResult)
    assert_type(flows.cancel(named.run_id, compensate=True), CancelResult)
