"""Why is this run where it is: one human line, what would wake it, what the reconciler would do.

Pure: given the run row, the time and (optionally) whether a live worker serves the run's flow
version, :func:`explain` reads ``status``, ``waiting_for`` (parsed by :mod:`iterflow.core.keys`,
its one owner), ``wake_at`` and the lease. The dashboard shows it on every run page and
``flowctl explain`` prints it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from iterflow.core.keys import (
    Waiting,
    WaitKind,
    parse_cursor_key,
    parse_timer_key,
    parse_waiting_for,
)
from iterflow.core.limits import held_summary
from iterflow.core.models import RunRecord
from iterflow.core.states import RunStatus

__all__ = ["Explanation", "explain", "humanize"]


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why a run is where it is.

    ``state`` is a short stable code: ``queued``, ``running``, ``lease_expired``, ``sleeping``,
    ``waiting_signal``, ``waiting_child``, ``retry_wait``, ``recovering``, ``parked``,
    ``held`` (held back by a concurrency or rate limit), ``no_worker`` (a live run no live
    worker serves) or ``terminal``.
    """

    state: str
    #: One human line, e.g. ``waiting for signal approve since 2026-01-01T09:00:00+00:00``.
    summary: str
    #: When it wakes by itself (a timer, a signal's timeout, a retry backoff, a delayed start).
    wakes_at: datetime | None = None
    #: What would wake it (empty for a terminal run).
    wakes_on: str = ""
    #: What the reconciler would do about it now.
    reconciler: str = ""
    #: The error message behind the state (a parked run's drift, a failed run's error); a
    #: payload detail that a redacting reader hides.
    detail: str = ""


def humanize(delta: timedelta) -> str:
    """A duration as ``2d 3h``, ``5m 10s``, ``40s`` (two units at most; ``0s`` when negative)."""
    seconds = max(0, int(delta.total_seconds()))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
        if len(parts) == 2:
            break
    return " ".join(parts)


def _at(when: datetime, now: datetime) -> str:
    text = when.isoformat(timespec="seconds")
    if when >= now:
        return f"{text} (in {humanize(when - now)})"
    return f"{text} ({humanize(now - when)} ago)"


def _waiting(run: RunRecord) -> Waiting | None:
    if run.waiting_for is None:
        return None
    try:
        return parse_waiting_for(run.waiting_for)
    except ValueError:
        return None  # written by a newer version: say what the status says


def _timer_label(timer_key: str) -> str:
    """``sleep:cool-off`` -> ``cool-off``; a retry backoff's key -> its step's label."""
    owner = parse_timer_key(timer_key).owner
    try:
        key = parse_cursor_key(owner)
    except ValueError:
        return owner
    return key.label or owner


def explain(
    run: RunRecord,
    *,
    now: datetime,
    served: Callable[[str, int], bool] | None = None,
) -> Explanation:
    """Explain ``run`` at ``now``. ``served(name, version)`` says whether a live worker serves
    that flow version (None: unknown, nothing is said about workers)."""
    base = _explain(run, now)
    if run.is_terminal or served is None or served(run.name, run.version):
        return base
    return Explanation(
        state="no_worker",
        summary=f"no worker for this flow ({run.name}@{run.version}); {base.summary}",
        wakes_at=base.wakes_at,
        wakes_on=f"a worker that registers {run.name}@{run.version} starts; {base.wakes_on}",
        reconciler=base.reconciler,
        detail=base.detail,
    )


def _compensation(details: object) -> str:
    """What a saga's compensations did (the error's ``details.compensation`` record)."""
    record = details.get("compensation") if isinstance(details, dict) else None
    if not isinstance(record, dict):
        return ""
    done = ", ".join(str(key) for key in record.get("steps") or []) or "none"
    failed = record.get("failed")
    if not isinstance(failed, dict):
        return f"; compensations run: {done}"
    error = failed.get("error")
    error = error if isinstance(error, dict) else {}
    return (
        f"; compensations run: {done}; {failed.get('step')} failed "
        f"([{error.get('code')}] {error.get('message')}): engine.retry resumes it"
    )


def _held(run: RunRecord, now: datetime) -> Explanation:
    """A run a concurrency or rate limit holds back (:mod:`iterflow.core.limits`)."""
    held = run.held or {}
    key = str(held.get("key") or "")
    scope = f"flow {run.name}" + (f" key {key}" if key else "")
    since = str(held.get("since") or run.updated_at.isoformat(timespec="seconds"))
    if held.get("limit") == "rate":
        wakes_on = f"the rate window of {scope} frees"
        until = held.get("until")
        try:
            wakes_at = datetime.fromisoformat(until) if isinstance(until, str) else None
        except ValueError:  # written by another version
            wakes_at = None
    else:
        wakes_on = f"a live attempt of {scope} ends (first in line: highest priority, oldest)"
        wakes_at = None
    return Explanation(
        state="held",
        summary=f"{held_summary(run.name, held)} since {since}",
        wakes_at=wakes_at,
        wakes_on=wakes_on,
        reconciler=(
            "wakes the first held run of its flow and key if no attempt of that key is live "
            "and none is queued"
        ),
    )


def _explain(run: RunRecord, now: datetime) -> Explanation:
    if run.held is not None and not run.is_terminal and run.status is not RunStatus.RUNNING:
        return _held(run, now)
    status = run.status
    waiting = _waiting(run)
    since = run.updated_at.isoformat(timespec="seconds")
    error = run.error or {}
    code = str(error.get("code") or "")
    message = str(error.get("message") or "")
    rewake = "re-enqueues a wake-up if it is due and none is queued"

    if run.is_terminal:
        finished = run.finished_at or run.updated_at
        summary = f"{status.value} at {finished.isoformat(timespec='seconds')}"
        if status is not RunStatus.DONE and code:
            summary += f" ({code})"
        summary += _compensation(error.get("details"))
        return Explanation(
            state="terminal",
            summary=summary,
            reconciler="nothing: a terminal run never changes except through retry",
            detail=message,
        )

    if status is RunStatus.PENDING:
        if run.wake_at is not None and run.wake_at > now:
            return Explanation(
                state="queued",
                summary=f"queued, starts at {_at(run.wake_at, now)}",
                wakes_at=run.wake_at,
                wakes_on="its delayed wake-up job comes due",
                reconciler=rewake,
            )
        return Explanation(
            state="queued",
            summary=f"queued since {since}, waiting for a worker to claim it",
            wakes_on="a worker claims its wake-up job",
            reconciler=rewake,
        )

    if status is RunStatus.RUNNING:
        owner = run.lease_owner or "a worker"
        expires = run.lease_expires_at
        if expires is not None and expires < now:
            return Explanation(
                state="lease_expired",
                summary=f"running on {owner}, lease expired at {_at(expires, now)}",
                wakes_on="the reconciler's next sweep",
                reconciler="lease expired: resets the run to retrying and re-enqueues it",
            )
        until = "" if expires is None else f", lease until {_at(expires, now)}"
        return Explanation(
            state="running",
            summary=f"running on {owner}{until}",
            wakes_on="it is running",
            reconciler="nothing while the lease is live; if it expires, resets the run to "
            "retrying and re-enqueues it",
        )

    if status is RunStatus.PARKED:
        what = f"parked: {code or 'drift'}"
        return Explanation(
            state="parked",
            summary=f"{what} since {since}, waiting for compatible code to be deployed",
            wakes_on="a worker starts with code compatible with its history, or engine.retry",
            reconciler="nothing: parked runs wait for a deploy or a retry",
            detail=message,
        )

    if status is RunStatus.AWAITING_SIGNAL:
        name = waiting.ref if waiting is not None and waiting.kind is WaitKind.SIGNAL else "?"
        timeout = "" if run.wake_at is None else f" (times out at {_at(run.wake_at, now)})"
        wakes_on = f"signal {name!r} is delivered"
        if run.wake_at is not None:
            wakes_on += ", or its timeout comes due"
        return Explanation(
            state="waiting_signal",
            summary=f"waiting for signal {name} since {since}{timeout}",
            wakes_at=run.wake_at,
            wakes_on=wakes_on,
            reconciler="re-enqueues a wake-up if the signal is in the inbox or the timeout is "
            "due and none is queued",
        )

    if status is RunStatus.AWAITING_CHILD:
        child = waiting.ref if waiting is not None and waiting.kind is WaitKind.CHILD else "?"
        return Explanation(
            state="waiting_child",
            summary=f"waiting for child {child} since {since}",
            wakes_on=f"child run {child} finishes",
            reconciler="re-drives the parent once the child is terminal and no wake-up is queued",
        )

    if status is RunStatus.SLEEPING:
        label = (
            _timer_label(waiting.ref)
            if waiting is not None and waiting.kind is WaitKind.TIMER
            else "sleep"
        )
        due = "" if run.wake_at is None else f" until {_at(run.wake_at, now)}"
        return Explanation(
            state="sleeping",
            summary=f"sleeping{due} ({label})",
            wakes_at=run.wake_at,
            wakes_on="its timer comes due",
            reconciler=rewake,
        )

    # retrying: a step's backoff, a lease recovery or a storage outage
    due = "" if run.wake_at is None else f" at {_at(run.wake_at, now)}"
    kind = waiting.kind if waiting is not None else None
    if kind is WaitKind.RECOVERY:
        summary = f"recovered after its lease expired; resumes{due or ' when a worker claims it'}"
        state = "recovering"
    elif kind is WaitKind.STORAGE:
        summary = f"an attempt was aborted by a storage outage; retried{due}"
        state = "retry_wait"
    elif kind is WaitKind.TIMER and waiting is not None:
        summary = f"retrying step {_timer_label(waiting.ref)}{due}"
        state = "retry_wait"
    else:
        summary = f"retrying{due}"
        state = "retry_wait"
    return Explanation(
        state=state,
        summary=summary,
        wakes_at=run.wake_at,
        wakes_on="its retry comes due",
        reconciler=rewake,
    )
