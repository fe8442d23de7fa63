"""The dashboard's actions on real PostgreSQL through Starlette's TestClient: cancel (with its
cascade), retry, signal (generated form, validated before sending), start (generated form,
chosen version), bulk cancel/retry (dry run, then confirm), schedules pause/resume/trigger;
each shows the engine's typed result or the FlowError's code and message, escaped."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import BaseModel

from iterflow import Engine, FlowContext
from iterflow.core.errors import FlowUnknown, InputInvalid
from tests.web.actions_kit import (
    PREFIX,
    Controls,
    Kit,
    Order,
    dashboard_kit,
    forms_of,
    text_of,
)


@pytest.fixture
def kit(database_url: str) -> Iterator[Kit]:
    with dashboard_kit(database_url) as kit:
        yield kit


def waiting(kit: Kit, order_id: str = "A-1") -> uuid.UUID:
    run_id = kit.start("approval", order_id)
    kit.reach(run_id, "awaiting_signal")
    return run_id


def redirected(answer: Any, run_id: uuid.UUID | str, action: str, result: str) -> None:
    """A 303 to the run page carrying only the action and its typed result."""
    assert answer.status_code == 303, answer.text
    url = urlsplit(answer.headers["location"])
    assert url.path == f"{PREFIX}/runs/{run_id}"
    assert parse_qs(url.query) == {"action": [action], "result": [result]}


def shown_result(kit: Kit, location: str) -> str:
    page = kit.client.get(location)
    assert page.status_code == 200
    return text_of(page, "action-result")


def test_cancel_shows_the_cascade_and_the_typed_result(kit: Kit) -> None:
    parent = kit.start("parent", "P-1")
    kit.reach(parent, "awaiting_child")
    children: list[Any] = []

    def both_children() -> bool:
        children[:] = kit.call(kit.engine.list_runs, parent=parent).runs
        return len(children) == 2 and all(c.status == "awaiting_signal" for c in children)

    kit.until(both_children, "both children to wait for their signal")
    attached = next(c for c in children if not c.meta.get("detached"))
    detached = next(c for c in children if c.meta.get("detached"))

    page = kit.get(f"/runs/{parent}")
    cascade = re.search(
        r'<div data-testid="cancel-cascade" data-count="(\d+)">(.*?)</div>', page.text, re.S
    )
    assert cascade and cascade.group(1) == "1"
    assert f'<li data-run-id="{attached.id}">' in cascade.group(2)
    assert str(detached.id) not in cascade.group(2)

    answer = kit.post(f"/runs/{parent}/cancel", {"reason": "customer left"})
    redirected(answer, parent, "cancel", "canceled")
    assert "canceled" in shown_result(kit, answer.headers["location"])
    assert kit.status(parent) == "canceled"
    assert kit.status(attached.id) == "canceled"
    assert kit.status(detached.id) == "awaiting_signal"
    events = kit.call(kit.engine.status, parent).run.error
    assert events["message"] == "customer left"

    again = kit.post(f"/runs/{parent}/cancel")
    redirected(again, parent, "cancel", "already_terminal")
    assert "already_terminal" in shown_result(kit, again.headers["location"])
    missing = uuid.uuid4()
    redirected(kit.post(f"/runs/{missing}/cancel"), missing, "cancel", "not_found")


def test_a_terminal_run_offers_no_cancel_or_signal(kit: Kit) -> None:
    run_id = kit.start("charge", "C-1")
    kit.reach(run_id, "done")
    page = kit.get(f"/runs/{run_id}")
    assert forms_of(page) == []


def test_retry_a_failed_run_from_its_failed_step(kit: Kit) -> None:
    kit.controls.declined.add("C-bad")
    run_id = kit.start("charge", "C-bad")
    kit.reach(run_id, "failed")
    page = kit.get(f"/runs/{run_id}")
    assert [f for f in forms_of(page) if f'action="{PREFIX}/runs/{run_id}/retry"' in f]
    assert not [f for f in forms_of(page) if "/cancel" in f]

    with kit.controls.lock:
        kit.controls.declined.discard("C-bad")
    answer = kit.post(f"/runs/{run_id}/retry")
    redirected(answer, run_id, "retry", "queued")
    assert "queued" in shown_result(kit, answer.headers["location"])
    kit.reach(run_id, "done")
    assert kit.call(kit.engine.status, run_id).run.output == "ch_C-bad"

    done = kit.post(f"/runs/{run_id}/retry")
    redirected(done, run_id, "retry", "not_failed")


def test_signal_form_is_generated_from_the_declared_model(kit: Kit) -> None:
    run_id = waiting(kit)
    page = kit.get(f"/runs/{run_id}")
    form = re.search(r'<form[^>]*data-signal="approve"[^>]*>(.*?)</form>', page.text, re.S)
    assert form, page.text
    assert f'action="{PREFIX}/runs/{run_id}/signal/approve"' in form.group(0)
    assert re.search(r'<input type="text" name="approved_by" required', form.group(1))
    assert re.search(r'<input type="number" step="1" name="level" value="1"', form.group(1))
    assert 'name="csrf_token"' in form.group(1)

    answer = kit.post(f"/runs/{run_id}/signal/approve", {"approved_by": "alice", "level": "2"})
    redirected(answer, run_id, "signal", "delivered")
    assert "delivered" in shown_result(kit, answer.headers["location"])
    kit.reach(run_id, "done")
    assert kit.call(kit.engine.status, run_id).run.output == {
        "order_id": "A-1",
        "approved_by": "alice",
    }
    closed = kit.post(f"/runs/{run_id}/signal/approve", {"approved_by": "bob"})
    redirected(closed, run_id, "signal", "closed")


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"level": "2"}, "approved_by", "Field required"),
        ({"approved_by": "alice", "level": "high"}, "level", "valid integer"),
    ],
)
def test_an_invalid_signal_form_is_422_with_the_field_error_and_nothing_stored(
    kit: Kit, data: dict[str, str], field: str, message: str
) -> None:
    run_id = waiting(kit)
    answer = kit.post(f"/runs/{run_id}/signal/approve", data)
    assert answer.status_code == 422
    assert "INPUT_INVALID" in text_of(answer, "action-error")
    error = re.search(rf'data-field-error="{field}">([^<]*)<', answer.text)
    assert error and message in error.group(1)
    # the form comes back with what was typed
    for name, value in data.items():
        assert f'name="{name}"' in answer.text and f'value="{value}"' in answer.text
    assert kit.call(kit.engine.status, run_id).signals == ()
    assert kit.status(run_id) == "awaiting_signal"


def test_a_hostile_payload_is_refused_with_a_typed_error(kit: Kit) -> None:
    run_id = waiting(kit)
    answer = kit.post(f"/runs/{run_id}/signal/approve", {"approved_by": "a\x00b"})
    assert answer.status_code == 422
    assert "PAYLOAD_INVALID" in text_of(answer, "action-error")
    reason = kit.post(f"/runs/{run_id}/cancel", {"reason": "x\x00"})
    assert reason.status_code == 422 and "INPUT_INVALID" in text_of(reason, "action-error")
    assert kit.call(kit.engine.status, run_id).signals == ()
    assert kit.status(run_id) == "awaiting_signal"


def test_a_model_less_signal_takes_json(kit: Kit) -> None:
    parent = kit.start("parent", "P-1")
    kit.reach(parent, "awaiting_child")
    page = kit.get(f"/runs/{parent}")
    form = re.search(r'<form[^>]*data-signal="note"[^>]*>(.*?)</form>', page.text, re.S)
    assert form and 'name="payload_json"' in form.group(1)

    bad = kit.post(f"/runs/{parent}/signal/note", {"payload_json": "{oops"})
    assert bad.status_code == 422
    assert re.search(r'data-field-error="payload_json">not valid JSON', bad.text)
    answer = kit.post(f"/runs/{parent}/signal/note", {"payload_json": '{"text": "hi"}'})
    redirected(answer, parent, "signal", "buffered")
    (stored,) = kit.call(kit.engine.status, parent).signals
    assert stored.name == "note" and stored.payload == {"text": "hi"}

    unknown = kit.post(f"/runs/{parent}/signal/nope", {"payload_json": "{}"})
    assert unknown.status_code == 422 and "SIGNAL_UNKNOWN" in text_of(unknown, "action-error")


class ApprovalV2(BaseModel):
    approved_by: str
    ticket: str


def approval_v2_only(url: str, controls: Controls) -> Engine:
    """Another deploy: this process registers ``approval`` at version 2 only."""
    engine = Engine(url, pool_size=4)

    @engine.flow("approval", version=2, input=Order, output=str, signals={"approve": ApprovalV2})
    async def approval(ctx: FlowContext, order: Order) -> str:
        return (await ctx.signal("approve", ApprovalV2)).ticket

    return engine


def no_flows(url: str, controls: Controls) -> Engine:
    """A web tier registering no flow at all."""
    return Engine(url, pool_size=4)


def test_signal_forms_for_a_version_not_registered_here(database_url: str) -> None:
    with dashboard_kit(database_url) as kit:
        older, other = waiting(kit, "A-1"), waiting(kit, "A-2")

    # the run's version is not registered: the newest registered version's model
    with dashboard_kit(database_url, build=approval_v2_only, worker=False) as later:
        page = later.get(f"/runs/{older}")
        form = re.search(r'<form[^>]*data-signal="approve"[^>]*>(.*?)</form>', page.text, re.S)
        assert form and 'name="ticket"' in form.group(1)
        bad = later.post(f"/runs/{older}/signal/approve", {"approved_by": "ann"})
        assert bad.status_code == 422 and 'data-field-error="ticket"' in bad.text
        assert later.call(later.engine.status, older).signals == ()
        answer = later.post(f"/runs/{older}/signal/approve", {"approved_by": "ann", "ticket": "T"})
        redirected(answer, older, "signal", "delivered")

    # no version registered at all: a JSON form naming the signal
    with dashboard_kit(database_url, build=no_flows, worker=False) as bare:
        page = bare.get(f"/runs/{other}")
        form = re.search(r'<form[^>]*data-signal=""[^>]*>(.*?)</form>', page.text, re.S)
        assert form and 'name="signal"' in form.group(1) and 'name="payload_json"' in form.group(1)
        assert f'action="{PREFIX}/runs/{other}/signal"' in form.group(0)
        answer = bare.post(
            f"/runs/{other}/signal",
            {"signal": "approve", "payload_json": '{"approved_by": "bob"}'},
        )
        redirected(answer, other, "signal", "delivered")
        (stored,) = bare.call(bare.engine.status, other).signals
        assert stored.payload == {"approved_by": "bob"}


def test_start_form_is_generated_from_the_input_model(kit: Kit) -> None:
    page = kit.get("/start/approval")
    form = re.search(r'<form[^>]*id="start-form"[^>]*>(.*?)</form>', page.text, re.S)
    assert form, page.text
    assert re.search(r'<input type="text" name="order_id" required', form.group(1))
    assert 'name="_version" value="1"' in form.group(1)

    bad = kit.post("/start/approval", {"amount_cents": "12", "_version": "1"})
    assert bad.status_code == 422
    assert "INPUT_INVALID" in text_of(bad, "action-error")
    assert re.search(r'data-field-error="order_id">Field required', bad.text)
    assert kit.call(kit.engine.count_runs) == {}

    answer = kit.post("/start/approval", {"order_id": "S-1", "_version": "1", "_key": "k-1"})
    assert answer.status_code == 303
    url = urlsplit(answer.headers["location"])
    run_id = url.path.rsplit("/", 1)[1]
    assert parse_qs(url.query) == {"action": ["start"], "result": ["created"]}
    run = kit.call(kit.engine.status, run_id).run
    assert run.input == {"order_id": "S-1", "amount_cents": 0} and run.idempotency_key == "k-1"

    again = kit.post("/start/approval", {"order_id": "S-1", "_version": "1", "_key": "k-1"})
    redirected(again, run_id, "start", "existing")
    assert "existing" in shown_result(kit, again.headers["location"])

    index = kit.get("/start")
    assert f'href="{PREFIX}/start/approval"' in index.text and 'data-flow="charge"' in index.text
    unknown = kit.get("/start/nope")
    assert unknown.status_code == 503 and "FLOW_UNKNOWN" in text_of(unknown, "action-error")


def test_start_a_chosen_version(kit: Kit) -> None:
    class Big(BaseModel):
        order_id: str
        priority: str

    @kit.engine.flow("approval", version=2, input=Big, output=str)
    async def approval_v2(ctx: FlowContext, order: Big) -> str:
        return order.priority

    newest = kit.get("/start/approval")
    assert 'name="priority"' in newest.text and 'name="_version" value="2"' in newest.text
    assert 'data-version="1"' in newest.text and 'data-version="2"' in newest.text
    first = kit.get("/start/approval", params={"version": "1"})
    assert 'name="priority"' not in first.text and 'name="_version" value="1"' in first.text

    answer = kit.post("/start/approval", {"order_id": "V-1", "_version": "1", "_tags": "a, b"})
    assert answer.status_code == 303
    run_id = urlsplit(answer.headers["location"]).path.rsplit("/", 1)[1]
    run = kit.call(kit.engine.status, run_id).run
    assert run.version == 1 and run.tags == ("a", "b")
    assert kit.get("/start/approval", params={"version": "9"}).status_code == 503
    with pytest.raises(FlowUnknown):  # the engine's own check of a chosen version
        kit.call(kit.engine.start, "approval", {"order_id": "V-2"}, version=9)
    with pytest.raises(InputInvalid):
        kit.call(kit.engine.start, "approval", {"order_id": "V-2"}, version="1")


def test_bulk_cancel_counts_in_a_dry_run_then_acts_on_confirmation(kit: Kit) -> None:
    waiting_ids = [waiting(kit, f"A-{i}") for i in range(3)]
    done = kit.start("charge", "C-1")
    kit.reach(done, "done")

    listing = kit.get("/", params={"flow": "approval"})
    bulk = re.search(r'<form[^>]*id="bulk"[^>]*>(.*?)</form>', listing.text, re.S)
    assert bulk and '<input type="hidden" name="flow" value="approval">' in bulk.group(1)

    dry = kit.post("/bulk", {"action": "cancel", "flow": "approval"})
    assert dry.status_code == 200
    assert text_of(dry, "bulk-count") == "3"
    assert 'id="bulk-confirm"' in dry.text and 'name="confirm" value="1"' in dry.text
    assert all(kit.status(r) == "awaiting_signal" for r in waiting_ids)  # a dry run acts not

    everything = kit.post("/bulk", {"action": "cancel"})
    assert text_of(everything, "bulk-count") == "3"  # only live runs can be canceled

    confirmed = kit.post("/bulk", {"action": "cancel", "flow": "approval", "confirm": "1"})
    assert confirmed.status_code == 200
    assert 'data-result="canceled">3<' in confirmed.text
    assert text_of(confirmed, "bulk-total") == "3"
    assert all(kit.status(r) == "canceled" for r in waiting_ids)
    assert kit.status(done) == "done"

    none_left = kit.post("/bulk", {"action": "cancel", "flow": "approval"})
    assert text_of(none_left, "bulk-count") == "0" and 'id="bulk-confirm"' not in none_left.text


def test_bulk_resume_brings_canceled_runs_back_where_they_stopped(kit: Kit) -> None:
    waiting_ids = [waiting(kit, f"R-{i}") for i in range(2)]
    assert 'name="action" value="resume"' in kit.get("/").text
    kit.post("/bulk", {"action": "cancel", "flow": "approval", "confirm": "1"})
    assert all(kit.status(r) == "canceled" for r in waiting_ids)
    dry = kit.post("/bulk", {"action": "resume", "flow": "approval"})
    assert text_of(dry, "bulk-count") == "2" and "status: canceled" in dry.text
    confirmed = kit.post("/bulk", {"action": "resume", "flow": "approval", "confirm": "1"})
    assert 'data-result="queued">2<' in confirmed.text
    for run_id in waiting_ids:
        kit.reach(run_id, "awaiting_signal")  # the same wait as before the cancel


def test_bulk_retry_with_a_status_filter(kit: Kit) -> None:
    kit.controls.declined.update({"C-1", "C-2"})
    failed = [kit.start("charge", "C-1"), kit.start("charge", "C-2")]
    for run_id in failed:
        kit.reach(run_id, "failed")
    waiting(kit)
    dry = kit.post("/bulk", [("action", "retry"), ("status", "failed"), ("status", "done")])
    assert text_of(dry, "bulk-count") == "2"
    assert dry.text.count('name="status"') == 2  # the filter rides along to the confirmation
    with kit.controls.lock:
        kit.controls.declined.clear()
    confirmed = kit.post(
        "/bulk", [("action", "retry"), ("status", "failed"), ("status", "done"), ("confirm", "1")]
    )
    assert 'data-result="queued">2<' in confirmed.text
    for run_id in failed:
        kit.reach(run_id, "done")


def test_bulk_refuses_bad_filters_and_actions(kit: Kit) -> None:
    assert kit.post("/bulk", {"action": "delete"}).status_code == 422
    bad_status = kit.post("/bulk", {"action": "cancel", "status": "<b>nope</b>"})
    assert bad_status.status_code == 422
    assert "&lt;b&gt;nope&lt;/b&gt;" in bad_status.text and "<b>nope</b>" not in bad_status.text
    bad_time = kit.post("/bulk", {"action": "cancel", "created_after": "yesterday"})
    assert bad_time.status_code == 422 and "INPUT_INVALID" in text_of(bad_time, "action-error")


def test_schedule_pause_resume_trigger(kit: Kit) -> None:
    charge = kit.engine.registry.latest("charge")
    assert charge is not None
    from iterflow import FlowHandle

    kit.call(
        kit.engine.schedule,
        FlowHandle(kit.engine, charge),
        cron="0 3 * * *",
        id="nightly",
        input={"order_id": "N-1"},
    )
    paused = kit.post("/schedules/nightly/pause")
    assert paused.status_code == 200 and text_of(paused, "action-result") == "pause: paused"
    assert kit.call(kit.engine.get_schedule, "nightly").paused
    resumed = kit.post("/schedules/nightly/resume")
    assert text_of(resumed, "action-result") == "resume: resumed"
    assert not kit.call(kit.engine.get_schedule, "nightly").paused

    triggered = kit.post("/schedules/nightly/trigger")
    assert triggered.status_code == 303
    url = urlsplit(triggered.headers["location"])
    assert parse_qs(url.query) == {"action": ["trigger"], "result": ["created"]}
    kit.reach(uuid.UUID(url.path.rsplit("/", 1)[1]), "done")

    missing = kit.post("/schedules/<i>gone/pause")
    assert missing.status_code == 404
    assert "SCHEDULE_NOT_FOUND" in text_of(missing, "action-error")
    assert "<i>" not in missing.text and "&lt;i&gt;gone" in missing.text
    assert kit.post("/schedules/nightly/explode").status_code == 404


def test_hostile_values_are_escaped_in_results_and_errors(kit: Kit) -> None:
    run_id = waiting(kit)
    hostile = '"><img src=x onerror=alert(1)>'
    unknown = kit.post(f"/runs/{run_id}/signal/{hostile}", {"payload_json": "{}"})
    assert unknown.status_code == 422
    assert "<img" not in unknown.text and "&lt;img src=x onerror=alert(1)&gt;" in unknown.text

    # a forged result in the query string is ignored, not echoed
    forged = kit.get(f"/runs/{run_id}", params={"action": "cancel", "result": hostile})
    assert 'data-testid="action-result"' not in forged.text and "<img" not in forged.text

    answer = kit.post("/start/approval", {"order_id": hostile, "_key": hostile, "_version": "1"})
    assert answer.status_code == 303
    started = kit.client.get(answer.headers["location"])
    assert "<img" not in started.text

    bad_id = kit.post(f"/runs/{hostile}/cancel")
    assert bad_id.status_code == 422 and "<img" not in bad_id.text


def test_resume_a_canceled_run_where_it_stopped(kit: Kit) -> None:
    run_id = waiting(kit, "R-1")
    redirected(kit.post(f"/runs/{run_id}/cancel"), run_id, "cancel", "canceled")
    page = kit.get(f"/runs/{run_id}")
    (resume,) = [f for f in forms_of(page) if 'data-action="resume"' in f]
    assert f'action="{PREFIX}/runs/{run_id}/retry"' in resume
    assert not [f for f in forms_of(page) if 'data-action="retry"' in f]  # not failed

    answer = kit.post(f"/runs/{run_id}/retry", {"resume": "1"})
    redirected(answer, run_id, "resume", "queued")
    assert "resume: queued" in shown_result(kit, answer.headers["location"])
    kit.reach(run_id, "awaiting_signal")  # where it stopped: the same wait
    redirected(
        kit.post(f"/runs/{run_id}/signal/approve", {"approved_by": "ann"}),
        run_id,
        "signal",
        "delivered",
    )
    kit.reach(run_id, "done")
    redirected(kit.post(f"/runs/{run_id}/retry", {"resume": "1"}), run_id, "resume", "not_failed")
    assert not [f for f in forms_of(kit.get(f"/runs/{run_id}")) if "resume" in f]


def test_the_signal_form_says_the_run_waits_only_for_the_signal_it_waits_for(kit: Kit) -> None:
    run_id = waiting(kit)
    page = kit.get(f"/runs/{run_id}")
    legend = re.search(r'data-signal="approve".*?<legend>(.*?)</legend>', page.text, re.S)
    assert legend and "(the run waits for it)" in legend.group(1)
    help_text = text_of(page, "signal-help")
    assert "checked against the signal's declared model" in help_text
    assert "resumes as soon as it is delivered" in help_text

    parent = kit.start("parent", "P-2")  # declares ``note`` but waits for its children
    kit.reach(parent, "awaiting_child")
    page = kit.get(f"/runs/{parent}")
    legend = re.search(r'data-signal="note".*?<legend>(.*?)</legend>', page.text, re.S)
    assert legend and "waits for it" not in legend.group(1)
    assert "kept in the run's inbox (buffered)" in text_of(page, "signal-help")


def test_the_runs_list_links_to_the_start_form_only_for_who_may_start(database_url: str) -> None:
    with dashboard_kit(database_url) as kit:
        link = re.search(
            r'<a class="start-link" data-testid="start-link" href="([^"]+)"', kit.get("/").text
        )
        assert link and link.group(1) == f"{PREFIX}/start"
        assert "read-only-note" not in kit.get("/start").text

    def no_start(request: Any, action: str) -> bool:
        return action != "start"

    with dashboard_kit(database_url, authorize=no_start) as kit:
        assert 'data-testid="start-link"' not in kit.get("/").text
        assert 'data-testid="read-only-note"' in kit.get("/start").text
    with dashboard_kit(database_url, authorize=None) as kit:
        assert 'data-testid="start-link"' not in kit.get("/").text
