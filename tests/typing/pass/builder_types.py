"""The builder is typed end to end: the channel's type changes step by step.

Never executed; checked by mypy --strict and pyright strict (``tests/typing/check.py``). An
``assert_type`` fails the check when the type is not the one shown. The mistakes a type checker
must report are in ``tests/typing/fail/builder_errors.py``.
"""

from __future__ import annotations

from typing import assert_type

from pydantic import BaseModel

from iterflow import BuiltFlow, Engine, FlowHandle, Signal, StepContext, flow
from iterflow.core.builder import FlowBuilder


class Order(BaseModel):
    id: str
    amount: int


class Charged(BaseModel):
    id: str
    cents: int


class Approval(BaseModel):
    ok: bool


approval = Signal("approve", Approval)


def charge(order: Order, step: StepContext[Order]) -> Charged:
    return Charged(id=order.id, cents=order.amount * 100)


async def receipt(charged: Charged) -> str:
    return f"{charged.id}: {charged.cents}"


def approve(charged: Charged, approval: Approval) -> Charged:
    return charged if approval.ok else charged.model_copy(update={"cents": 0})


def charge_again(charged: Charged) -> Charged:
    return charged.model_copy(update={"cents": charged.cents + 1})


def paid(charged: Charged) -> bool:
    return charged.cents > 0


def retry_charge(b: FlowBuilder[Order, Charged]) -> FlowBuilder[Order, Charged]:
    return b.step("retry", charge_again)


start = flow("typed").input(Order)
assert_type(start, FlowBuilder[Order, Order])
charged = start.step("charge", charge)
assert_type(charged, FlowBuilder[Order, Charged])
waited = charged.sleep("1h", label="cool-off")
assert_type(waited, FlowBuilder[Order, Charged])
merged = waited.signal("approve", Approval, merge=approve)
assert_type(merged, FlowBuilder[Order, Charged])
replaced = waited.signal("approve", Approval)
assert_type(replaced, FlowBuilder[Order, Approval])
by_descriptor = waited.signal(approval, timeout="7d")
assert_type(by_descriptor, FlowBuilder[Order, Approval])
merged_descriptor = waited.signal(approval, merge=approve)
assert_type(merged_descriptor, FlowBuilder[Order, Charged])
looped = merged.loop(until=lambda c: c.cents > 0, body=lambda b: b.step("retry", charge_again))
assert_type(looped, FlowBuilder[Order, Charged])
looped_by_functions = merged.loop(until=paid, body=retry_charge)
assert_type(looped_by_functions, FlowBuilder[Order, Charged])
text = looped.step("receipt", receipt)
assert_type(text, FlowBuilder[Order, str])
built = text.build()
assert_type(built, BuiltFlow[Order, str])
mapped = text.output(len).build()
assert_type(mapped, BuiltFlow[Order, int])

child = flow("child").input(str).step("len", lambda s: len(s)).build()
assert_type(child, BuiltFlow[str, int])
invoked = text.invoke(child)
assert_type(invoked, FlowBuilder[Order, int])

engine = Engine("memory://")
handle = engine.register(built)
assert_type(handle, FlowHandle[Order, str])
via_handle = text.invoke(engine.register(child))
assert_type(via_handle, FlowBuilder[Order, int])


async def result(h: FlowHandle[Order, str]) -> str:
    return await h.result("00000000-0000-0000-0000-000000000000")


typed_built: BuiltFlow[Order, str] = built


# .map: a list of the step's (or child flow's) results, whatever the items
class Basket(BaseModel):
    orders: list[Order]


def charge_line(order: Order, step: StepContext[Basket]) -> Charged:
    return Charged(id=order.id, cents=order.amount)


async def total(charged: Charged) -> int:
    return charged.cents


basket = flow("basket").input(Basket)
mapped_steps = basket.map("charge-line", charge_line, over=lambda b: b.orders, concurrency=3)
assert_type(mapped_steps, FlowBuilder[Basket, list[Charged]])
mapped_async = mapped_steps.map("total", total, over=lambda charged: charged, retries=2)
assert_type(mapped_async, FlowBuilder[Basket, list[int]])
order_flow = flow("one-order").input(Order).step("charge", charge).build()
mapped_flows = basket.map(order_flow, over=lambda b: b.orders, concurrency=2)
assert_type(mapped_flows, FlowBuilder[Basket, list[Charged]])
assert_type(mapped_flows.build(), BuiltFlow[Basket, list[Charged]])
mapped_handles = basket.map(engine.register(order_flow), over=lambda b: b.orders)
assert_type(mapped_handles, FlowBuilder[Basket, list[Charged]])
