from datetime import UTC, datetime

from pydantic import BaseModel

from iterflow import Engine, FakeClock, FlowContext, Tick


class Digest(BaseModel):
    for_tick: str


clock = FakeClock(datetime(2030, 3, 29, 7, 0, tzinfo=UTC))  # a Friday, 08:00 in Paris
engine = Engine.in_memory(clock=clock)


@engine.flow("digest", input=Tick, output=Digest, schedule="0 9 * * MON-FRI", tz="Europe/Paris")
async def digest(ctx: FlowContext, tick: Tick) -> Digest:
    return Digest(for_tick=tick.scheduled_at.isoformat())


async def main() -> list[str]:
    async with engine:
        await engine.drain()  # writes the declared schedule; nothing is due yet
        clock.advance("1h")  # 09:00 in Paris (08:00 UTC: winter time)
        await engine.drain()  # the sweep starts the tick's run, the worker runs it
        clock.advance("3d")  # Monday 10:00 in Paris, summer time since Sunday
        await engine.drain()  # Monday 09:00 (07:00 UTC) runs, once
        runs = (await engine.list_runs(name="digest")).runs
        return sorted(run.output["for_tick"] for run in runs)
