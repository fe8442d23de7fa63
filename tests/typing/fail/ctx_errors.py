"""``ctx`` mistakes a type checker reports: a forgotten ``await`` on any ``ctx`` call (mypy's
``unused-coroutine``, pyright's ``reportUnusedCoroutine``), step arguments that do not fit the
step function, and a signal awaited with the wrong model or a descriptor given a model too.

Each ``# expect-error`` line must be an error under mypy --strict and pyright strict, and nothing
else may be (``tests/typing/check.py``).
"""

from __future__ import annotations

from pydantic import BaseModel

from iterflow import Signal
from iterflow.core.ctx import Ctx
from iterflow.core.definition import FlowDef
from iterflow.runtime.context import FlowContext


class Order(BaseModel):
    id: str
    amount: int


class Approval(BaseModel):
    ok: bool


approval = Signal("approve", Approval)


def charge(order: Order, cents: int) -> str:
    return f"{order.id}: {cents}"


async def fetch(order_id: str) -> Order:
    return Order(id=order_id, amount=1)


def nothing() -> int:
    return 1


async def forgotten_awaits(ctx: Ctx, order: Order, child: FlowDef[Order, int]) -> None:
    ctx.step("charge", charge, order, 100)  # expect-error
    ctx.step("fetch", fetch, "o-1")  # expect-error
    ctx.sleep("1h")  # expect-error
    ctx.signal("approve", Approval)  # expect-error
    ctx.signal(approval)  # expect-error
    ctx.invoke(child, order)  # expect-error
    ctx.now()  # expect-error
    ctx.uuid()  # expect-error
    ctx.random()  # expect-error
    ctx.patched("x")  # expect-error
    ctx.gather(ctx.now(), ctx.uuid())  # expect-error


async def forgotten_on_the_runtime_context(ctx: FlowContext, order: Order) -> None:
    ctx.step("charge", charge, order, 100)  # expect-error
    ctx.signal(approval, timeout="1h")  # expect-error


async def wrong_step_arguments(ctx: Ctx, order: Order) -> None:
    await ctx.step("charge", charge, order, "100")  # expect-error
    await ctx.step("charge", charge, order)  # expect-error
    await ctx.step("fetch", fetch, 42)  # expect-error
    await ctx.step("nothing", nothing, 1)  # expect-error
    await ctx.step("fetch", fetch, "o-1", retries="3")  # expect-error


async def wrong_signal_types(ctx: Ctx) -> None:
    # the payload is an Approval, not an Order
    order: Order = await ctx.signal(approval)  # expect-error
    late: Order = await ctx.signal("approve", Approval)  # expect-error
    # a descriptor carries its model
    await ctx.signal(approval, Approval)  # expect-error
    # a name needs its model
    await ctx.signal("approve")  # expect-error
    print(order, late)
