"""Builder mistakes a type checker reports: each ``# expect-error`` line must be an error under
mypy --strict and pyright strict, and nothing else may be (``tests/typing/check.py``)."""

from __future__ import annotations

from pydantic import BaseModel

from iterflow import Signal, StepContext, flow
from iterflow.core.builder import FlowBuilder


class Order(BaseModel):
    id: str
    amount: int


class Charged(BaseModel):
    id: str
    cents: int


class Approval(BaseModel):
    ok: bool


def charge(order: Order, step: StepContext[Order]) -> Charged:
    return Charged(id=order.id, cents=order.amount * 100)


def describe_charge(charged: Charged) -> str:
    return charged.id


def size(value: str) -> int:
    return len(value)


def charge_in_loop(b: FlowBuilder[Order, Order]) -> FlowBuilder[Order, Charged]:
    return b.step("x", charge)


def merge_order(order: Order, approval: Approval) -> Order:
    return order


start = flow("typed").input(Order)
charged = start.step("charge", charge)
text = charged.step("describe", describe_charge)
child = flow("child").input(str).step("len", size).build()

# the value is a str, not an Order
text.step("wrong", charge)  # expect-error
# the child takes a str, the value is a Charged
charged.invoke(child)  # expect-error
# a descriptor carries its model: no second one
charged.signal(Signal("approve", Approval), Approval)  # expect-error
# merge gets the value (a Charged), not an Order
charged.signal(Signal("approve", Approval), merge=merge_order)  # expect-error
# a loop body keeps the value's type
start.loop(until=lambda o: o.amount > 0, body=charge_in_loop)  # expect-error

# .map: the step takes an Order, the items are str
start.map("m", charge, over=lambda o: [o.id])  # expect-error
# .map: the child takes a str, the items are Orders
start.map(child, over=lambda o: [o])  # expect-error
# .map: the value after a map is a list, not a Charged
start.map("m", charge, over=lambda o: [o]).step("d", describe_charge)  # expect-error
