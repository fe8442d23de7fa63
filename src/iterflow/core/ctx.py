"""What a flow body sees: the ``ctx`` API, shared by the runtime and the pure core.

:class:`Ctx` is the Protocol of the object a flow body receives. The core (builder nodes, the
dry-run describer) is written against it; the runtime's
:class:`~iterflow.runtime.context.FlowContext` and :class:`iterflow.core.describe.DryRunContext`
implement it (checked statically by ``tests/typing/pass/ctx_conformance.py``, under mypy and
pyright).

The runtime's :class:`~iterflow.runtime.context.FlowContext` sets the step attempt before each
attempt of a step body; builder nodes and user code read it with :func:`step_attempt`.
"""

from __future__ import annotations

import contextvars
import uuid as _uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import datetime
from typing import Any, Protocol, TypeVar, TypeVarTuple, overload

from iterflow.core.definition import FlowDef
from iterflow.core.durations import DurationLike, WhenLike
from iterflow.core.retry import RetryPolicy
from iterflow.core.signals import Signal

__all__ = ["STEP_ATTEMPT", "Ctx", "FlowLogger", "HasDefinition", "step_attempt"]

T = TypeVar("T")
M = TypeVar("M")
T1 = TypeVar("T1")
T2 = TypeVar("T2")
T3 = TypeVar("T3")
CI = TypeVar("CI")
CO = TypeVar("CO")
Ts = TypeVarTuple("Ts")

#: The 1-based attempt of the step body running now (set by the runtime before each attempt;
#: copied into the thread of a sync step).
STEP_ATTEMPT: contextvars.ContextVar[int] = contextvars.ContextVar("iterflow_step", default=1)


def step_attempt() -> int:
    """Inside a step body: which attempt of that step is running (1 = the first)."""
    return STEP_ATTEMPT.get()


class FlowLogger(Protocol):
    """``ctx.log`` (and a builder step's ``log``): ``%``-style messages, run id and flow attached;
    the runtime's logger stays silent while the body replays recorded calls."""

    def debug(self, msg: str, *args: Any) -> None: ...
    def info(self, msg: str, *args: Any) -> None: ...
    def warning(self, msg: str, *args: Any) -> None: ...
    def error(self, msg: str, *args: Any) -> None: ...


class HasDefinition(Protocol[CI, CO]):
    """A flow handle (``engine.flow(...)`` or ``flow(...).build()``): anything with a
    ``definition``; ``ctx.invoke`` and the builder's ``invoke`` accept it in place of a
    :class:`~iterflow.core.definition.FlowDef`."""

    @property
    def definition(self) -> FlowDef[CI, CO]: ...


class Ctx(Protocol):
    """The durable API of a flow body (``async def body(ctx, input)``).

    Each call takes its position in the run's history when it is made (the methods return
    coroutines), so a replay makes the same calls in the same order and gets the recorded
    results; ``now``/``uuid``/``random`` are recorded too, which is how a body stays
    deterministic without reading the clock or randomness itself.

    Every call must be awaited (directly or through ``ctx.gather``): the methods are typed as
    returning ``Coroutine`` so that type checkers flag a forgotten ``await`` (mypy's
    ``unused-coroutine``, pyright's ``reportUnusedCoroutine``), and the runtime fails the attempt
    with ``CTX_NOT_AWAITED``. ``ctx.step`` checks ``args`` against ``fn``'s parameters.
    ``ctx.step(..., compensate=undo)`` registers ``undo(result)`` once the step completes: if
    the run then fails (or is canceled with ``compensate=True``) the compensations of its
    completed steps run in reverse order, each as a durable step; ``undo``'s parameter is checked
    against the step's result type.
    ``ctx.signal`` waits for a signal named by a :class:`~iterflow.core.signals.Signal`
    descriptor (``await ctx.signal(approve)``) or by its name and payload model
    (``await ctx.signal("approve", Approval)``), either with ``timeout=``.
    """

    @property
    def run_id(self) -> _uuid.UUID:
        """The run's id."""
        ...

    @property
    def flow_name(self) -> str:
        """The flow's name."""
        ...

    @property
    def attempt(self) -> int:
        """The run's claim count: 1 on its first execution, more after suspensions/crashes."""
        ...

    @property
    def depth(self) -> int:
        """0 for a top-level run, 1 for its children, and so on."""
        ...

    @property
    def is_replaying(self) -> bool:
        """True while the body re-makes calls that are already in the history."""
        ...

    @property
    def log(self) -> FlowLogger:
        """The run's logger (silent during replay)."""
        ...

    @overload
    def step(
        self,
        label: str,
        fn: Callable[[*Ts], Coroutine[Any, Any, T]],
        *args: *Ts,
        retries: int = 0,
        backoff: DurationLike | RetryPolicy | None = None,
        timeout: DurationLike | None = None,
        compensate: Callable[[T], object] | None = None,
    ) -> Coroutine[None, None, T]: ...

    @overload
    def step(
        self,
        label: str,
        fn: Callable[[*Ts], T],
        *args: *Ts,
        retries: int = 0,
        backoff: DurationLike | RetryPolicy | None = None,
        timeout: DurationLike | None = None,
        compensate: Callable[[T], object] | None = None,
    ) -> Coroutine[None, None, T]: ...

    def sleep(self, duration: WhenLike, label: str | None = None) -> Coroutine[None, None, None]:
        """Durably wait ``duration`` or until a datetime."""
        ...

    @overload
    def signal(
        self, name: Signal[M], /, *, timeout: DurationLike | None = None
    ) -> Coroutine[None, None, M]: ...

    @overload
    def signal(
        self, name: str, model: type[M], *, timeout: DurationLike | None = None
    ) -> Coroutine[None, None, M]: ...

    def invoke(
        self,
        flow: FlowDef[CI, CO] | HasDefinition[CI, CO],
        input: CI | Mapping[str, Any],
        *,
        detached: bool = False,
    ) -> Coroutine[None, None, CO]:
        """Run ``flow`` as a child run and return its output."""
        ...

    @overload
    def gather(
        self, a: Awaitable[T1], b: Awaitable[T2], /
    ) -> Coroutine[None, None, tuple[T1, T2]]: ...

    @overload
    def gather(
        self, a: Awaitable[T1], b: Awaitable[T2], c: Awaitable[T3], /
    ) -> Coroutine[None, None, tuple[T1, T2, T3]]: ...

    @overload
    def gather(self, *aws: Awaitable[T]) -> Coroutine[None, None, tuple[T, ...]]: ...

    def now(self) -> Coroutine[None, None, datetime]:
        """The current time, recorded."""
        ...

    def uuid(self) -> Coroutine[None, None, _uuid.UUID]:
        """A random UUID, recorded."""
        ...

    def random(self) -> Coroutine[None, None, float]:
        """A float in [0, 1), recorded."""
        ...

    def patched(self, change_id: str) -> Coroutine[None, None, bool]:
        """True on runs that reach this point under the new code."""
        ...
