"""``SyncEngine.signal_with_start`` mistakes a type checker reports, as on the async engine:
with a handle, an input that is not the flow's, a payload that is not the signal descriptor's
model, and a missing ``idempotency_key``.

Each ``# expect-error`` line must be an error under mypy --strict and pyright strict, and nothing
else may be (``tests/typing/check.py``).
"""

from __future__ import annotations

from pydantic import BaseModel

from iterflow import Engine, FlowContext, Signal
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


@engine.flow("cart", input=Cart, output=Order, signals=[add])
async def cart(ctx: FlowContext, inp: Cart) -> Order:
    return Order(skus=[(await ctx.signal(add)).sku])


def wrong_values() -> None:
    start = flows.signal_with_start
    c, i = Cart(cart="c"), Item(sku="a")
    start(cart, i, add, i, idempotency_key="k")  # expect-error
    start(cart, c, add, c, idempotency_key="k")  # expect-error
    start(cart, c, "add", {"sku": "a"})  # expect-error
    flows.publish("cart.opened", {"cart": "c"}, conn=None)  # expect-error
