"""The flows of the replay corpus, as current code. Recorded histories in ``cases/`` must keep
replaying on them: change a flow only in ways old runs survive (or guard it with
``ctx.patched``), and add a new case whenever the stored shape changes."""

from __future__ import annotations

from pydantic import BaseModel

from iterflow import FlowContext, flow
from iterflow.core.definition import FlowDef


class OrderIn(BaseModel):
    order_id: str
    amount: int


class Approval(BaseModel):
    approved: bool
    by: str = "ops"


class Receipt(BaseModel):
    order_id: str
    charged: int
    approved_by: str


def reserve(order_id: str) -> str:
    return order_id


def charge(amount: int) -> int:
    return amount * 100


async def order_body(ctx: FlowContext, order: OrderIn) -> Receipt:
    await ctx.step("reserve", reserve, order.order_id)
    charged = await ctx.step("charge", charge, order.amount)
    await ctx.sleep("200ms", label="cool-off")
    approval = await ctx.signal("approve", Approval, timeout="1h")
    return Receipt(order_id=order.order_id, charged=charged, approved_by=approval.by)


#: A raw body: two steps, a durable sleep, a signal with a timeout.
ORDER: FlowDef[OrderIn, Receipt] = FlowDef(
    name="replay-order",
    version=1,
    input_type=OrderIn,
    output_type=Receipt,
    body=order_body,
    signals={"approve": Approval},
)


class Signup(BaseModel):
    email: str


class Account(BaseModel):
    email: str
    checks: int = 0
    verified: bool = False
    plan: str = "free"


class Activation(BaseModel):
    plan: str


def create(signup: Signup) -> Account:
    return Account(email=signup.email)


def check(account: Account) -> Account:
    checks = account.checks + 1
    return account.model_copy(update={"checks": checks, "verified": checks >= 3})


def activate(account: Account, activation: Activation) -> Account:
    return account.model_copy(update={"plan": activation.plan})


def provision(account: Account) -> Account:
    return account


def summary(account: Account) -> str:
    return f"{account.email}:{account.plan}:{account.checks}"


#: A built flow: a loop of three checks with sleeps, a merged signal, a branch.
ONBOARD = (
    flow("replay-onboard")
    .input(Signup)
    .step("create", create)
    .loop(
        until=lambda a: a.verified,
        body=lambda b: b.step("check", check).sleep("100ms", label="recheck"),
    )
    .signal("activate", Activation, merge=activate)
    .branch(on=lambda a: a.plan, cases={"pro": lambda b: b.step("provision", provision)})
    .output(summary)
    .build()
)
