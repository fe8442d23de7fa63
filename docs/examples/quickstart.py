import asyncio

from pydantic import BaseModel

from iterflow import Engine, FlowContext


class Order(BaseModel):
    order_id: str
    amount_cents: int


class Approval(BaseModel):
    approved_by: str


class Receipt(BaseModel):
    order_id: str
    charge_id: str
    approved_by: str


engine = Engine()  # no URL: $ITERFLOW_DATABASE_URL, $DATABASE_URL, else embedded in ./.iterflow


@engine.flow("order", version=1, input=Order, output=Receipt, signals={"approve": Approval})
async def order_flow(ctx: FlowContext, order: Order) -> Receipt:
    async def charge(amount: int) -> str:
        return f"ch_{order.order_id}_{amount}"  # call your payment API here

    charge_id = await ctx.step("charge", charge, order.amount_cents, retries=3, backoff="1s")
    await ctx.sleep("200ms", label="cool-off")  # durable: the run leaves memory
    approval = await ctx.signal("approve", Approval, timeout="3d")
    return Receipt(order_id=order.order_id, charge_id=charge_id, approved_by=approval.approved_by)


async def main(database_url: str | None = None) -> Receipt:
    if database_url is not None:  # else $ITERFLOW_DATABASE_URL, $DATABASE_URL or embedded
        engine.configure(database_url=database_url)  # validated; only before the engine opens
    async with engine:
        await engine.migrate()
        await engine.listen(concurrency=4)  # an in-process worker
        run = await order_flow.start(Order(order_id="A-1", amount_cents=4200))
        # ...later, from a webhook handler:
        await engine.signal(run.run_id, "approve", {"approved_by": "ana"}, idempotency_key="evt_1")
        receipt = await order_flow.result(run.run_id, timeout=30)
        print(receipt)
        return receipt


if __name__ == "__main__":
    asyncio.run(main())
