"""A saga: book a flight, then a hotel, then charge the card, each step with its compensation.
When the charge fails for good, the hotel and then the flight are cancelled (in reverse order,
each a durable step with its own retries) and the run ends ``failed`` with the charge's error
and a ``compensation`` record. A run canceled with ``compensate=True`` is undone the same way."""

from pydantic import BaseModel

from iterflow import Engine, FlowContext, FlowError


class Trip(BaseModel):
    city: str
    card: str


class Confirm(BaseModel):
    ok: bool


CANCELLED: list[str] = []  # what the compensations undid, in order


async def book_flight(trip: Trip) -> str:
    return f"FL-{trip.city}"


async def book_hotel(trip: Trip) -> str:
    return f"HO-{trip.city}"


async def charge(trip: Trip) -> str:
    if trip.card == "expired":
        raise ValueError("card expired")
    return f"CH-{trip.card}"


async def cancel_booking(booking: str) -> None:  # receives what the step returned
    CANCELLED.append(booking)


engine = Engine.in_memory()


@engine.flow("book_trip", input=Trip, output=str, signals={"confirm": Confirm})
async def book_trip(ctx: FlowContext, trip: Trip) -> str:
    await ctx.step("flight", book_flight, trip, compensate=cancel_booking)
    await ctx.step("hotel", book_hotel, trip, compensate=cancel_booking, retries=3)
    await ctx.signal("confirm", Confirm)
    return await ctx.step("charge", charge, trip)


async def main() -> tuple[list[str], dict[str, object], str]:
    async with engine:
        run = await book_trip.start(Trip(city="Oslo", card="expired"))
        await engine.drain()
        await engine.signal(run.run_id, "confirm", Confirm(ok=True))
        await engine.drain()  # the charge fails, then the hotel and the flight are undone
        try:
            await book_trip.result(run.run_id, timeout=1)
            record: dict[str, object] = {}
        except FlowError as err:  # the original error (STEP_FAILED), with the record
            record = err.details["compensation"]
            # {'status': 'compensated', 'steps': ['compensate:hotel', 'compensate:flight']}

        # An operator cancels a trip waiting for confirmation: its bookings are undone too.
        waiting = await book_trip.start(Trip(city="Rome", card="4242"))
        await engine.drain()
        await engine.cancel(waiting.run_id, reason="customer left", compensate=True)
        await engine.drain()
        canceled = (await engine.status(waiting.run_id)).run.status  # canceled
        return CANCELLED, record, canceled.value
