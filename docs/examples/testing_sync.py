"""Blocking calls from synchronous code: what a Django or Flask view does."""

from pydantic import BaseModel

from iterflow import Engine, FlowContext
from iterflow.sync import SyncEngine

engine = Engine()  # the database from $ITERFLOW_DATABASE_URL / $DATABASE_URL


class Order(BaseModel):
    id: str
    amount: int


class Approval(BaseModel):
    by: str


@engine.flow("order", input=Order, output=str, signals={"approve": Approval})
async def order(ctx: FlowContext, o: Order) -> str:
    approval = await ctx.signal("approve", Approval, timeout="7d")
    return await ctx.step("charge", lambda: f"ch_{o.id} approved by {approval.by}")


flows = SyncEngine(engine)  # opens on first use, on a private event loop thread


def checkout(order_id: str, amount: int) -> dict[str, str]:
    run = flows.start(order, Order(id=order_id, amount=amount), idempotency_key=order_id)
    return {"run_id": str(run.run_id), "status": run.status.value}


def approve(run_id: str, by: str) -> str:
    return flows.signal(run_id, "approve", {"by": by}).kind


def receipt(run_id: str) -> str:
    result: str = flows.result(run_id, timeout=10)
    return result
