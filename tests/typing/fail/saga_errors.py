"""``compensate=`` mistakes a type checker reports: a compensation whose parameter does not
accept the step's result, on ``ctx.step`` and on the builder's ``.step``.

Each ``# expect-error`` line must be an error under mypy --strict and pyright strict, and nothing
else may be (``tests/typing/check.py``).
"""

from __future__ import annotations

from pydantic import BaseModel

from iterflow import flow
from iterflow.core.ctx import Ctx


class Order(BaseModel):
    id: str


class Charge(BaseModel):
    charge_id: str


async def charge(order: Order) -> Charge:
    return Charge(charge_id=order.id)


async def refund_order(order: Order) -> None:
    return None


def release(sku: str) -> None:
    return None


def takes_two(charge: Charge, why: str) -> None:
    return None


async def wrong_compensations(ctx: Ctx, order: Order) -> None:
    await ctx.step("charge", charge, order, compensate=refund_order)  # expect-error
    await ctx.step("charge2", charge, order, compensate=release)  # expect-error
    await ctx.step("charge3", charge, order, compensate=takes_two)  # expect-error


def wrong_builder_compensation() -> None:
    flow("saga").input(Order).step("charge", charge, compensate=release)  # expect-error
