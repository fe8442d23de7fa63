"""core.explain: the "why is it waiting" line for every status and waiting_for."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from iterflow.core.explain import explain, humanize
from iterflow.core.keys import (
    WAITING_DEPLOY,
    WAITING_RECOVERY,
    WAITING_STORAGE,
    retry_timer_key,
    waiting_for_child,
    waiting_for_signal,
    waiting_for_timer,
)
from iterflow.core.models import RunRecord, RunStatus
from tests.records import run_record

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SINCE = NOW - timedelta(hours=1)


def _run(status: RunStatus, **changes: Any) -> RunRecord:
    changes = {"created_at": SINCE - timedelta(minutes=5), "updated_at": SINCE, **changes}
    return run_record(status, **changes)


def test_signal_wait_names_the_signal_and_since_when() -> None:
    run = _run(RunStatus.AWAITING_SIGNAL, waiting_for=waiting_for_signal("approve"))
    why = explain(run, now=NOW)
    assert why.state == "waiting_signal"
    assert why.summary == f"waiting for signal approve since {SINCE.isoformat()}"
    assert why.wakes_at is None
    assert "approve" in why.wakes_on


def test_signal_wait_with_timeout_wakes_at_the_timeout() -> None:
    due = NOW + timedelta(minutes=30)
    run = _run(RunStatus.AWAITING_SIGNAL, waiting_for=waiting_for_signal("approve"), wake_at=due)
    why = explain(run, now=NOW)
    assert why.wakes_at == due
    assert "times out at" in why.summary and "in 30m" in why.summary


def test_sleep_says_until_when_and_its_label() -> None:
    due = NOW + timedelta(days=2, hours=3, minutes=4)
    run = _run(RunStatus.SLEEPING, waiting_for=waiting_for_timer("sleep:cool-off"), wake_at=due)
    why = explain(run, now=NOW)
    assert why.state == "sleeping"
    assert why.summary == f"sleeping until {due.isoformat()} (in 2d 3h) (cool-off)"
    assert why.wakes_at == due


def test_child_wait_names_the_child() -> None:
    child = uuid.uuid4()
    run = _run(RunStatus.AWAITING_CHILD, waiting_for=waiting_for_child(child))
    why = explain(run, now=NOW)
    assert why.state == "waiting_child"
    assert why.summary.startswith(f"waiting for child {child} since")
    assert "child is terminal" in why.reconciler


def test_running_names_the_lease_owner_and_expiry() -> None:
    expires = NOW + timedelta(seconds=40)
    run = _run(RunStatus.RUNNING, lease_owner="host-1:42", lease_expires_at=expires)
    why = explain(run, now=NOW)
    assert why.state == "running"
    assert why.summary == f"running on host-1:42, lease until {expires.isoformat()} (in 40s)"


def test_expired_lease_says_what_the_reconciler_does() -> None:
    expired = NOW - timedelta(seconds=90)
    run = _run(RunStatus.RUNNING, lease_owner="host-1:42", lease_expires_at=expired)
    why = explain(run, now=NOW)
    assert why.state == "lease_expired"
    assert "1m 30s ago" in why.summary
    assert "re-enqueues" in why.reconciler


def test_retry_backoff_names_the_step() -> None:
    due = NOW + timedelta(seconds=5)
    run = _run(
        RunStatus.RETRYING, waiting_for=waiting_for_timer(retry_timer_key("charge#1")), wake_at=due
    )
    why = explain(run, now=NOW)
    assert why.state == "retry_wait"
    assert why.summary == f"retrying step charge at {due.isoformat()} (in 5s)"


@pytest.mark.parametrize(
    ("waiting", "state", "words"),
    [
        (WAITING_RECOVERY, "recovering", "lease expired"),
        (WAITING_STORAGE, "retry_wait", "storage outage"),
    ],
)
def test_retrying_after_recovery_or_outage(waiting: str, state: str, words: str) -> None:
    why = explain(_run(RunStatus.RETRYING, waiting_for=waiting), now=NOW)
    assert (why.state, words in why.summary) == (state, True)


def test_parked_names_the_drift_and_keeps_the_message_apart() -> None:
    error = {"code": "REPLAY_NON_DETERMINISTIC", "message": "recorded step a, requested b"}
    run = _run(RunStatus.PARKED, waiting_for=WAITING_DEPLOY, error=error)
    why = explain(run, now=NOW)
    assert why.state == "parked"
    assert why.summary.startswith("parked: REPLAY_NON_DETERMINISTIC since")
    assert why.detail == "recorded step a, requested b"
    assert "recorded step" not in why.summary


def test_pending_due_and_delayed() -> None:
    assert explain(_run(RunStatus.PENDING), now=NOW).summary.startswith("queued since")
    later = NOW + timedelta(hours=2)
    delayed = explain(_run(RunStatus.PENDING, wake_at=later), now=NOW)
    assert (delayed.state, delayed.wakes_at) == ("queued", later)
    assert "starts at" in delayed.summary


def test_terminal_runs() -> None:
    done = explain(_run(RunStatus.DONE, finished_at=NOW), now=NOW)
    assert (done.state, done.summary) == ("terminal", f"done at {NOW.isoformat()}")
    failed = _run(RunStatus.FAILED, finished_at=NOW, error={"code": "STEP_FAILED", "message": "x"})
    why = explain(failed, now=NOW, served=lambda n, v: False)
    assert (why.state, why.summary) == ("terminal", f"failed at {NOW.isoformat()} (STEP_FAILED)")


def test_no_worker_serving_the_flow_version() -> None:
    run = _run(RunStatus.AWAITING_SIGNAL, waiting_for=waiting_for_signal("approve"))
    asked: list[tuple[str, int]] = []

    def served(name: str, version: int) -> bool:
        asked.append((name, version))
        return False

    why = explain(run, now=NOW, served=served)
    assert asked == [("order", 2)]
    assert why.state == "no_worker"
    assert why.summary.startswith("no worker for this flow (order@2); waiting for signal approve")
    assert explain(run, now=NOW, served=lambda n, v: True).state == "waiting_signal"


def test_unknown_waiting_for_from_a_newer_version_is_not_an_error() -> None:
    why = explain(_run(RunStatus.AWAITING_SIGNAL, waiting_for="quorum:7"), now=NOW)
    assert why.state == "waiting_signal"


def test_humanize() -> None:
    assert humanize(timedelta(seconds=0)) == "0s"
    assert humanize(timedelta(seconds=-5)) == "0s"
    assert humanize(timedelta(minutes=1, seconds=1)) == "1m 1s"
    assert humanize(timedelta(days=1, minutes=2)) == "1d 2m"
