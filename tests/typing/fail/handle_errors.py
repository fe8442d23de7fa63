"""Mistakes on the typed path a type checker reports: a signal payload that is not the
descriptor's model, an input that is not the flow's, a result used as another type, a body that
does not fit the flow's models.

Each ``# expect-error`` line must be an error under mypy --strict and pyright strict, and nothing
else may be (``tests/typing/check.py``).
"""

from __future__ import annotations

import uuid

from pydantic import BaseModel

from iterflow import Engine, FlowContext, Signal


class Order(BaseModel):
    id: str
    amount: int


class Receipt(BaseModel):
    order_id: str


class Approval(BaseModel):
    by: str


approve = Signal("approve", Approval)
engine = Engine("memory://")


@engine.flow("order", input=Order, output=Receipt, signals=[approve])
async def order_flow(ctx: FlowContext, order: Order) -> Receipt:
    return Receipt(order_id=order.id)


async def wrong_payloads(run_id: uuid.UUID) -> None:
    await engine.signal(run_id, approve, Order(id="A-1", amount=1))  # expect-error
    await engine.signal(run_id, approve, {"by": "ana"})  # expect-error
    await order_flow.signal(run_id, approve, "ana")  # expect-error


async def wrong_inputs_and_results(run_id: uuid.UUID) -> None:
    await order_flow.start(Approval(by="ana"))  # expect-error
    receipt: Order = await order_flow.result(run_id)  # expect-error
    print(receipt)


wrong_descriptor: Signal[Order] = Signal("approve", Approval)  # expect-error


@engine.flow("wrong-output", input=Order, output=Receipt)  # expect-error
async def returns_a_string(ctx: FlowContext, order: Order) -> str:
    return order.id


@engine.flow("bad-signals", input=Order, output=Receipt, signals=[Approval])  # expect-error
async def declares_a_model(ctx: FlowContext, order: Order) -> Receipt:
    return Receipt(order_id=order.id)
