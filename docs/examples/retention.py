from datetime import UTC, datetime

from pydantic import BaseModel

from iterflow import Engine, FakeClock, FlowContext, FlowError, Settings

# Keep done runs 30 days, failed ones 90, canceled ones forever; "audit" runs a year.
settings = Settings(
    retention={"done": "30d", "failed": "90d", "flows": {"audit": {"done": "365d"}}}
)
clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
engine = Engine.in_memory(clock=clock, settings=settings)


class Order(BaseModel):
    id: str


@engine.flow("ship", input=Order, output=Order, deadline="2d")
async def ship(ctx: FlowContext, order: Order) -> Order:
    await ctx.sleep("1h")
    return order


async def main() -> dict[str, object]:
    async with engine:
        await ship.start(Order(id="A-1"), idempotency_key="A-1")
        late = await ship.start(Order(id="A-2"), deadline="30m")  # the start's own deadline
        await engine.drain()  # both sleep; the late one wakes at its deadline
        clock.advance("1h")
        await engine.drain()
        try:
            await ship.result(late.run_id)
        except FlowError as exc:
            late_code = exc.error_code  # RUN_DEADLINE_EXCEEDED
        try:
            await ship.start(Order(id="B-9"), idempotency_key="A-1")  # same key, other input
        except FlowError as exc:
            conflict_code = exc.error_code  # IDEMPOTENCY_CONFLICT

        clock.advance("31d")
        preview = await engine.purge(older_than="30d", status="done", dry_run=True)
        swept = await engine.sweep_retention()  # what the workers' periodic task does
        gone = await engine.list_runs(name="ship")
        return {
            "late": late_code,
            "conflict": conflict_code,
            "would_purge": preview.runs,
            "purged": dict(swept.by_status),
            "left": [run.status.value for run in gone.runs],
        }
