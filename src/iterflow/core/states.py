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
    "TERMINAL_STATUSES",
    "TIMED_STATUSES",
    "WAITING_STATUSES",
    "Canceled",
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
    """Lifecycle of a run. ``done``, ``failed`` and ``canceled`` are terminal."""

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


#: A run in one of these never changes status again, except through ``retry``.
TERMINAL_STATUSES: frozenset[RunStatus] = frozenset(
    {RunStatus.DONE, RunStatus.FAILED, RunStatus.CANCELED}
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
    """The run finished ``failed``: ``{"code"}`` (the error's code)."""

    type: ClassVar[EventType] = EventType.FAILED
    code: str | None

    def to_data(self) -> dict[str, Any]:
        return {"code": self.code}


@dataclass(frozen=True, slots=True)
class Canceled(EventPayload):
    """The run was canceled: ``{"reason", "root"}`` (the run whose cancel reached this one)."""

    type: ClassVar[EventType] = EventType.CANCELED
    reason: str
    root: str

    def to_data(self) -> dict[str, Any]:
        return {"reason": self.reason, "root": self.root}


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


def finished_event(status: RunStatus, error: Mapping[str, Any] | None) -> Completed | Failed:
    """The event of a run's terminal write by its attempt (``done`` or ``failed``; a cancel is
    written by ``cancel``, with its own payload)."""
    if status is RunStatus.DONE:
        return Completed()
    if status is RunStatus.FAILED:
        return Failed(code=None if error is None else error.get("code"))
    raise ValueError(f"an attempt finishes a run done or failed, not {status.value}")


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
                return Failed(d["code"])
            case EventType.CANCELED:
                return Canceled(d["reason"], d["root"])
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
    except (KeyError, ValueError):
        return None
