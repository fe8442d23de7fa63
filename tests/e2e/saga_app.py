"""A worker app for the saga e2e test: three bookings, each with a compensation, then a payment
that fails (``trip``), or a wait for a signal that never comes (``held-trip``, canceled with
``compensate=True`` from outside).

Every booking and compensation appends ``<what> <pid>`` to a log file; the compensation of
``hotel`` blocks until a release file exists, so the test can SIGKILL the worker running it
with the compensation of ``car`` checkpointed. Run with ``flowctl worker saga_app:engine``
(``PYTHONPATH`` = this folder).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pydantic import BaseModel

from iterflow import Engine, FlowContext

engine = Engine(lease_seconds=2.0, reconcile_every_seconds=1, worker_poll_interval=0.2)

#: The bookings, in call order; their compensations run in reverse.
BOOKINGS = ("flight", "hotel", "car")


class Trip(BaseModel):
    log: str
    release: str


class Confirm(BaseModel):
    ok: bool


def _mark(trip: Trip, what: str) -> None:
    with Path(trip.log).open("a") as f:  # one small O_APPEND write: lines never interleave
        f.write(f"{what} {os.getpid()}\n")


async def _book_all(ctx: FlowContext, trip: Trip) -> None:
    async def book(what: str) -> str:
        _mark(trip, f"book:{what}")
        return what

    async def undo(booking: str) -> None:
        _mark(trip, f"undo:{booking}")
        if booking == "hotel":
            while not Path(trip.release).exists():
                await asyncio.sleep(0.05)

    for what in BOOKINGS:
        await ctx.step(what, book, what, compensate=undo)


@engine.flow("trip", input=Trip, output=str)
async def trip(ctx: FlowContext, t: Trip) -> str:
    await _book_all(ctx, t)

    def pay() -> str:
        raise ValueError("card declined")

    return await ctx.step("pay", pay)


@engine.flow("held-trip", input=Trip, output=str, signals={"confirm": Confirm})
async def held_trip(ctx: FlowContext, t: Trip) -> str:
    await _book_all(ctx, t)
    await ctx.signal("confirm", Confirm)
    return "confirmed"
