"""``compensate=`` is typed by the step's result: the compensation receives what the step
returned (a subtype-accepting parameter, sync or async, any return), on ``ctx.step`` (raw
bodies, the ``Ctx`` Protocol and the runtime's ``FlowContext``) and on the builder's ``.step``.

Never executed; checked by mypy --strict and pyright strict (``tests/typing/check.py``). The
mismatches a type checker must report are in ``tests/typing/fail/saga_errors.py``.
"""

from __future__ import annotations

from typing import assert_type

from pydantic import BaseModel

from iterflow import flow
from iterflow.core.builder import FlowBuilder
from iterflow.core.ctx import Ctx
from iterflow.runtime.context import FlowContext


class Order(BaseModel):
    id: str
    cents: int


class Charge(BaseModel):
    charge_id: str
    cents: int


async def charge(order: Order) -> Charge:
    return Charge(charge_id=f"ch-{order.id}", cents=order.cents)


async def refund(charge: Charge) -> None:
    return None


def release(sku: str) -> bool:
    return bool(sku)


def reserve(sku: str, qty: int) -> str:
    return f"{sku}x{qty}"


def forget(_: object) -> None:
    return None


async def raw_body(ctx: Ctx, order: Order) -> str:
    paid = await ctx.step("charge", charge, order, compensate=refund)
    assert_type(paid, Charge)
    held = await ctx.step("reserve", reserve, "sku-1", 2, compensate=release, retries=3)
    assert_type(held, str)
    await ctx.step("note", reserve, "n", 1, compensate=forget)
    return held


async def runtime_body(ctx: FlowContext, order: Order) -> Charge:
    return await ctx.step("charge", charge, order, compensate=refund, retries=2)


def builder() -> FlowBuilder[Order, str]:
    chain = flow("saga").input(Order).step("charge", charge, compensate=refund)
    assert_type(chain, FlowBuilder[Order, Charge])
    return chain.step("id", lambda c: c.charge_id, compensate=forget)
