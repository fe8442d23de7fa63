import asyncio

from pydantic import BaseModel

from iterflow import Engine, FlowContext


class DocChanged(BaseModel):
    doc: str
    revision: int


class Indexed(BaseModel):
    doc: str
    revision: int


class Day(BaseModel):
    day: str


class Report(BaseModel):
    day: str


engine = Engine()  # no URL: $ITERFLOW_DATABASE_URL, $DATABASE_URL, else embedded in ./.iterflow


@engine.flow("reindex", input=DocChanged, output=Indexed)
async def reindex(ctx: FlowContext, change: DocChanged) -> Indexed:
    async def index() -> int:
        return change.revision  # call your search engine here

    revision = await ctx.step("index", index)
    return Indexed(doc=change.doc, revision=revision)


@engine.flow("daily_report", input=Day, output=Report)
async def daily_report(ctx: FlowContext, day: Day) -> Report:
    await ctx.sleep("1s", label="gather")  # a long job: it stays live meanwhile
    return Report(day=day.day)


async def main(database_url: str | None = None) -> tuple[dict[str, object], bool]:
    if database_url is not None:
        engine.configure(database_url=database_url)
    async with engine:
        await engine.migrate()
        await engine.listen(concurrency=4)
        # Three saves in quick succession: one run, 500 ms after the last, with revision 3.
        for revision in (1, 2, 3):
            run = await reindex.start(
                DocChanged(doc="readme", revision=revision), debounce="500ms", key="readme"
            )
            print(revision, run.created)  # 1 True, 2 False, 3 False
        indexed = await reindex.result(run.run_id, timeout=30)

        # At most one live report per day: a second start returns the running one.
        first = await daily_report.start(Day(day="2030-01-01"), singleton=True, key="2030-01-01")
        second = await daily_report.start(Day(day="2030-01-01"), singleton=True, key="2030-01-01")
        await daily_report.result(first.run_id, timeout=30)
        print(indexed, second.run_id == first.run_id, second.created)  # ... True False
        return indexed.model_dump(), second.run_id == first.run_id


if __name__ == "__main__":
    asyncio.run(main())
