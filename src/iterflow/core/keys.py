"""Cursor keys, timer keys and ``waiting_for`` values: built AND parsed here, nowhere else.

These strings are persisted (``steps.cursor_key``, ``timers.cursor_key``, ``signals.consumed_by``,
``runs.parent_cursor_key``, ``runs.waiting_for``, ``events.cursor_key``) and read back by other
processes and versions, so their format never changes:

* **cursor key** of a ``ctx`` call: its *base* plus an occurrence counter in call order —
  ``charge``, ``charge#1`` (a step's base is its label), ``sleep:cool-off``, ``sleep`` (unlabelled),
  ``signal:approve#2``, ``invoke:ship@1``, ``patch:fraud-check``, ``now``, ``uuid#3``; a
  compensation's key is ``compensate:`` plus the compensated step's key (``compensate:charge#1``,
  :func:`compensation_key`; read it with :func:`compensated_step`, not ``parse_cursor_key``).
  A builder ``.map`` makes one call per item, all with the map's base and made in item order,
  so its items' keys are consecutive occurrences: ``charge``, ``charge#1``, ``charge#2``...
  (``invoke:ship@1#n`` over a child flow), whatever order the items finish in.
* **timer key**: a sleep's or a signal timeout's own cursor key; a step's retry backoff is
  ``retry:<step key>``.
* **waiting_for** of a waiting run: ``signal:<name>``, ``timer:<timer key>``, ``child:<uuid>``,
  ``storage`` (an attempt aborted by a storage outage), ``recovery`` (a lease expired),
  ``deploy`` (parked until compatible code is deployed).

A raw body's labels may contain ``#`` and ``:`` (the builder refuses ``#``), so a label ending in
``#<n>`` makes a key ambiguous in the stored format itself; :func:`parse_cursor_key` reads such a
suffix as the counter. Pass the memo row's kind to parse a key exactly otherwise.
"""

from __future__ import annotations

import re
import sys
import uuid
from dataclasses import dataclass
from enum import StrEnum

from iterflow.core import codec
from iterflow.core.errors import FlowDefinitionError, InputInvalid
from iterflow.core.models import StepKind

__all__ = [
    "RETRY_PREFIX",
    "SIGNAL_WAIT_PREFIX",
    "WAITING_DEPLOY",
    "WAITING_RECOVERY",
    "WAITING_STORAGE",
    "CursorKey",
    "TimerKey",
    "WaitKind",
    "Waiting",
    "check_label",
    "compensated_step",
    "compensation_key",
    "cursor_key",
    "key_base",
    "parse_cursor_key",
    "parse_timer_key",
    "parse_waiting_for",
    "retry_timer_key",
    "waiting_for_child",
    "waiting_for_signal",
    "waiting_for_timer",
    "with_occurrence",
]

#: Prefix of a step's retry-backoff timer key (``retry:charge#1``).
RETRY_PREFIX = "retry:"
#: Prefix of ``waiting_for`` for a signal wait; SQL compares ``'signal:' || name`` with it.
SIGNAL_WAIT_PREFIX = "signal:"

_COUNTER = re.compile(r"^(.*)#([1-9][0-9]*)$", re.DOTALL)


# --- cursor keys --------------------------------------------------------------------------------


def check_label(label: object, what: str, *, max_chars: int | None) -> None:
    """Labels become cursor keys, stored as text: refuse what PostgreSQL would refuse, as a
    definition error (it is the code, not the data, that is wrong). ``max_chars`` is the
    engine's ``max_label_chars``; ``None`` (the builder, before an engine is known) checks all
    but the length."""
    try:
        codec.check_text(
            label, what=what, max_chars=sys.maxsize if max_chars is None else max_chars
        )
    except InputInvalid as exc:
        raise FlowDefinitionError(exc.message) from None


def key_base(kind: StepKind, label: str) -> str:
    """The key base of a call (repeats get ``#n`` appended): a step's label, else ``kind:label``
    (``kind`` alone when unlabelled)."""
    if kind is StepKind.STEP:
        return label
    return f"{kind.value}:{label}" if label else kind.value


def with_occurrence(base: str, occurrence: int) -> str:
    """``base`` for the first call (occurrence 0), ``base#n`` for the n-th repeat."""
    return base if occurrence == 0 else f"{base}#{occurrence}"


def cursor_key(kind: StepKind, label: str, occurrence: int = 0) -> str:
    """The cursor key of the ``occurrence``-th call (0-based) with this key base."""
    return with_occurrence(key_base(kind, label), occurrence)


@dataclass(frozen=True, slots=True)
class CursorKey:
    """A parsed cursor key."""

    kind: StepKind
    label: str
    occurrence: int = 0

    @property
    def base(self) -> str:
        """The key without its occurrence counter."""
        return key_base(self.kind, self.label)

    def __str__(self) -> str:
        return cursor_key(self.kind, self.label, self.occurrence)


def parse_cursor_key(key: str, kind: StepKind | None = None) -> CursorKey:
    """Read a cursor key. With ``kind`` (stored next to every memo row) the label is exact; a
    key that kind cannot produce raises ``ValueError``. Without it, a ``kind:`` prefix (or a bare
    kind name) names the kind and anything else is a step."""
    match = _COUNTER.match(key)
    base, occurrence = (match.group(1), int(match.group(2))) if match else (key, 0)
    if kind is None:
        kind = next(
            (k for k in StepKind if k is not StepKind.STEP and _label_of(base, k) is not None),
            StepKind.STEP,
        )
    label = _label_of(base, kind)
    if label is None:
        raise ValueError(f"{key!r} is not the cursor key of a {kind.value} call")
    return CursorKey(kind, label, occurrence)


def _label_of(base: str, kind: StepKind) -> str | None:
    if kind is StepKind.STEP:
        return base
    if base == kind.value:
        return ""
    prefix = f"{kind.value}:"
    return base[len(prefix) :] if base.startswith(prefix) else None


def compensation_key(step_key: str) -> str:
    """The cursor key of the compensation of the step with cursor key ``step_key``
    (``compensate:charge``, ``compensate:charge#1``): a :attr:`StepKind.COMPENSATE` call labelled
    with the step's key. Step keys are unique in a run, so this key is too (occurrence 0)."""
    return cursor_key(StepKind.COMPENSATE, step_key)


def compensated_step(key: str) -> str | None:
    """The step key a compensation's cursor key undoes (None for another kind of key). Its memo
    row's ``label`` holds the same value."""
    prefix = f"{StepKind.COMPENSATE.value}:"
    return key[len(prefix) :] if key.startswith(prefix) else None


# --- timer keys ---------------------------------------------------------------------------------


def retry_timer_key(step_key: str) -> str:
    """The backoff timer of the step with cursor key ``step_key``."""
    return f"{RETRY_PREFIX}{step_key}"


@dataclass(frozen=True, slots=True)
class TimerKey:
    """A parsed timer key: whose timer it is (``owner``, a cursor key) and whether it is a step's
    retry backoff (else the owner's own timer: a sleep or a signal timeout)."""

    owner: str
    retry: bool = False

    def __str__(self) -> str:
        return retry_timer_key(self.owner) if self.retry else self.owner


def parse_timer_key(key: str) -> TimerKey:
    """Read a timer key. Sleeps' and signals' keys start with their kind, so ``retry:`` is never
    a call's own key."""
    if key.startswith(RETRY_PREFIX):
        return TimerKey(key[len(RETRY_PREFIX) :], retry=True)
    return TimerKey(key)


# --- waiting_for --------------------------------------------------------------------------------


class WaitKind(StrEnum):
    """What a waiting run waits for (the part of ``waiting_for`` before any ``:``)."""

    SIGNAL = "signal"
    TIMER = "timer"
    CHILD = "child"
    STORAGE = "storage"
    RECOVERY = "recovery"
    DEPLOY = "deploy"


_WITH_REF = frozenset({WaitKind.SIGNAL, WaitKind.TIMER, WaitKind.CHILD})

#: An attempt aborted by a storage outage; retried shortly.
WAITING_STORAGE = WaitKind.STORAGE.value
#: A run reset by the reconciler after its lease expired.
WAITING_RECOVERY = WaitKind.RECOVERY.value
#: A parked run: it waits for compatible code to be deployed.
WAITING_DEPLOY = WaitKind.DEPLOY.value


@dataclass(frozen=True, slots=True)
class Waiting:
    """A parsed ``waiting_for``: its kind and, for signal/timer/child, the signal name, the timer
    key or the child run's id (as text)."""

    kind: WaitKind
    ref: str = ""

    @property
    def child_id(self) -> uuid.UUID:
        """The awaited child run (``child:<uuid>`` only)."""
        if self.kind is not WaitKind.CHILD:
            raise ValueError(f"waiting for {self.kind.value}, not a child")
        return uuid.UUID(self.ref)

    def __str__(self) -> str:
        return f"{self.kind.value}:{self.ref}" if self.kind in _WITH_REF else self.kind.value


def waiting_for_signal(name: str) -> str:
    """A run waiting for a delivery of signal ``name``."""
    return str(Waiting(WaitKind.SIGNAL, name))


def waiting_for_timer(timer_key: str) -> str:
    """A run waiting for the timer ``timer_key`` (a sleep or a retry backoff)."""
    return str(Waiting(WaitKind.TIMER, timer_key))


def waiting_for_child(child_id: uuid.UUID) -> str:
    """A run waiting for its child run ``child_id`` to finish."""
    return str(Waiting(WaitKind.CHILD, str(child_id)))


def parse_waiting_for(value: str) -> Waiting:
    """Read a ``waiting_for`` value; ``ValueError`` for one this version does not write."""
    head, sep, ref = value.partition(":")
    try:
        kind = WaitKind(head)
    except ValueError:
        raise ValueError(f"unknown waiting_for {value!r}") from None
    if (kind in _WITH_REF) != bool(sep) or (kind is WaitKind.CHILD and not _is_uuid(ref)):
        raise ValueError(f"malformed waiting_for {value!r}")
    return Waiting(kind, ref)


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False
