"""Schedules fire as the fake clock passes their ticks, in order with sleeps and retries."""

from datetime import UTC, datetime

from pydantic import BaseModel

from iterflow import Engine, FlowContext, Tick
from iterflow.testing import FakeClock, TestEngine

engine = Engine()


class Digest(BaseModel):
    team: str


mail_outages = [ConnectionError("mail server down")]  # the first send fails, once


def send_digest(team: str, day: str) -> str:
    if mail_outages:
        raise mail_outages.pop()
    return f"digest for {team} on {day}"


@engine.flow("cleanup", input=Tick, output=str, schedule="0 2 * * *")  # declared in code
async def cleanup(ctx: FlowContext, tick: Tick) -> str:
    return await ctx.step("purge", lambda: f"purged before {tick.scheduled_at:%H:%M}")


@engine.flow("digest", input=Digest, output=str)
async def digest(ctx: FlowContext, d: Digest) -> str:
    today = await ctx.now()
    await ctx.sleep("1h", label="collect")
    return await ctx.step("send", send_digest, d.team, f"{today:%a}", retries=2, backoff="10m")


async def test_schedules_fire_in_order_with_sleeps_and_retries() -> None:
    monday = datetime(2030, 1, 7, tzinfo=UTC)
    async with TestEngine(cleanup, clock=FakeClock(monday)) as t:  # cleanup's schedule comes too
        await t.schedule(digest, cron="0 8 * * 1-5", input=Digest(team="ops"))  # weekdays 08:00
        await t.advance("2d")  # two days of ticks, each run's sleep and retry fired on the way

        runs = sorted((await t.engine.list_runs()).runs, key=lambda r: r.created_at)
        assert [(r.name, f"{r.created_at:%a %H:%M}") for r in runs] == [
            ("cleanup", "Mon 02:00"),
            ("digest", "Mon 08:00"),
            ("cleanup", "Tue 02:00"),
            ("digest", "Tue 08:00"),
        ]
        assert [r.output for r in runs if r.name == "digest"] == [
            "digest for ops on Mon",
            "digest for ops on Tue",
        ]
        assert t.steps_run == {"purge": 2, "send": 3}  # Monday's send was retried once
        send = t.history(runs[1].id).steps[-1]
        assert (send.cursor_key, send.attempts) == ("send", 2)
        assert f"{runs[1].finished_at:%H:%M}" > "09:00"  # after the 1h sleep and a backoff
