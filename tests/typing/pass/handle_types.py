"""The typed path from the outside: a flow's handle starts runs with its input model and returns
its output model; signals are sent with a ``Signal`` descriptor whose payload type is checked.

Never executed; checked by mypy --strict and pyright strict (``tests/typing/check.py``). The
mistakes are in ``tests/typing/fail/handle_errors.py``.
"""

from __future__ import annotations

import uuid
from typing import assert_type

from pydantic import BaseModel

from iterflow import Engine, FlowContext, FlowHandle, Signal, SignalResult, StartResult


class Order(BaseModel):
    id: str
    amount: int


class Receipt(BaseModel):
    order_id: str
    approved_by: str


class Approval(BaseModel):
    by: str


approve = Signal("approve", Approval)
assert_type(approve, Signal[Approval])
engine = Engine("memory://")


@engine.flow("order", input=Order, output=Receipt, signals=[approve])
async def order_flow(ctx: FlowContext, order: Order) -> Receipt:
    approval = await ctx.signal(approve, timeout="7d")
    assert_type(approval, Approval)
    return Receipt(order_id=order.id, approved_by=approval.by)


@engine.flow("legacy", input=Order, output=int, signals={"approve": Approval})
async def legacy_flow(ctx: FlowContext, order: Order) -> int:
    approval = await ctx.signal("approve", Approval)
    return len(approval.by)


assert_type(order_flow, FlowHandle[Order, Receipt])
assert_type(legacy_flow, FlowHandle[Order, int])


async def typed_path(run_id: uuid.UUID) -> None:
    started = await order_flow.start(Order(id="A-1", amount=42))
    assert_type(started, StartResult)
    assert_type(await order_flow.start({"id": "A-1", "amount": 42}), StartResult)
    assert_type(await order_flow.signal(started.run_id, approve, Approval(by="ana")), SignalResult)
    assert_type(await engine.signal(run_id, approve, Approval(by="ana")), SignalResult)
    assert_type(await engine.signal(run_id, "approve", {"by": "ana"}), SignalResult)
    assert_type(await order_flow.result(started.run_id, timeout=30), Receipt)
    assert_type(await legacy_flow.result(run_id), int)
