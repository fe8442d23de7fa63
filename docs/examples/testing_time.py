"""A flow that sleeps 3 days and waits a week for a survey, tested in milliseconds."""

from pydantic import BaseModel

from iterflow import Engine, FlowContext, SignalTimeout
from iterflow.testing import TestEngine

engine = Engine()  # your application's engine: the tests never open it


class Signup(BaseModel):
    email: str


class Survey(BaseModel):
    score: int


def send(email: str, what: str) -> str:
    return f"{what} sent to {email}"


@engine.flow("onboard", input=Signup, output=str, signals={"survey": Survey})
async def onboard(ctx: FlowContext, signup: Signup) -> str:
    await ctx.step("welcome", send, signup.email, "welcome")
    await ctx.sleep("3d")
    try:
        survey = await ctx.signal("survey", Survey, timeout="7d")
    except SignalTimeout:
        await ctx.step("reminder", send, signup.email, "reminder")
        return "no answer"
    return f"scored {survey.score}"


async def test_the_survey_is_answered() -> None:
    async with TestEngine(onboard) as t:
        run = await t.start(onboard, Signup(email="ana@example.com"))
        assert t.history(run).run.status == "sleeping"
        await t.advance("3d")  # the sleep fires; the run now waits for the survey
        assert t.history(run).run.waiting_for == "signal:survey"
        await t.signal(run, "survey", {"score": 9})
        assert await t.result(run) == "scored 9"


async def test_no_answer_in_a_week(iterflow_engine: TestEngine) -> None:  # the pytest fixture
    t = iterflow_engine
    run = await t.start(onboard, Signup(email="bo@example.com"))
    await t.advance("10d")  # the 3-day sleep, then the 7-day timeout, in order
    assert await t.result(run) == "no answer"
    assert t.steps_run == {"welcome": 1, "reminder": 1}
    assert [s.cursor_key for s in t.history(run).steps] == [
        "welcome",
        "sleep",
        "signal:survey",
        "reminder",
    ]
