"""Crash injection: is the charge safe when a worker dies around its checkpoint?"""

from pydantic import BaseModel

from iterflow import Engine, FlowContext
from iterflow.testing import TestEngine

engine = Engine()


class Order(BaseModel):
    id: str
    amount: int


class FakeProvider:
    """A payment API that deduplicates on an idempotency key, as most do."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.charges: dict[str, int] = {}

    def charge(self, key: str, amount: int) -> str:
        self.requests.append(key)
        self.charges.setdefault(key, amount)
        return f"ch_{key}"


provider = FakeProvider()


@engine.flow("checkout", input=Order, output=str)
async def checkout(ctx: FlowContext, order: Order) -> str:
    key = str(await ctx.uuid())  # recorded: the same key on every replay
    receipt = await ctx.step("charge", provider.charge, key, order.amount)
    await ctx.step("email", lambda: f"receipt {receipt} sent")
    return receipt


async def test_a_crash_after_the_checkpoint_does_not_charge_again() -> None:
    async with TestEngine(checkout) as t:
        t.crash_after("charge")  # the worker dies right after the charge is committed
        run = await t.start(checkout, Order(id="A-1", amount=4200))
        assert t.history(run).run.status == "running"  # still leased to the dead worker
        await t.recover()  # the lease expires; another attempt replays the memo
        assert (await t.result(run)).startswith("ch_")
        assert t.steps_run == {"charge": 1, "email": 1}


async def test_a_crash_before_the_checkpoint_charges_at_most_once() -> None:
    provider.requests.clear()
    async with TestEngine(checkout) as t:
        t.crash_before("charge")  # the charge ran, its result was never committed
        run = await t.start(checkout, Order(id="A-2", amount=990))
        await t.recover()
        assert t.steps_run["charge"] == 2  # at-least-once before the checkpoint...
        assert len(provider.requests) == 2
        assert len(set(provider.requests)) == 1  # ...with one idempotency key: one charge
        assert await t.result(run) == f"ch_{provider.requests[0]}"
