"""Flows the kit's tests drive: an order (step, sleep, signal with a timeout), a retried step,
a parent invoking a child, and a built flow."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from iterflow import Engine, FlowContext, SignalTimeout, Tick, flow

app = Engine()  # an application's engine: the kit registers its flows, never opens it


class Order(BaseModel):
    id: str
    amount: int


class Approval(BaseModel):
    by: str


CHARGED: list[str] = []


def charge(order: Order) -> str:
    CHARGED.append(order.id)
    return f"ch_{order.id}"


@app.flow("order", input=Order, output=str, signals={"approve": Approval})
async def order(ctx: FlowContext, o: Order) -> str:
    receipt = await ctx.step("charge", charge, o)
    await ctx.sleep("3d", label="cool-off")
    try:
        approval = await ctx.signal("approve", Approval, timeout="1d")
    except SignalTimeout:
        return f"{receipt} unapproved"
    return f"{receipt} approved by {approval.by}"


class Times(BaseModel):
    woke: list[datetime]


@app.flow("ticks", input=Order, output=Times)
async def ticks(ctx: FlowContext, o: Order) -> Times:
    woke = []
    for wait in ("1h", "2h", "1d"):
        await ctx.sleep(wait)
        woke.append(await ctx.now())
    return Times(woke=woke)


FLAKY_CALLS: list[int] = []


def flaky(times: int) -> int:
    FLAKY_CALLS.append(times)
    if len(FLAKY_CALLS) < times:
        raise RuntimeError("not yet")
    return len(FLAKY_CALLS)


@app.flow("flaky", input=int, output=int)
async def flaky_flow(ctx: FlowContext, times: int) -> int:
    return await ctx.step("flaky", flaky, times, retries=5, backoff="1m")


@app.flow("label", input=Order, output=str)
async def label(ctx: FlowContext, o: Order) -> str:
    return await ctx.step("print", lambda: f"label-{o.id}")


@app.flow("ship", input=Order, output=str)
async def ship(ctx: FlowContext, o: Order) -> str:
    printed = await ctx.invoke(label, o)
    return f"shipped with {printed}"


def double(n: int) -> int:
    return n * 2


built = flow("built").input(int).step("double", double).sleep("1d", label="rest").build()


@app.flow("daily", input=Tick, output=str, schedule="0 9 * * *", tz="Europe/Paris")
async def daily(ctx: FlowContext, tick: Tick) -> str:
    return tick.scheduled_at.isoformat()


class Pair(BaseModel):
    a: int
    b: int


@app.flow("pair", input=int, output=Pair)
async def pair(ctx: FlowContext, n: int) -> Pair:
    a, b = await ctx.gather(ctx.step("a", double, n), ctx.step("b", double, n + 1))
    return Pair(a=a, b=b)
