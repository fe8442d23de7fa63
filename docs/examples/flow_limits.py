"""Per-flow queues and limits: charges go to the "billing" queue, at most 2 live attempts per
customer (counted by PostgreSQL across every worker) and at most 100 attempt starts a minute. A
run held back by a limit waits without a wake-up queued, and ``explain`` says why."""

import asyncio

from pydantic import BaseModel

from iterflow import Engine, FlowContext


class Charge(BaseModel):
    customer: str
    cents: int


engine = Engine()  # no URL: $ITERFLOW_DATABASE_URL, $DATABASE_URL, else embedded in ./.iterflow
provider_open = asyncio.Event()  # the example keeps the provider calls waiting until it looked


@engine.flow(
    "charge",
    input=Charge,
    output=str,
    queue="billing",
    concurrency=2,
    concurrency_key=lambda charge: charge.customer,
    rate_limit=(100, "1m"),
)
async def charge(ctx: FlowContext, order: Charge) -> str:
    async def call_provider() -> str:
        await provider_open.wait()  # call your payment provider here
        return f"{order.customer}:{order.cents}"

    return await ctx.step("call-provider", call_provider)


async def main(database_url: str | None = None) -> tuple[list[str], str]:
    if database_url is not None:
        engine.configure(database_url=database_url)
    async with engine:
        await engine.migrate()
        # as `flowctl worker app:engine --queues billing --concurrency 8` would
        await engine.listen(queues=["billing"], concurrency=8)
        runs = [await charge.start(Charge(customer="acme", cents=c)) for c in (100, 200, 300)]
        held: list[str] = []
        while not held:  # two attempts of acme are live, so one run is held back
            states = [await engine.explain(run.run_id) for run in runs]
            held = [said.summary for said in states if said.state == "held"]
            await asyncio.sleep(0.05)
        print(held[0])  # held back by concurrency limit of flow charge key acme (2/2 live) ...
        provider_open.set()
        results = [await charge.result(run.run_id, timeout=30) for run in runs]
        return results, held[0]


if __name__ == "__main__":
    asyncio.run(main())
