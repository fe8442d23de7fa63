"""Engine hooks: typed callbacks on what the engine does, for tracing, metrics and audit.

``Engine(hooks=[MyHook()])`` installs them. A hook subclasses :class:`Hook` and overrides the
events it wants; every method of :class:`Hook` does nothing, and an event no installed hook
overrides costs nothing: the runtime holds ``None`` when no hook is installed, and
:class:`Hooks` keeps, per event, only the hooks that override it.

Hooks are called synchronously, in the process and the task where the event happens: ``start``,
``signal`` and ``cancel`` in the caller, the others in the worker making the attempt (``step``
events in the task of the step, so a hook may make its own context current around a step). A
hook must be quick; one that raises is reported (the runtime logs it) and never breaks a run.

Events (each takes one frozen record):

* :meth:`Hook.inject` — at ``start`` (and ``ctx.invoke``), before the run is written: return a
  small ``str -> str`` carrier (e.g. a W3C ``traceparent``) stored with the run and handed back
  to every attempt as :attr:`AttemptInfo.carrier`; and at ``signal``, before the signal is
  written: stored with the signal and handed to the attempt it wakes as
  :attr:`AttemptInfo.signal_carrier`;
* :meth:`Hook.on_start` — a run was started (or found by its idempotency key);
* :meth:`Hook.on_signal` — a signal was delivered or buffered;
* :meth:`Hook.on_attempt_begin` / :meth:`Hook.on_attempt_end` — a worker claimed a run and ran
  its body (the end carries the typed :class:`~iterflow.core.decisions.AttemptOutcome`);
* :meth:`Hook.on_step_begin` / :meth:`Hook.on_step_end` — one attempt of a ``ctx.step`` function
  ran (memoized steps replayed from history are not reported);
* :meth:`Hook.on_suspend` — the run waits (reason, wake time);
* :meth:`Hook.on_run_finished` — the run reached ``done``, ``failed`` or ``canceled``;
* :meth:`Hook.on_recover` — a reconciler sweep repaired runs or jobs;
* :meth:`Hook.on_purge` — retention deleted finished runs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from iterflow.core import keys
from iterflow.core.decisions import AttemptOutcome
from iterflow.core.errors import ConfigInvalid
from iterflow.core.states import RunStatus, StepKind, StepStatus

__all__ = [
    "CARRIER_MAX_CHARS",
    "TRACE_META_KEY",
    "AttemptEndInfo",
    "AttemptInfo",
    "Hook",
    "HookErrorHandler",
    "Hooks",
    "PurgeInfo",
    "RecoveryInfo",
    "RunFinishedInfo",
    "SignalInfo",
    "StartInfo",
    "StepEndInfo",
    "StepInfo",
    "SuspendInfo",
    "clean_carrier",
    "wait_reason",
]

#: The key of ``runs.meta`` (and ``signals.meta``) holding what :meth:`Hook.inject` returned
#: when the run started (when the signal was sent).
TRACE_META_KEY = "trace"

#: A carrier larger than this (keys and values, in characters) is not stored.
CARRIER_MAX_CHARS = 2048


@dataclass(frozen=True, slots=True)
class StartInfo:
    """A run was started: by ``start`` (``parent_run_id`` None) or by ``ctx.invoke``."""

    run_id: uuid.UUID
    flow: str
    version: int
    #: False when an idempotency key matched an existing run (nothing was written).
    created: bool
    parent_run_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class SignalInfo:
    """``engine.signal`` returned: ``result`` is the :class:`~iterflow.SignalResult` kind."""

    run_id: uuid.UUID
    flow: str
    name: str
    result: str
    signal_id: int | None = None
    #: The run's carrier (what :meth:`Hook.inject` returned when it started).
    carrier: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AttemptInfo:
    """A worker claimed a run and is about to replay its body."""

    run_id: uuid.UUID
    flow: str
    version: int
    #: The run's claim count: 1 for its first attempt.
    attempt: int
    #: Who holds the lease (``host:pid:random``).
    worker: str
    parent_run_id: uuid.UUID | None
    #: What :meth:`Hook.inject` returned when the run was started (empty if nothing).
    carrier: Mapping[str, str]
    #: What the run waited for before this claim (``signal:<name>``, ``timer:<key>``,
    #: ``child:<id>``, ``storage``, ``recovery``, ``deploy``), None for a first attempt;
    #: ``recovery`` also when this claim took the run from an attempt whose lease expired.
    resumed_from: str | None
    #: The same as a :attr:`SuspendInfo.reason` (``sleep``, ``signal``, ``child``, ``retry``,
    #: ``storage``), see :func:`wait_reason`; None if the run was not suspended.
    resumed_reason: str | None
    #: When the run was due → this claim. Due: its start (or delayed start) for a first
    #: attempt; its wake-up time after a sleep, a retry backoff, a storage outage or a signal
    #: timeout; the awaited signal's arrival; the awaited child's end; the retry, resume,
    #: unpark or recovery that set it pending; an expired lease's expiry. None only if the
    #: database's clock says the due time is later than the claim.
    queue_lag: timedelta | None
    claimed_at: datetime
    #: The awaited signal that woke the run (consumed by this attempt), None if not woken by one.
    signal_id: int | None = None
    #: What :meth:`Hook.inject` returned where that signal was sent (empty if nothing).
    signal_carrier: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AttemptEndInfo:
    """The attempt ended: what it did and how long it took."""

    attempt: AttemptInfo
    outcome: AttemptOutcome
    duration: timedelta
    #: The error written with the run for ``failed`` / ``parked`` outcomes, else None.
    error: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class StepInfo:
    """One attempt of a ``ctx.step`` function is about to run (not a replayed memo)."""

    run_id: uuid.UUID
    flow: str
    cursor_key: str
    label: str
    position: int
    #: The step's attempt number: 1, then 2... for retries (counted across crashes).
    attempt: int
    #: The run's claim count (which attempt of the run this step runs in).
    run_attempt: int
    #: The step function's qualified name (``module.qualname``), e.g. for ``code.*``.
    function: str = ""
    kind: StepKind = StepKind.STEP


@dataclass(frozen=True, slots=True)
class StepEndInfo:
    """The step attempt ended: ``ok``, ``failed`` (for good) or ``retrying`` (retried later)."""

    step: StepInfo
    status: StepStatus
    duration: timedelta
    error: Mapping[str, Any] | None = None
    #: When a retry was scheduled, how long until it runs.
    retry_in: timedelta | None = None


@dataclass(frozen=True, slots=True)
class SuspendInfo:
    """The attempt ended with the run waiting."""

    run_id: uuid.UUID
    flow: str
    #: ``sleep``, ``signal``, ``child``, ``retry`` or ``storage``.
    reason: str
    status: RunStatus
    cursor_key: str
    wake_at: datetime | None
    waiting_for: str | None


@dataclass(frozen=True, slots=True)
class RunFinishedInfo:
    """The run reached a terminal status."""

    run_id: uuid.UUID
    flow: str
    version: int
    status: RunStatus
    error: Mapping[str, Any] | None = None
    parent_run_id: uuid.UUID | None = None
    #: For a run canceled while it waited: the reason it waited (see :func:`wait_reason`).
    waited_reason: str | None = None


@dataclass(frozen=True, slots=True)
class RecoveryInfo:
    """A reconciler sweep repaired something (it is not reported when it repaired nothing)."""

    #: Runs whose lease had expired (their worker died or hung), reset and woken.
    expired_leases: int
    #: Wake-up jobs left ``doing`` by a dead worker, released.
    orphaned_jobs: int
    #: Live runs that needed a wake-up and had none, woken.
    rewoken: int


@dataclass(frozen=True, slots=True)
class PurgeInfo:
    """Retention deleted ``count`` finished runs (with their steps, signals, timers, events)."""

    count: int
    #: Runs finished before this time were eligible.
    before: datetime | None = None
    #: The flow purged, or None for every flow.
    flow: str | None = None
    statuses: tuple[RunStatus, ...] = field(default=())


class Hook:
    """Base class of engine hooks: override the events you need; the others do nothing."""

    def inject(self) -> Mapping[str, str] | None:
        """Called where a run is started (``start``, ``ctx.invoke``) or signaled (``signal``)
        before it is written: return a carrier to store with it (at most
        :data:`CARRIER_MAX_CHARS`, text only)."""
        return None

    def on_start(self, info: StartInfo) -> None:
        """A run was started (or found by its idempotency key: ``info.created`` is False)."""

    def on_signal(self, info: SignalInfo) -> None:
        """``engine.signal`` delivered, buffered or refused a signal."""

    def on_attempt_begin(self, info: AttemptInfo) -> None:
        """A worker claimed a run; its body is about to run."""

    def on_attempt_end(self, info: AttemptEndInfo) -> None:
        """The attempt ended (always called after :meth:`on_attempt_begin`)."""

    def on_step_begin(self, info: StepInfo) -> None:
        """A step attempt is about to run."""

    def on_step_end(self, info: StepEndInfo) -> None:
        """The step attempt ended (always called after :meth:`on_step_begin`)."""

    def on_suspend(self, info: SuspendInfo) -> None:
        """The run waits; its attempt ends."""

    def on_run_finished(self, info: RunFinishedInfo) -> None:
        """The run is ``done``, ``failed`` or ``canceled``."""

    def on_recover(self, info: RecoveryInfo) -> None:
        """A reconciler sweep repaired runs or jobs."""

    def on_purge(self, info: PurgeInfo) -> None:
        """Retention deleted finished runs."""


#: Told when a hook raised: the hook, the event's method name, the exception.
HookErrorHandler = Callable[[Hook, str, Exception], None]

_EVENTS = (
    "on_start",
    "on_signal",
    "on_attempt_begin",
    "on_attempt_end",
    "on_step_begin",
    "on_step_end",
    "on_suspend",
    "on_run_finished",
    "on_recover",
    "on_purge",
)


class Hooks:
    """The installed hooks, dispatched per event. Build it with :meth:`of`, which returns None
    when there is nothing to dispatch, so the runtime's hot path tests one attribute.

    Each event method calls, in installation order, only the hooks overriding that event; a hook
    that raises is handed to ``on_error`` and the others still run.
    """

    __slots__ = ("_by_event", "_inject", "_on_error", "hooks")

    def __init__(self, hooks: Iterable[Hook], on_error: HookErrorHandler) -> None:
        self.hooks: tuple[Hook, ...] = tuple(hooks)
        for hook in self.hooks:
            if not isinstance(hook, Hook):
                raise ConfigInvalid(
                    "a hook must be an instance of a subclass of iterflow.Hook, got "
                    f"{type(hook).__name__}; subclass Hook and override the events you need"
                )
        self._on_error = on_error
        self._by_event: dict[str, tuple[tuple[Hook, Callable[[Any], None]], ...]] = {
            name: tuple(
                (hook, getattr(hook, name))
                for hook in self.hooks
                if getattr(type(hook), name) is not getattr(Hook, name)
            )
            for name in _EVENTS
        }
        self._inject = tuple(h for h in self.hooks if type(h).inject is not Hook.inject)

    @classmethod
    def of(cls, hooks: Iterable[Hook] | None, on_error: HookErrorHandler) -> Hooks | None:
        """The dispatcher of ``hooks``, or None when no hook is given."""
        built = cls(hooks or (), on_error)
        return built if built.hooks else None

    def wants(self, event: str) -> bool:
        """True if some hook overrides ``event`` (e.g. ``"on_step_begin"``): lets the runtime
        skip building an info record nobody reads."""
        return bool(self._by_event[event])

    def _emit(self, event: str, info: object) -> None:
        for hook, method in self._by_event[event]:
            try:
                method(info)
            except Exception as exc:
                self._on_error(hook, event, exc)

    def inject(self) -> dict[str, str]:
        """The hooks' carriers merged (later hooks win on a shared key), cleaned by
        :func:`clean_carrier`; empty when no hook injects anything."""
        merged: dict[str, str] = {}
        for hook in self._inject:
            try:
                got = hook.inject()
            except Exception as exc:
                self._on_error(hook, "inject", exc)
                continue
            if got:
                merged.update(clean_carrier(got))
        return clean_carrier(merged)

    def start(self, info: StartInfo) -> None:
        """Dispatch :meth:`Hook.on_start`."""
        self._emit("on_start", info)

    def signal(self, info: SignalInfo) -> None:
        """Dispatch :meth:`Hook.on_signal`."""
        self._emit("on_signal", info)

    def attempt_begin(self, info: AttemptInfo) -> None:
        """Dispatch :meth:`Hook.on_attempt_begin`."""
        self._emit("on_attempt_begin", info)

    def attempt_end(self, info: AttemptEndInfo) -> None:
        """Dispatch :meth:`Hook.on_attempt_end`."""
        self._emit("on_attempt_end", info)

    def step_begin(self, info: StepInfo) -> None:
        """Dispatch :meth:`Hook.on_step_begin`."""
        self._emit("on_step_begin", info)

    def step_end(self, info: StepEndInfo) -> None:
        """Dispatch :meth:`Hook.on_step_end`."""
        self._emit("on_step_end", info)

    def suspend(self, info: SuspendInfo) -> None:
        """Dispatch :meth:`Hook.on_suspend`."""
        self._emit("on_suspend", info)

    def run_finished(self, info: RunFinishedInfo) -> None:
        """Dispatch :meth:`Hook.on_run_finished`."""
        self._emit("on_run_finished", info)

    def recover(self, info: RecoveryInfo) -> None:
        """Dispatch :meth:`Hook.on_recover`."""
        self._emit("on_recover", info)

    def purge(self, info: PurgeInfo) -> None:
        """Dispatch :meth:`Hook.on_purge` (what retention calls after deleting runs)."""
        self._emit("on_purge", info)


def clean_carrier(carrier: Mapping[Any, Any] | None) -> dict[str, str]:
    """``carrier`` as stored with a run: text keys and values only (no NUL, no lone surrogate,
    non-empty keys), nothing at all if the total exceeds :data:`CARRIER_MAX_CHARS`. A carrier
    is diagnostic context: a bad one is dropped, never allowed to fail a start."""
    if not carrier or not isinstance(carrier, Mapping):
        return {}
    out: dict[str, str] = {}
    size = 0
    for key, value in carrier.items():
        if not (isinstance(key, str) and isinstance(value, str) and key):
            continue
        if not (_clean_text(key) and _clean_text(value)):
            continue
        size += len(key) + len(value)
        out[key] = value
    return out if size <= CARRIER_MAX_CHARS else {}


def _clean_text(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def wait_reason(waiting_for: str | None) -> str | None:
    """The suspend reason (``sleep``, ``signal``, ``child``, ``retry``, ``storage``) of a run's
    ``waiting_for``, None for nothing or for a run that was not suspended (recovered, parked)."""
    if not waiting_for:
        return None
    try:
        waiting = keys.parse_waiting_for(waiting_for)
    except ValueError:
        return None
    match waiting.kind:
        case keys.WaitKind.SIGNAL:
            return "signal"
        case keys.WaitKind.CHILD:
            return "child"
        case keys.WaitKind.STORAGE:
            return "storage"
        case keys.WaitKind.TIMER:
            return "retry" if waiting.ref.startswith(keys.RETRY_PREFIX) else "sleep"
    return None
