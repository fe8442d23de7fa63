import asyncio

from pydantic import BaseModel

from iterflow import Engine, FlowContext, Signal


class Expense(BaseModel):
    employee: str
    cents: int


class Approval(BaseModel):
    approved: bool
    by: str


class Decision(BaseModel):
    employee: str
    paid_cents: int
    decided_by: str


approve = Signal("approve", Approval)  # one name, one payload model, one typed object

engine = Engine()


@engine.flow("expense", input=Expense, output=Decision, signals=[approve])
async def expense_flow(ctx: FlowContext, expense: Expense) -> Decision:
    # an Approval, to mypy and pyright and at run time
    approval = await ctx.signal(approve, timeout="7d")
    paid = expense.cents if approval.approved else 0
    return Decision(employee=expense.employee, paid_cents=paid, decided_by=approval.by)


async def main(database_url: str | None = None) -> Decision:
    if database_url is not None:
        engine.configure(database_url=database_url)
    async with engine:
        await engine.migrate()
        await engine.listen()
        run = await expense_flow.start(Expense(employee="kim", cents=1250))
        # from the approval UI: the payload's type is checked against the descriptor's model
        await expense_flow.signal(run.run_id, approve, Approval(approved=True, by="ana"))
        return await expense_flow.result(run.run_id, timeout=30)  # a Decision


if __name__ == "__main__":
    asyncio.run(main())
