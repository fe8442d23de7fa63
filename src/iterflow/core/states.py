"""The vocabulary of a run's life: statuses, the sets the engine reasons with, and event types.

Everything that spells a status or an event type reads it from here: the stores when they write,
the SQL statements and CHECK constraints of ``store/`` (generated from these enums and sets, in
declaration order), and the readers of a run's timeline. Event payloads are small frozen records,
one per :class:`EventType`, whose :meth:`~EventPayload.to_data` is exactly the JSON stored in
``events.data``; :func:`payload_of` reads one back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Literal, TypeVar

__all__ = [
    "LIVE_STATUSES",
    "RESUMABLE_STATUSES",
    "RETRYABLE_STATUSES",
    "TERMINAL_STATUSES",
    "TIMED_STATUSES",
    "WAITING_STATUSES",
    "CancelRequested",
    "Canceled",
    "CompensationFailed",
    "Completed",
    "EventPayload",
    "EventType",
    "Failed",
    "Forked",
    "Parked",
    "Recovered",
    "Resumed",
    "Retried",
    "Rewoken",
    "RunStatus",
    "SignalReceived",
    "Started",
    "StepKind",
    "StepStatus",
    "Suspended",
    "Unparked",
    "finished_event",
    "ordered",
    "payload_of",
]


class RunStatus(StrEnum):
    """Lifecycle of a run. ``done``, ``failed``, ``canceled`` and ``compensation_failed`` are
    terminal; ``compensation_failed`` (a saga's compensation failed for good) is the one besides
    ``failed`` that ``engine.retry`` resumes."""

    PENDING = "pending"
    RUNNING = "running"
    SLEEPING = "sleeping"
    AWAITING_SIGNAL = "awaiting_signal"
    AWAITING_CHILD = "awaiting_child"
    RETRYING = "retrying"
    PARKED = "parked"
    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"
    COMPENSATION_FAILED = "compensation_failed"


class StepStatus(StrEnum):
    """Outcome recorded for one cursor key."""

    OK = "ok"
    FAILED = "failed"
    RETRYING = "retrying"


class StepKind(StrEnum):
    """What kind of ``ctx`` call produced a memo row."""

    STEP = "step"
    SLEEP = "sleep"
    SIGNAL = "signal"
    INVOKE = "invoke"
    NOW = "now"
    UUID = "uuid"
    RANDOM = "random"
    PATCH = "patch"
    #: A compensation (``ctx.step(..., compensate=)``), run after the run failed or was
    #: canceled with ``compensate=True``; its label is the compensated step's cursor key.
    COMPENSATE = "compensate"


#: A run in one of these never changes status again, except through ``retry``.
TERMINAL_STATUSES: frozenset[RunStatus] = frozenset(
    {RunStatus.DONE, RunStatus.FAILED, RunStatus.CANCELED, RunStatus.COMPENSATION_FAILED}
)
#: The terminal statuses ``engine.retry`` replays (from the failed step, or the failed
#: compensation).
RETRYABLE_STATUSES: frozenset[RunStatus] = frozenset(
    {RunStatus.FAILED, RunStatus.COMPENSATION_FAILED}
)
#: Not terminal: the run still has something to do (or waits for a deploy, ``parked``).
LIVE_STATUSES: frozenset[RunStatus] = frozenset(RunStatus) - TERMINAL_STATUSES
#: An attempt suspended the run until a due time, a signal or a child: no lease is held and
#: the run waits for a wake-up (``SuspendPlan.status`` is one of these).
WAITING_STATUSES: frozenset[RunStatus] = frozenset(
    {RunStatus.SLEEPING, RunStatus.AWAITING_SIGNAL, RunStatus.AWAITING_CHILD, RunStatus.RETRYING}
)
#: The waiting statuses a due timer wakes: a sleep, a signal's timeout, a retry's backoff.
TIMED_STATUSES: frozenset[RunStatus] = frozenset(
    {RunStatus.SLEEPING, RunStatus.AWAITING_SIGNAL, RunStatus.RETRYING}
)
#: Statuses a wake-up may claim (``running`` only once its lease has expired).
RESUMABLE_STATUSES: frozenset[RunStatus] = WAITING_STATUSES | {RunStatus.PENDING}

_E = TypeVar("_E", bound=StrEnum)


def ordered(members: Iterable[_E]) -> tuple[_E, ...]:
    """``members`` in their enum's declaration order (a stable spelling for generated SQL)."""
    chosen = set(members)
    if not chosen:
        return ()
    enum = type(next(iter(chosen)))
    return tuple(m for m in enum if m in chosen)


class EventType(StrEnum):
    """The ``type`` of an ``events`` row: one run-level transition of the timeline."""

    STARTED = "started"
    SUSPENDED = "suspended"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    PARKED = "parked"
    UNPARKED = "unparked"
    RETRIED = "retried"
    RECOVERED = "recovered"
    REWOKEN = "rewoken"
    SIGNAL_RECEIVED = "signal_received"
    RESUMED = "resumed"
    FORKED = "forked"
    CANCEL_REQUESTED = "cancel_requested"
    COMPENSATION_FAILED = "compensation_failed"


class EventPayload:
    """Base of the typed payloads: ``type`` is the event's type, ``to_data()`` its stored JSON."""

    __slots__ = ()
    type: ClassVar[EventType]

    def to_data(self) -> dict[str, Any] | None:
        """The JSON object stored in ``events.data`` (None for an event without data)."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Started(EventPayload):
    """A run was created. A top-level start stores ``{"version", "delayed_until"}`` (an ISO
    8601 time, or null; on PostgreSQL the start statement fills it from the database clock);
    a child run stores ``{"version", "parent"}`` (the parent run's id) instead."""

    type: ClassVar[EventType] = EventType.STARTED
    version: int
    delayed_until: str | None = None
    parent: str | None = None

    def to_data(self) -> dict[str, Any]:
        if self.parent is not None:
            return {"version": self.version, "parent": self.parent}
        return {"version": self.version, "delayed_until": self.delayed_until}


@dataclass(frozen=True, slots=True)
class Suspended(EventPayload):
    """An attempt ended waiting (the event's ``cursor_key`` is the call it waits on):
    ``{"reason", "wake_at"}`` (ISO 8601, or null when only a signal or a child wakes it)."""

    type: ClassVar[EventType] = EventType.SUSPENDED
    reason: str
    wake_at: str | None

    def to_data(self) -> dict[str, Any]:
        return {"reason": self.reason, "wake_at": self.wake_at}


@dataclass(frozen=True, slots=True)
class Completed(EventPayload):
    """The run finished ``done``: no data (``null``)."""

    type: ClassVar[EventType] = EventType.COMPLETED

    def to_data(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Failed(EventPayload):
    """The run finished ``failed``: ``{"code"}`` (the error's code), plus ``"compensation"``
    (the error's ``details.compensation`` record) when its compensations ran."""

    type: ClassVar[EventType] = EventType.FAILED
    code: str | None
    compensation: Mapping[str, Any] | None = None

    def to_data(self) -> dict[str, Any]:
        return _with_compensation({"code": self.code}, self.compensation)


@dataclass(frozen=True, slots=True)
class Canceled(EventPayload):
    """The run was canceled: ``{"reason", "root"}`` (the run whose cancel reached this one),
    plus ``"compensation"`` when a ``cancel(compensate=True)`` ran its compensations."""

    type: ClassVar[EventType] = EventType.CANCELED
    reason: str
    root: str
    compensation: Mapping[str, Any] | None = None

    def to_data(self) -> dict[str, Any]:
        return _with_compensation({"reason": self.reason, "root": self.root}, self.compensation)


@dataclass(frozen=True, slots=True)
class CancelRequested(EventPayload):
    """``engine.cancel(run_id, compensate=True)`` reached a live run: ``{"reason"}``. The run is
    set ``pending``; its next attempt replays the body up to where it stopped, runs the
    compensations of its completed steps and ends ``canceled`` (or ``compensation_failed``)."""

    type: ClassVar[EventType] = EventType.CANCEL_REQUESTED
    reason: str

    def to_data(self) -> dict[str, Any]:
        return {"reason": self.reason}


@dataclass(frozen=True, slots=True)
class CompensationFailed(EventPayload):
    """A compensation failed for good; the run finished ``compensation_failed``:
    ``{"code", "compensation"}`` — the original error's code and the compensation record (which
    compensations ran, which one failed and its error)."""

    type: ClassVar[EventType] = EventType.COMPENSATION_FAILED
    code: str | None
    compensation: Mapping[str, Any] | None

    def to_data(self) -> dict[str, Any]:
        return {"code": self.code, "compensation": _plain(self.compensation)}


def _plain(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if value is None else dict(value)


def _with_compensation(
    data: dict[str, Any], compensation: Mapping[str, Any] | None
) -> dict[str, Any]:
    if compensation is not None:
        data["compensation"] = dict(compensation)
    return data


@dataclass(frozen=True, slots=True)
class Parked(EventPayload):
    """The run was parked until a deploy: ``{"code", "message"}`` of the error that parked it."""

    type: ClassVar[EventType] = EventType.PARKED
    code: str | None
    message: str | None

    def to_data(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class Unparked(EventPayload):
    """A parked run was set pending again: ``{"reason"}``, ``retry`` (``engine.retry``) or
    ``worker_start`` (a worker started with the flow's code)."""

    type: ClassVar[EventType] = EventType.UNPARKED
    reason: Literal["retry", "worker_start"]

    def to_data(self) -> dict[str, Any]:
        return {"reason": self.reason}


@dataclass(frozen=True, slots=True)
class Retried(EventPayload):
    """A failed run was reset to replay from position ``from`` (its failed step): ``{"from"}``."""

    type: ClassVar[EventType] = EventType.RETRIED
    from_position: int

    def to_data(self) -> dict[str, Any]:
        return {"from": self.from_position}


@dataclass(frozen=True, slots=True)
class Recovered(EventPayload):
    """The reconciler reset a run whose lease expired: ``{"reason": "lease_expired"}``."""

    type: ClassVar[EventType] = EventType.RECOVERED
    reason: Literal["lease_expired"] = "lease_expired"

    def to_data(self) -> dict[str, Any]:
        return {"reason": self.reason}


@dataclass(frozen=True, slots=True)
class Rewoken(EventPayload):
    """The reconciler queued a wake-up a live run lacked: ``{"reason": "no pending wake-up"}``."""

    type: ClassVar[EventType] = EventType.REWOKEN
    reason: Literal["no pending wake-up"] = "no pending wake-up"

    def to_data(self) -> dict[str, Any]:
        return {"reason": self.reason}


@dataclass(frozen=True, slots=True)
class SignalReceived(EventPayload):
    """A signal was stored in the run's inbox: ``{"name", "signal_id", "waiting"}``, where
    ``waiting`` says the run was waiting for it (``delivered``) rather than buffering it."""

    type: ClassVar[EventType] = EventType.SIGNAL_RECEIVED
    name: str
    signal_id: int
    waiting: bool

    def to_data(self) -> dict[str, Any]:
        return {"name": self.name, "signal_id": self.signal_id, "waiting": self.waiting}


@dataclass(frozen=True, slots=True)
class Resumed(EventPayload):
    """A canceled run was set pending again (``engine.retry(run_id, resume=True)``), with its
    whole history kept: ``{"children"}``, how many canceled children were resumed with it."""

    type: ClassVar[EventType] = EventType.RESUMED
    children: int

    def to_data(self) -> dict[str, Any]:
        return {"children": self.children}


@dataclass(frozen=True, slots=True)
class Forked(EventPayload):
    """The run was created by ``engine.fork``, the first event after ``started``:
    ``{"source", "from_step", "from"}`` — the source run's id, the cursor key the fork replays
    from (null: the source's retry cut) and its position; the memo rows before it were copied."""

    type: ClassVar[EventType] = EventType.FORKED
    source: str
    from_step: str | None
    from_position: int

    def to_data(self) -> dict[str, Any]:
        return {"source": self.source, "from_step": self.from_step, "from": self.from_position}


def finished_event(
    status: RunStatus, error: Mapping[str, Any] | None, run_id: str = ""
) -> Completed | Failed | Canceled | CompensationFailed:
    """The event of a run's terminal write by its attempt: ``done``, ``failed``, or, after its
    compensations ran, ``canceled`` (a ``cancel(compensate=True)``; ``run_id`` is its root) or
    ``compensation_failed``. Those two carry the compensation record in the error's
    ``details.compensation``: ``ValueError`` without it (a plain cancel is written by
    ``cancel``, with its own payload), and for any other status."""
    err: Mapping[str, Any] = error or {}
    details = err.get("details")
    comp = details.get("compensation") if isinstance(details, Mapping) else None
    compensation = comp if isinstance(comp, Mapping) else None
    if status is RunStatus.DONE:
        return Completed()
    if status is RunStatus.FAILED:
        return Failed(code=err.get("code"), compensation=compensation)
    if compensation is not None and status is RunStatus.CANCELED:
        return Canceled(str(err.get("message", "canceled")), run_id, compensation)
    if compensation is not None and status is RunStatus.COMPENSATION_FAILED:
        return CompensationFailed(code=err.get("code"), compensation=compensation)
    raise ValueError(
        f"an attempt finishes a run done or failed, or canceled or compensation_failed with a "
        f"compensation record (a plain cancel is cancel()'s to write), not {status.value}"
    )


def payload_of(type_: str, data: Any) -> EventPayload | None:
    """The typed payload of a stored event (None for a type or shape this version does not
    know: a newer writer, or a row written before payloads were typed)."""
    d: Mapping[str, Any] = data if isinstance(data, Mapping) else {}
    try:
        match EventType(type_):
            case EventType.STARTED:
                return Started(d["version"], d.get("delayed_until"), d.get("parent"))
            case EventType.SUSPENDED:
                return Suspended(d["reason"], d["wake_at"])
            case EventType.COMPLETED:
                return Completed()
            case EventType.FAILED:
                return Failed(d["code"], d.get("compensation"))
            case EventType.CANCELED:
                return Canceled(d["reason"], d["root"], d.get("compensation"))
            case EventType.PARKED:
                return Parked(d["code"], d["message"])
            case EventType.UNPARKED:
                return Unparked(d["reason"])
            case EventType.RETRIED:
                return Retried(d["from"])
            case EventType.RECOVERED:
                return Recovered(d["reason"])
            case EventType.REWOKEN:
                return Rewoken(d["reason"])
            case EventType.SIGNAL_RECEIVED:
                return SignalReceived(d["name"], d["signal_id"], d["waiting"])
            case EventType.RESUMED:
                return Resumed(d["children"])
            case EventType.FORKED:
                return Forked(d["source"], d["from_step"], d["from"])
            case EventType.CANCEL_REQUESTED:
                return CancelRequested(d["reason"])
            case EventType.COMPENSATION_FAILED:
                return CompensationFailed(d["code"], d["compensation"])
    except (KeyError, ValueError):
        return None
