from collections import Counter

from pydantic import BaseModel

from iterflow import Engine, FlowContext

engine = Engine.in_memory()
calls: Counter[str] = Counter()


class Approval(BaseModel):
    approved: bool


@engine.flow("invoice", input=int, output=int, signals={"approve": Approval})
async def invoice(ctx: FlowContext, amount: int) -> int:
    def step(name: str, value: int) -> int:
        calls[name] += 1
        return value

    total = await ctx.step("price", step, "price", amount)
    await ctx.signal("approve", Approval)
    return await ctx.step("charge", step, "charge", total)


async def main() -> dict[str, object]:
    async with engine:
        run = await invoice.start(42, tags=["q3"])
        await engine.drain()  # waits for "approve"
        print((await engine.explain(run.run_id)).summary)  # waiting for signal approve since ...

        await engine.cancel(run.run_id, reason="paused by ops")
        await engine.retry(run.run_id, resume=True)  # canceled -> pending, history kept
        await engine.signal(run.run_id, "approve", {"approved": True})
        await engine.drain()

        # a new run of the same flow, version and input: "price" reused, "charge" on replayed
        forked = await engine.fork(run.run_id, from_step="charge")
        await engine.drain()

        # every live run tagged "batch", canceled (dry_run=True only says what it would do)
        for amount in (1, 2):
            await invoice.start(amount, tags=["batch"])
        await engine.drain()
        preview = await engine.bulk("cancel", tags=["batch"], dry_run=True)
        done = await engine.bulk("cancel", tags=["batch"], reason="end of quarter")
        return {
            "output": await engine.result(forked.run_id),
            "calls": dict(calls),
            "preview": preview.outcomes,
            "canceled": done.outcomes,
        }
