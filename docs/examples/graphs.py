"""One business flow written both ways yields one graph; describe() dry-runs a raw body."""

from pydantic import BaseModel

from iterflow import FlowContext, flow
from iterflow.core.definition import FlowDef
from iterflow.core.describe import describe
from iterflow.core.graph import render


class Order(BaseModel):
    order_id: str
    amount: int


class Charged(BaseModel):
    order_id: str
    cents: int


class Approval(BaseModel):
    approved: bool
    by: str = "ops"


class Receipt(BaseModel):
    order_id: str
    cents: int
    approved_by: str


async def charge(order: Order) -> Charged:
    return Charged(order_id=order.order_id, cents=order.amount * 100)


def approve(charged: Charged, approval: Approval) -> Receipt:
    return Receipt(order_id=charged.order_id, cents=charged.cents, approved_by=approval.by)


built = (
    flow("order")
    .input(Order)
    .step("charge", charge, retries=3)
    .sleep("1h", label="cool-off")
    .signal("approve", Approval, merge=approve)
    .build()
)


async def order_body(ctx: FlowContext, order: Order) -> Receipt:
    charged = await ctx.step("charge", charge, order, retries=3)
    await ctx.sleep("1h", label="cool-off")
    approval = await ctx.signal("approve", Approval)
    return approve(charged, approval)


raw: FlowDef[Order, Receipt] = FlowDef(
    name="order",
    version=1,
    input_type=Order,
    output_type=Receipt,
    body=order_body,
    signals={"approve": Approval},
)


async def main() -> str:
    described = await describe(raw, {"order_id": "A-1", "amount": 42})
    assert described == built.graph  # same nodes and edges
    return render(described)
