"""The ``ctx`` API is typed honestly: each call's result has the type of what it returns.

Never executed; checked by mypy --strict and pyright strict (``tests/typing/check.py``).
``ctx.step`` returns ``fn``'s result type (awaited for an async ``fn``), ``ctx.signal`` the
payload model (given by name and model, or by a ``Signal`` descriptor), ``ctx.invoke`` the child's
output. The mistakes (a forgotten ``await``, arguments that do not fit ``fn``) are in
``tests/typing/fail/ctx_errors.py``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import assert_type

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
count = Signal("count", int)


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
    assert_type(await ctx.signal("approve", Approval, timeout="7d"), Approval)
    assert_type(await ctx.signal(approval), Approval)
    assert_type(await ctx.signal(approval, timeout="7d"), Approval)
    assert_type(await ctx.signal(count), int)
    assert_type(await ctx.invoke(child, order), int)
    assert_type(await ctx.now(), datetime)
    assert_type(await ctx.uuid(), uuid.UUID)
    assert_type(await ctx.random(), float)
    assert_type(await ctx.patched("x"), bool)
    assert_type(
        await ctx.gather(ctx.step("a", nothing), ctx.step("b", fetch, "o-2")), tuple[int, Order]
    )
    assert_type(await ctx.gather(ctx.signal(approval), ctx.now()), tuple[Approval, datetime])


async def runtime_context_too(ctx: FlowContext, order: Order) -> None:
    assert_type(await ctx.step("charge", charge, order, 100), str)
    assert_type(await ctx.signal(approval), Approval)
    assert_type(await ctx.signal("approve", Approval, timeout="1h"), Approval)
