"""Watching a body's ``ctx`` calls: misuse is refused, not left to break a later replay.

* A call whose coroutine was dropped without being awaited took a history position that would
  never get a memo: ``CTX_NOT_AWAITED`` at the next ``ctx`` call or when the body returns.
* A ``ctx`` call made from inside a step function (a marker is set while one runs, copied into
  the thread of a sync step): ``CTX_NESTED``.
* An unannotated step's result must come back as itself from plain JSON
  (``STEP_RESULT_UNTYPED``).

A misuse stays raised: the next ``ctx`` call and the end of the body raise it again. Also
``ctx.log``, the logger that stays silent while the body replays.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import weakref
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Protocol, TypeVar

from iterflow.core import codec
from iterflow.core.errors import CtxNested, CtxNotAwaited, StepResultUntyped

__all__ = ["CallWatch", "ReplayQuietLogger", "check_untyped", "inside_step"]

T = TypeVar("T")

#: The context whose step function is running now (copied into the thread of a sync step).
_IN_STEP: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "iterflow_in_step", default=None
)
_NESTED_HINT = (
    "ctx calls belong in the flow body, not inside a step function; return a value from the "
    "step and call ctx after it"
)


@contextlib.contextmanager
def inside_step(owner: object) -> Iterator[None]:
    """Mark ``owner``'s step function as running: its ``ctx`` calls are nested."""
    token = _IN_STEP.set(owner)
    try:
        yield
    finally:
        _IN_STEP.reset(token)


class CallWatch:
    """The calls of one attempt's context, watched from the moment they are made until their
    coroutine starts."""

    def __init__(self, owner: object) -> None:
        self._owner = owner
        #: Calls made and not yet started: ticket -> (their coroutine, weakly; what they are).
        self._unstarted: dict[int, tuple[weakref.ref[Any], str, int | None]] = {}
        self._tickets = 0
        self._misused: CtxNotAwaited | CtxNested | None = None

    def enter(self, what: str) -> None:
        """The guard of every ``ctx`` call, before it takes a position: refuse a call from inside
        a step function, and a call made after one that was dropped without being awaited."""
        if _IN_STEP.get() is self._owner:
            self._misused = CtxNested(
                f"{what} was called from inside a step function; {_NESTED_HINT}",
                details={"call": what},
            )
        self.check(at_end=False)

    def check(self, *, at_end: bool) -> None:
        """Raise ``CTX_NOT_AWAITED`` for calls whose coroutine was dropped unstarted (or, at the
        end of the body, is still unstarted); raise again an earlier misuse."""
        if self._misused is None:
            lost = [
                (what, position)
                for ref, what, position in self._unstarted.values()
                if at_end or ref() is None
            ]
            if lost:
                for ref, _, _ in self._unstarted.values():
                    coro = ref()
                    if coro is not None:
                        coro.close()  # never to run: no "never awaited" warning for it
                names = ", ".join(what for what, _ in lost)
                self._misused = CtxNotAwaited(
                    f"{names} {'was' if len(lost) == 1 else 'were'} never awaited, so "
                    f"{'it' if len(lost) == 1 else 'they'} would be skipped; write "
                    f"`await {lost[0][0]}` (or pass the call to `await ctx.gather(...)`)",
                    details={
                        "calls": [{"call": what, "position": position} for what, position in lost]
                    },
                )
                self._unstarted.clear()
        if self._misused is not None:
            raise self._misused

    def issue(
        self, what: str, position: int | None, start: Callable[[], Coroutine[Any, Any, T]]
    ) -> Coroutine[None, None, T]:
        """The coroutine of a call, watched until it is first awaited; ``start`` makes the
        call's work only then (a call never awaited runs nothing)."""
        self._tickets += 1
        ticket = self._tickets

        async def watched() -> T:
            self._unstarted.pop(ticket, None)  # being awaited
            return await start()

        coro = watched()
        self._unstarted[ticket] = (weakref.ref(coro), what, position)
        return coro


def check_untyped(value: Any, label: str) -> None:
    """An unannotated step's result decodes as plain JSON: refuse one that would not come back
    as itself (a model as a dict, a ``Decimal`` or ``UUID`` as a string, a set as a list)."""
    problem = codec.not_json_native(value)
    if problem is not None:
        raise StepResultUntyped(
            f"step {label!r} returned {problem}, but its function has no return annotation, so "
            "the result would come back as plain JSON (a dict, a string or a list) on this run "
            "and on replays; annotate the step function's return type (`def fn(...) -> "
            f"{type(value).__qualname__}`, a def instead of a lambda), or return JSON data",
            details={"label": label, "type": type(value).__qualname__},
        )


class _Replaying(Protocol):
    run_id: Any
    flow_name: str

    @property
    def is_replaying(self) -> bool: ...


class ReplayQuietLogger(logging.LoggerAdapter[logging.Logger]):
    """``ctx.log``: the ``iterflow.flow`` logger with the run's id and flow attached, silent while
    the body replays recorded calls."""

    def __init__(self, logger: logging.Logger, ctx: _Replaying) -> None:
        super().__init__(logger, {"run_id": str(ctx.run_id), "flow": ctx.flow_name})
        self._ctx = ctx

    def isEnabledFor(self, level: int) -> bool:
        """False while replaying."""
        return not self._ctx.is_replaying and super().isEnabledFor(level)
