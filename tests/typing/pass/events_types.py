"""Events and signal-with-start on the typed path: ``publish`` and its result, and
``signal_with_start`` with a handle (its input model, a signal descriptor's payload model) or a
flow name (untyped).

Checked clean under mypy --strict and pyright strict (``tests/typing/check.py``).
"""

from __future__ import annotations

import uuid

from pydantic import BaseModel

from iterflow import (
    Engine,
    FlowContext,
    PublishedRun,
    PublishResult,
    Signal,
    SignalResult,
    SignalWithStartResult,
)


class SignedUp(BaseModel):
    user: str


class Cart(BaseModel):
    cart: str


class Item(BaseModel):
    sku: str


class Order(BaseModel):
    skus: list[str]


add = Signal("add", Item)
engine = Engine("memory://")


@engine.flow("welcome", input=SignedUp, output=SignedUp, on=["user.signed_up"])
async def welcome(ctx: FlowContext, event: SignedUp) -> SignedUp:
    return event


@engine.flow("cart", input=Cart, output=Order, signals=[add])
async def cart(ctx: FlowContext, inp: Cart) -> Order:
    return Order(skus=[(await ctx.signal(add)).sku])


async def published() -> list[uuid.UUID]:
    result: PublishResult = await engine.publish(
        "user.signed_up", SignedUp(user="ann"), idempotency_key="evt-1"
    )
    runs: tuple[PublishedRun, ...] = result.runs
    created: int = result.created
    print(created)
    return [r.run_id for r in runs]


async def signalled() -> bool:
    typed: SignalWithStartResult = await engine.signal_with_start(
        cart, Cart(cart="c1"), add, Item(sku="a"), idempotency_key="cart-c1"
    )
    mapping = await engine.signal_with_start(
        cart, {"cart": "c1"}, "add", {"sku": "b"}, idempotency_key="cart-c1"
    )
    named = await engine.signal_with_start(
        "cart", {"cart": "c1"}, add, {"sku": "c"}, idempotency_key="cart-c1", priority=1
    )
    kind: SignalResult = named.signal
    return typed.created or mapping.created or kind.kind == "buffered"
