"""The onboarding flow written with the builder, run on the in-memory engine."""

from pydantic import BaseModel

from iterflow import Engine, StepContext, flow
from iterflow.core.graph import render
from iterflow.testing import FakeClock


class Signup(BaseModel):
    email: str


class Account(BaseModel):
    email: str
    checks: int = 0
    verified: bool = False
    plan: str = "free"


class Activation(BaseModel):
    plan: str


def create_account(signup: Signup, step: StepContext[Signup]) -> Account:
    step.log.info("creating %s (attempt %d)", signup.email, step.attempt)
    return Account(email=signup.email)


async def check_email(account: Account) -> Account:
    checks = account.checks + 1
    return account.model_copy(update={"checks": checks, "verified": checks >= 2})


def choose_plan(account: Account, activation: Activation) -> Account:
    return account.model_copy(update={"plan": activation.plan})


async def provision_pro(account: Account) -> Account:
    return account


onboard = (
    flow("onboard")
    .version(1)
    .input(Signup)
    .step("create-account", create_account, retries=3, backoff="1s")
    .loop(
        until=lambda account: account.verified,
        body=lambda b: b.step("check-email", check_email).sleep("10m", label="recheck"),
    )
    .signal("activate", Activation, timeout="7d", merge=choose_plan)
    .branch(
        on=lambda account: account.plan,
        cases={"pro": lambda b: b.step("provision-pro", provision_pro)},
        label="plan",
    )
    .output(lambda account: f"{account.email} on {account.plan}", model=str)
    .build()
)


async def main() -> str:
    clock = FakeClock()
    engine = Engine.in_memory(clock=clock)
    handle = engine.register(onboard)  # FlowHandle[Signup, str]
    async with engine:
        run = await handle.start(Signup(email="ana@example.com"))
        await engine.drain()  # create-account, check-email, then the 10-minute recheck
        for _ in range(2):  # check-email#1 verifies, then the loop ends after its recheck
            clock.advance("10m")
            await engine.drain()
        await engine.signal(run.run_id, "activate", {"plan": "pro"})
        await engine.drain()
        detail = await engine.status(run.run_id)
        print([step.cursor_key for step in detail.steps])
        # ['create-account', 'check-email', 'sleep:recheck', 'check-email#1',
        #  'sleep:recheck#1', 'signal:activate', 'provision-pro']
        print(render(onboard.graph))  # Mermaid; render(onboard.graph, "json") for JSON
        return await handle.result(run.run_id, timeout=1)
