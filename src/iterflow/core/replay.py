"""The replay cursor: positions and cursor keys in call order, matched against history.

Pure: nothing here does I/O, reads a clock or knows about SQL. The runtime's ``FlowContext``
takes a :class:`Call` from the :class:`Cursor` at each ``ctx`` call site (the memo recorded there,
or drift), then asks :mod:`iterflow.core.decisions` what the call means.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from iterflow.core import keys
from iterflow.core.errors import FlowError, ReplayNonDeterministic
from iterflow.core.models import StepKind, StepRecord, StepStatus

__all__ = ["Call", "Cursor", "drift_error", "memo_error", "memo_value"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call:
    """One ``ctx`` call with its position and stable cursor key."""

    position: int
    kind: StepKind
    label: str
    cursor_key: str

    def describe(self) -> str:
        """Human form used in drift messages, e.g. ``step 'charge' (key charge#1) at 3``."""
        return (
            f"{self.kind.value} {self.label!r} (key {self.cursor_key}) at position {self.position}"
        )

    def memo(
        self,
        status: StepStatus,
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
        attempts: int = 1,
        started_at: datetime | None = None,
    ) -> StepRecord:
        """The memo row recording this call's outcome."""
        return StepRecord(
            position=self.position,
            cursor_key=self.cursor_key,
            kind=self.kind,
            label=self.label,
            status=status,
            output=output,
            error=error,
            attempts=attempts,
            started_at=started_at,
        )


def _describe_record(rec: StepRecord) -> str:
    return f"{rec.kind} {rec.label!r} (key {rec.cursor_key}) at position {rec.position}"


def drift_error(call: Call | None, recorded: StepRecord | None) -> ReplayNonDeterministic:
    """The error for a body whose calls no longer match the history."""
    if call is not None and recorded is not None:
        msg = (
            f"replay mismatch: history recorded {_describe_record(recorded)} but the code now "
            f"calls {call.describe()}; deploy code compatible with running runs, or branch with "
            "ctx.patched()"
        )
    elif recorded is not None:
        msg = (
            f"replay mismatch: history recorded {_describe_record(recorded)} but the code no "
            "longer makes that call"
        )
    else:
        msg = "replay mismatch"
    details: dict[str, Any] = {}
    if call is not None:
        details["requested"] = {
            "kind": call.kind.value,
            "label": call.label,
            "cursor_key": call.cursor_key,
            "position": call.position,
        }
    if recorded is not None:
        details["recorded"] = {
            "kind": str(recorded.kind),
            "label": recorded.label,
            "cursor_key": recorded.cursor_key,
            "position": recorded.position,
        }
    return ReplayNonDeterministic(msg, details=details)


class Cursor:
    """Assigns positions and cursor keys in call order and matches them against history."""

    def __init__(self, history: Iterable[StepRecord]) -> None:
        self._history: dict[int, StepRecord] = {rec.position: rec for rec in history}
        self._counts: dict[str, int] = {}
        self._next = 0

    @property
    def position(self) -> int:
        """The position the next call will take."""
        return self._next

    def next(self, kind: StepKind, label: str) -> tuple[Call, StepRecord | None]:
        """Take the next call; return it with its memo, or raise on drift."""
        base = keys.key_base(kind, label)
        n = self._counts.get(base, 0)
        self._counts[base] = n + 1
        call = Call(self._next, kind, label, keys.with_occurrence(base, n))
        self._next += 1
        recorded = self._history.get(call.position)
        if recorded is not None and (
            recorded.kind != kind or recorded.cursor_key != call.cursor_key
        ):
            raise drift_error(call, recorded)
        return call, recorded

    def check_complete(self) -> None:
        """Raise when history holds calls the body did not make (a step was removed)."""
        leftover = sorted(p for p in self._history if p >= self._next)
        if leftover:
            raise drift_error(None, self._history[leftover[0]])

    def record(self, rec: StepRecord) -> None:
        """Remember a memo written during this attempt."""
        self._history[rec.position] = rec

    def peek(self) -> StepRecord | None:
        """The memo recorded at the next position, without taking the position."""
        return self._history.get(self._next)

    def key_for(self, kind: StepKind, label: str) -> str:
        """The cursor key the next call of this kind and label would get (nothing is taken)."""
        base = keys.key_base(kind, label)
        return keys.with_occurrence(base, self._counts.get(base, 0))

    def takes_patch(self, change_id: str) -> bool:
        """Whether ``ctx.patched(change_id)`` takes the next position.

        True when history holds that patch's memo there, or holds nothing from here on (the run
        reaches this point under the new code). False when the run passed this point before
        under code without the patch: the caller answers False and takes no position, so the
        old history keeps matching.
        """
        if all(p < self._next for p in self._history):
            return True
        rec = self.peek()
        return (
            rec is not None
            and rec.kind == StepKind.PATCH
            and rec.cursor_key == self.key_for(StepKind.PATCH, change_id)
        )


def memo_value(rec: StepRecord, load: Callable[[Any], T]) -> T:
    """What a final memo means on replay: its output decoded by ``load``, or its recorded error
    raised again."""
    if rec.status is StepStatus.OK:
        return load(rec.output)
    raise memo_error(rec)


def memo_error(rec: StepRecord) -> FlowError:
    """The error stored in a failed memo, rebuilt with its code."""
    return FlowError.from_dict(rec.error or {"code": "STEP_FAILED", "message": "step failed"})
