"""Checked by mypy --strict (tests/unit/test_builder_typing.py): the ``ctx`` API is typed honestly.

Never executed. ``assert_type`` fails the type check when a call's type is not the one shown;
each ``type: ignore[code]`` is an expected error (``warn_unused_ignores`` makes an ignore that
matches nothing an error): a forgotten ``await`` is ``unused-coroutine`` for every ``ctx`` call,
and ``ctx.step(label, fn, *args)`` checks ``args`` against ``fn``'s parameters.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import assert_type

from pydantic import BaseModel

from iterflow.core.ctx import Ctx
from iterflow.core.definition import FlowDef
from iterflow.runtime.context import FlowContext


class Order(BaseModel):
    id: str
    amount: int


class Approval(BaseModel):
    ok: bool


def charge(order: Order, cents: int) -> str:
    return f"{order.id}: {cents}"


async def fetch(order_id: str) -> Order:
    return Order(id=order_id, amount=1)


def optional(a: int, b: str = "x") -> float:
    return float(a)


def nothing() -> int:
    return 1


async def typed_results(ctx: Ctx, order: Order, child: FlowDef[Order, int]) -> None:
    assert_type(await ctx.step("charge", charge, order, 100), str)
    assert_type(await ctx.step("fetch", fetch, "o-1"), Order)
    assert_type(await ctx.step("fetch", fetch, "o-1", retries=3, backoff="1s"), Order)
    assert_type(await ctx.step("optional", optional, 1), float)
    assert_type(await ctx.step("optional", optional, 1, "y", timeout="5s"), float)
    assert_type(await ctx.step("nothing", nothing), int)
    assert_type(await ctx.step("lambda", lambda: [1, 2]), list[int])
    assert_type(await ctx.signal("approve", Approval), Approval)
    assert_type(await ctx.invoke(child, order), int)
    assert_type(await ctx.now(), datetime)
    assert_type(await ctx.uuid(), uuid.UUID)
    assert_type(await ctx.random(), float)
    assert_type(await ctx.patched("x"), bool)
    assert_type(
        await ctx.gather(ctx.step("a", nothing), ctx.step("b", fetch, "o-2")), tuple[int, Order]
    )


async def runtime_context_too(ctx: FlowContext, order: Order) -> None:
    assert_type(await ctx.step("charge", charge, order, 100), str)
    ctx.step("charge", charge, order, 100)  # type: ignore[unused-coroutine]
    await ctx.step("charge", charge, order)  # type: ignore[arg-type]


async def forgotten_awaits(ctx: Ctx, order: Order, child: FlowDef[Order, int]) -> None:
    ctx.step("charge", charge, order, 100)  # type: ignore[unused-coroutine]
    ctx.step("fetch", fetch, "o-1")  # type: ignore[unused-coroutine]
    ctx.sleep("1h")  # type: ignore[unused-coroutine]
    ctx.signal("approve", Approval)  # type: ignore[unused-coroutine]
    ctx.invoke(child, order)  # type: ignore[unused-coroutine]
    ctx.now()  # type: ignore[unused-coroutine]
    ctx.uuid()  # type: ignore[unused-coroutine]
    ctx.random()  # type: ignore[unused-coroutine]
    ctx.patched("x")  # type: ignore[unused-coroutine]
    ctx.gather(ctx.now(), ctx.uuid())  # type: ignore[unused-coroutine]


async def wrong_arguments(ctx: Ctx, order: Order) -> None:
    await ctx.step("charge", charge, order, "100")  # type: ignore[arg-type, call-arg]
    await ctx.step("charge", charge, order)  # type: ignore[arg-type]
    await ctx.step("fetch", fetch, 42)  # type: ignore[arg-type]
    await ctx.step("nothing", nothing, 1)  # type: ignore[arg-type]
    await ctx.step("fetch", fetch, "o-1", retries="3")  # type: ignore[call-overload]
