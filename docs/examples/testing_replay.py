"""Replay runs recorded in production against the code you are about to deploy."""

from pathlib import Path

import pytest
from pydantic import BaseModel

from iterflow import Engine, FlowContext
from iterflow.testing import replay, replay_folder

engine = Engine()


class Order(BaseModel):
    id: str
    amount: int


def charge(order: Order) -> str:
    return f"ch_{order.id}"


def ship(order: Order) -> str:
    return f"parcel_{order.id}"


@engine.flow("checkout", input=Order, output=str)
async def checkout(ctx: FlowContext, order: Order) -> str:
    receipt = await ctx.step("charge", charge, order)
    await ctx.sleep("1d", label="cool-off")
    parcel = await ctx.step("ship", ship, order)
    return f"{receipt} {parcel}"


# `flowctl export RUN_ID > docs/examples/runs/NAME.json` for each run worth keeping
RUNS = Path(__file__).parent / "runs"


@pytest.mark.parametrize("report", replay_folder(RUNS, [checkout]), ids=lambda r: r.source)
def test_recorded_runs_replay(report) -> None:
    report.check()  # AssertionError naming the recorded and the requested call on drift


# A refactoring that renames a step: runs in flight would fail on their next wake-up.
refactored = Engine()


@refactored.flow("checkout", input=Order, output=str)
async def checkout_renamed(ctx: FlowContext, order: Order) -> str:
    receipt = await ctx.step("charge-card", charge, order)
    await ctx.sleep("1d", label="cool-off")
    parcel = await ctx.step("ship", ship, order)
    return f"{receipt} {parcel}"


def test_a_renamed_step_is_drift() -> None:
    report = replay(checkout_renamed, RUNS / "checkout-sleeping.json")
    assert not report.ok and report.outcome == "drift"
    assert report.recorded["cursor_key"] == "charge"
    assert report.requested["cursor_key"] == "charge-card"
