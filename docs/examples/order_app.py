"""The worker app used by docker-compose: ``flowctl worker order_app:engine``."""

from pydantic import BaseModel

from iterflow import Engine, FlowContext


class Order(BaseModel):
    order_id: str
    amount_cents: int


class Approval(BaseModel):
    approved_by: str


engine = Engine()  # opens on $ITERFLOW_DATABASE_URL (else $DATABASE_URL), like flowctl


@engine.flow("order", version=1, input=Order, output=str, signals={"approve": Approval})
async def order_flow(ctx: FlowContext, order: Order) -> str:
    charge_id = await ctx.step("charge", lambda: f"ch_{order.order_id}")
    approval = await ctx.signal("approve", Approval, timeout="3d")
    return f"{charge_id} approved by {approval.approved_by}"
