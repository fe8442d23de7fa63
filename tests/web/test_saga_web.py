"""Sagas on the dashboard, on real PostgreSQL through Starlette's TestClient: cancel with
compensation (the typed ``canceling`` result, then ``canceled`` with its compensation record and
no Resume), a ``compensation_failed`` run (its status badge, which compensations ran and which
failed, escaped, and hidden in redact mode) retried from the run page."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest

from iterflow import Engine, FlowContext
from tests.web.actions_kit import (
    PREFIX,
    Approval,
    Controls,
    Kit,
    Order,
    dashboard_kit,
    forms_of,
    text_of,
)
from tests.web.test_actions import redirected, shown_result

#: A hostile error message: it must render as text.
HOSTILE = "<b>cannot unbook</b>"


def build_trip(url: str, controls: Controls) -> Engine:
    """``trip`` books (undone by ``unbook``), waits for ``approve``, then pays: the payment
    fails while its order id is declined, the undo while it is in ``undo_fails``."""
    engine = Engine(url, pool_size=6)

    def book(order_id: str) -> str:
        return f"bk_{order_id}"

    def unbook(booking: str) -> None:
        with controls.lock:
            if booking.removeprefix("bk_") in controls.undo_fails:
                raise RuntimeError(f"{HOSTILE} {booking}")

    def pay(order_id: str) -> str:
        with controls.lock:
            if order_id in controls.declined:
                raise RuntimeError(f"card declined for {order_id}")
        return f"paid_{order_id}"

    @engine.flow("trip", input=Order, output=str, signals={"approve": Approval})
    async def trip(ctx: FlowContext, order: Order) -> str:
        await ctx.step("book", book, order.order_id, compensate=unbook)
        await ctx.signal("approve", Approval, timeout="1h")
        return await ctx.step("pay", pay, order.order_id)

    return engine


@pytest.fixture
def kit(database_url: str) -> Iterator[Kit]:
    with dashboard_kit(database_url, build=build_trip) as kit:
        yield kit


def booked(kit: Kit, order_id: str) -> uuid.UUID:
    run_id = kit.start("trip", order_id)
    kit.reach(run_id, "awaiting_signal")
    return run_id


def outcome(kit: Kit, run_id: uuid.UUID) -> str:
    return text_of(kit.get(f"/runs/{run_id}"), "outcome")


def test_cancel_with_compensation_undoes_the_run_and_offers_no_resume(kit: Kit) -> None:
    run_id = booked(kit, "T-1")
    page = kit.get(f"/runs/{run_id}")
    (cancel,) = re.findall(r'<form\b[^>]*data-action="cancel".*?</form>', page.text, re.S)
    assert 'name="compensate" value="1"' in cancel

    answer = kit.post(f"/runs/{run_id}/cancel", {"reason": "trip called off", "compensate": "1"})
    redirected(answer, run_id, "cancel", "canceling")
    assert "cancel: canceling" in shown_result(kit, answer.headers["location"])
    kit.reach(run_id, "canceled")

    assert "compensations run: compensate:book" in outcome(kit, run_id)
    page = kit.get(f"/runs/{run_id}")
    assert not [f for f in forms_of(page) if 'data-action="resume"' in f]  # it was undone
    assert "cannot be resumed" in text_of(page, "no-resume")
    assert not [f for f in forms_of(page) if 'data-action="retry"' in f]
    # the engine agrees: resuming it is refused
    refused = kit.post(f"/runs/{run_id}/retry", {"resume": "1"})
    redirected(refused, run_id, "resume", "not_failed")


def test_a_plain_cancel_still_offers_resume(kit: Kit) -> None:
    run_id = booked(kit, "T-2")
    redirected(kit.post(f"/runs/{run_id}/cancel"), run_id, "cancel", "canceled")
    page = kit.get(f"/runs/{run_id}")
    assert [f for f in forms_of(page) if 'data-action="resume"' in f]
    assert 'data-testid="no-resume"' not in page.text


def test_a_failed_compensation_is_shown_escaped_and_retried_from_the_page(kit: Kit) -> None:
    kit.controls.declined.add("T-3")
    kit.controls.undo_fails.add("T-3")
    run_id = booked(kit, "T-3")
    kit.call(kit.engine.signal, run_id, "approve", {"approved_by": "ann"})
    kit.reach(run_id, "compensation_failed")

    page = kit.get(f"/runs/{run_id}")
    badge = re.search(r'<span class="status status-([\w-]+)" data-testid="run-status">', page.text)
    assert badge and badge.group(1) == "compensation_failed"
    assert ".status-compensation_failed" in kit.get("/static/app.css").text  # styled as failed
    shown = text_of(page, "outcome")
    assert "compensations run: none; compensate:book failed" in shown
    assert f"{HOSTILE} bk_T-3" in shown and "engine.retry resumes it" in shown
    assert HOSTILE not in page.text  # escaped: text, never markup
    (retry,) = [f for f in forms_of(page) if 'data-action="retry"' in f]
    assert f'action="{PREFIX}/runs/{run_id}/retry"' in retry
    assert "Resume the compensations from the one that failed" in page.text

    kit.controls.undo_fails.clear()  # the cause fixed: the retry resumes the compensation
    redirected(kit.post(f"/runs/{run_id}/retry"), run_id, "retry", "queued")
    kit.reach(run_id, "failed")  # with the payment's original error
    assert "compensations run: compensate:book" in outcome(kit, run_id)
    assert "failed" not in outcome(kit, run_id).split(";", 1)[1]


def test_redact_mode_hides_the_failed_compensations_message(database_url: str) -> None:
    with dashboard_kit(database_url, build=build_trip, redact=True) as kit:
        kit.controls.declined.add("T-4")
        kit.controls.undo_fails.add("T-4")
        run_id = booked(kit, "T-4")
        kit.call(kit.engine.signal, run_id, "approve", {"approved_by": "ann"})
        kit.reach(run_id, "compensation_failed")
        page = kit.get(f"/runs/{run_id}")
        shown = text_of(page, "outcome")
        assert "compensate:book failed ([STEP_FAILED] redacted)" in shown
        assert "cannot unbook" not in page.text


def test_bulk_cancel_with_compensation(kit: Kit) -> None:
    runs = [booked(kit, f"T-{i}") for i in (5, 6)]
    dry = kit.post("/bulk", {"action": "cancel", "flow": "trip"})
    assert text_of(dry, "bulk-count") == "2" and 'data-testid="bulk-compensate"' in dry.text
    confirmed = kit.post(
        "/bulk", {"action": "cancel", "flow": "trip", "confirm": "1", "compensate": "1"}
    )
    assert 'data-result="canceling">2<' in confirmed.text
    for run_id in runs:
        kit.reach(run_id, "canceled")
        assert "compensations run: compensate:book" in outcome(kit, run_id)
    resume_dry = kit.post("/bulk", {"action": "resume", "flow": "trip"})  # not cancel: no box
    assert text_of(resume_dry, "bulk-count") == "2"
    assert 'data-testid="bulk-compensate"' not in resume_dry.text
