"""Checked by mypy --strict (tests/unit/test_builder_typing.py): the builder is typed end to end.

Never executed; ``assert_type`` fails the type check when the channel type is not the one shown.
"""

from __future__ import annotations

from typing import assert_type

from pydantic import BaseModel

from iterflow import BuiltFlow, Engine, FlowHandle, StepContext, flow
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


async def receipt(charged: Charged) -> str:
    return f"{charged.id}: {charged.cents}"


def approve(charged: Charged, approval: Approval) -> Charged:
    return charged if approval.ok else charged.model_copy(update={"cents": 0})


async def child_body(value: str) -> int:
    return len(value)


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
looped = merged.loop(until=lambda c: c.cents > 0, body=lambda b: b.step("retry", charge_again))
assert_type(looped, FlowBuilder[Order, Charged])
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


def charge_again(charged: Charged) -> Charged:
    return charged.model_copy(update={"cents": charged.cents + 1})


async def result(h: FlowHandle[Order, str]) -> str:
    return await h.result("00000000-0000-0000-0000-000000000000")


_: BuiltFlow[Order, str] = built

# Mistakes a type checker reports (warn_unused_ignores makes each ignore an assertion):
text.step("wrong", charge)  # type: ignore[arg-type]  # the value is a str, not an Order
merged.invoke(child)  # type: ignore[arg-type]  # child takes a str, the value is Charged
start.loop(until=lambda o: o.amount > 0, body=lambda b: b.step("x", charge))  # type: ignore[arg-type]
