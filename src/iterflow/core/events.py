"""Events: which flows an event starts, and what ``publish``/``signal_with_start`` return.

A flow subscribes with ``@engine.flow(..., on=["user.signed_up"])``;
``engine.publish("user.signed_up", payload, idempotency_key=...)`` starts, in one transaction,
the newest registered version of every flow whose newest version subscribes. Each subscriber's
run is started with the idempotency key :func:`event_run_key` ``(event, key)``, so a publish
repeated with the same key starts nothing new (idempotent per event key and flow). Pure: the
engine validates, the store writes.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from iterflow.core.codec import shown
from iterflow.core.definition import FlowDef, Registry
from iterflow.core.errors import FlowDefinitionError, InputInvalid
from iterflow.core.models import RunStatus, SignalResult

__all__ = [
    "EVENT_META_KEY",
    "PublishResult",
    "PublishedRun",
    "SignalWithStartResult",
    "Subscriptions",
    "check_event_name",
    "event_run_key",
]

_EVENT = re.compile(r"^[A-Za-z0-9_.:\-]{1,200}$")
_RULE = "1-200 ASCII letters, digits or _ . : -"

#: ``runs.meta`` key of a run ``publish`` started: the event's name.
EVENT_META_KEY = "event"


def check_event_name(value: object) -> str:
    """An event name: 1-200 letters, digits or ``_ . : -`` (``INPUT_INVALID`` otherwise)."""
    if not isinstance(value, str):
        raise InputInvalid(f"event name must be a string, got {type(value).__name__}")
    if not _EVENT.match(value):
        raise InputInvalid(_invalid(value))
    return value


def _invalid(name: object) -> str:
    """The message for an invalid event name: the name as a readable ``str`` repr (escapes only
    for what cannot be shown) and what a valid one is."""
    return f"invalid event name {shown(name, 60)}: an event name is {_RULE}, e.g. 'order.placed'"


def event_run_key(event: str, key: str) -> str:
    """The idempotency key of the run an event published with ``key`` starts (one per flow):
    ``"event:<event>:<key>"``; ``engine.find_run(flow, idempotency_key=...)`` finds it."""
    return f"event:{event}:{key}"


class Subscriptions:
    """The events each registered flow version subscribes to (``on=``)."""

    def __init__(self) -> None:
        self._on: dict[tuple[str, int], tuple[str, ...]] = {}

    @staticmethod
    def checked(flow: FlowDef[Any, Any], events: Iterable[str]) -> tuple[str, ...]:
        """``events`` as ``flow``'s subscriptions, each once (``FLOW_DEFINITION_INVALID`` for
        a bad name or a string given instead of a list)."""
        if isinstance(events, str | bytes):
            raise FlowDefinitionError(
                f"flow {flow.key}: on= takes a list of event names, e.g. on=[{events!r}]"
            )
        names: list[str] = []
        for event in events:
            if not isinstance(event, str) or not _EVENT.match(event):
                raise FlowDefinitionError(f"flow {flow.key}: {_invalid(event)}")
            if event not in names:
                names.append(event)
        return tuple(names)

    def add(self, flow: FlowDef[Any, Any], events: tuple[str, ...]) -> None:
        """Record ``flow``'s (checked) events."""
        if events:
            self._on[(flow.name, flow.version)] = events

    def of(self, flow: FlowDef[Any, Any]) -> tuple[str, ...]:
        """The events ``flow`` subscribes to."""
        return self._on.get((flow.name, flow.version), ())

    def subscribers(self, event: str, registry: Registry) -> list[FlowDef[Any, Any]]:
        """The flows ``event`` starts, by name: the newest registered version of each flow, when
        that version subscribes (an older version's subscription does not start it)."""
        names = sorted({name for (name, _) in self._on})
        found: list[FlowDef[Any, Any]] = []
        for name in names:
            newest = registry.latest(name)
            if newest is not None and event in self.of(newest):
                found.append(newest)
        return found


@dataclass(frozen=True, slots=True)
class PublishedRun:
    """One subscriber's run: started now (``created``) or found by its event key."""

    flow: str
    version: int
    run_id: uuid.UUID
    created: bool
    status: RunStatus


@dataclass(frozen=True, slots=True)
class PublishResult:
    """What ``engine.publish`` returns: the event and one run per subscribed flow, by flow
    name (empty when no registered flow subscribes)."""

    event: str
    runs: tuple[PublishedRun, ...]

    @property
    def created(self) -> int:
        """How many runs this publish started (0 when it repeated an earlier one)."""
        return sum(1 for r in self.runs if r.created)


@dataclass(frozen=True, slots=True)
class SignalWithStartResult:
    """What ``engine.signal_with_start`` returns: the run (``created`` when this call started
    it) and what became of the signal: ``buffered`` in a run started now; for a run that
    existed, as ``engine.signal`` (``delivered``, ``buffered``, ``duplicate``, or ``closed``
    when the run with that key already ended: its key is taken, nothing was started)."""

    run_id: uuid.UUID
    created: bool
    status: RunStatus
    signal: SignalResult
