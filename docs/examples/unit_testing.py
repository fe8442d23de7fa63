"""Unit-test a flow without PostgreSQL: the in-memory engine and a fake clock."""

from pydantic import BaseModel

from iterflow import Engine, FlowContext
from iterflow.testing import FakeClock


class Signup(BaseModel):
    email: str


class Survey(BaseModel):
    score: int


clock = FakeClock()
engine = Engine.in_memory(clock=clock)


@engine.flow("onboard", input=Signup, output=str, signals={"survey": Survey})
async def onboard(ctx: FlowContext, signup: Signup) -> str:
    await ctx.step("welcome", lambda: f"sent to {signup.email}")
    await ctx.sleep("3d")
    survey = await ctx.signal("survey", Survey, timeout="7d")
    return f"{signup.email} scored {survey.score}"


async def main() -> str:
    async with engine:
        run = await onboard.start(Signup(email="ana@example.com"))
        await engine.drain()  # runs until the 3-day sleep
        clock.advance("3d")
        await engine.drain()  # wakes, waits for the survey
        await engine.signal(run.run_id, "survey", {"score": 9})
        await engine.drain()
        return await onboard.result(run.run_id, timeout=1)
