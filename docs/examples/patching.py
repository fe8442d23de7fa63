"""Changing a flow that has runs in flight: ctx.patched keeps old runs on the old path."""

from pydantic import BaseModel

from iterflow import Engine, FlowContext
from iterflow.testing import FakeClock


class Order(BaseModel):
    order_id: str


def charge(order_id: str) -> str:
    return f"charged {order_id}"


def check_fraud(order_id: str) -> bool:
    return True


engine = Engine.in_memory(clock=FakeClock())


@engine.flow("checkout", version=1, input=Order, output=str, drift_policy="park")
async def checkout(ctx: FlowContext, order: Order) -> str:
    if await ctx.patched("fraud-check"):  # added while runs were in flight
        await ctx.step("fraud-check", check_fraud, order.order_id)
    receipt = await ctx.step("charge", charge, order.order_id)
    await ctx.sleep("1d", label="settle")
    return receipt


async def main() -> list[str]:
    async with engine:
        run = await checkout.start(Order(order_id="A-1"))
        await engine.drain()
        detail = await engine.status(run.run_id)
        return [step.cursor_key for step in detail.steps]
        # ['patch:fraud-check', 'fraud-check', 'charge']; a run that recorded 'charge'
        # before the change replays with ctx.patched(...) == False and skips the check.
