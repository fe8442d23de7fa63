"""``describe(flow, sample_input)``: the step graph of a raw body, by a dry run.

The body runs against a recording context: every ``ctx`` call is recorded (kind, label, details)
and answered at once **without running step bodies, sleeping, waiting or starting children**.
Nothing touches a database.

What a dry run answers with (its limits):

* a step returns a *sample* of its function's return annotation (``0``, ``""``, ``False``,
  empty containers, a pydantic model built from its defaults and samples of its other fields);
  an unannotated step returns a :class:`Placeholder` (falsy, every attribute is itself);
* a signal returns a sample of its model, a child a sample of its output model;
  ``ctx.now()``/``uuid()``/``random()`` fixed values; ``ctx.patched()`` True (the new code);
* so the graph shows **one path**: the one taken with those values. Branches on real data
  (amounts, flags, API answers) follow the sample's side; a loop waiting for a condition that
  samples never meet stops after ``max_calls`` calls (``graph.truncated``), its repeats folded
  into a cycle. An exception raised by the body on sample values also ends the walk
  (``graph.note`` says which). Built flows carry an exact static graph: use :func:`graph_of`.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
import uuid as _uuid
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, TypeVar, TypeVarTuple

from pydantic import BaseModel

from iterflow.core import codec
from iterflow.core.definition import FlowDef
from iterflow.core.durations import DurationLike, WhenLike
from iterflow.core.graph import CallTrace, FlowGraph, graph_from_calls
from iterflow.core.models import StepKind
from iterflow.core.retry import RetryPolicy
from iterflow.core.signals import Signal, model_name, resolve

__all__ = ["Placeholder", "describe", "graph_of", "sample"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: The fixed clock and ids of a dry run.
SAMPLE_NOW = datetime(2000, 1, 1, tzinfo=UTC)
SAMPLE_UUID = _uuid.UUID(int=0)


class Placeholder:
    """Stands for a value a dry run cannot know. Falsy, empty, equal to nothing; attribute and
    item access, calls and arithmetic return the placeholder itself."""

    __slots__ = ("_of",)

    def __init__(self, of: str) -> None:
        self._of = of

    def __repr__(self) -> str:
        return f"<placeholder for {self._of}>"

    def __getattr__(self, name: str) -> Placeholder:
        return self

    def __getitem__(self, key: Any) -> Placeholder:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Placeholder:
        return self

    def __bool__(self) -> bool:
        return False

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> typing.Iterator[Any]:
        return iter(())

    def __eq__(self, other: object) -> bool:
        return other is self

    def __hash__(self) -> int:
        return id(self)

    def __add__(self, other: Any) -> Placeholder:
        return self

    __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __add__


def sample(tp: Any, what: str = "value") -> Any:
    """A plausible value of type ``tp`` for a dry run (see the module notes)."""
    if tp is Any or tp is None or tp is type(None):
        return None if tp is not Any else Placeholder(what)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return sample(args[0], what)
    if origin is typing.Literal:
        return args[0]
    if origin in (typing.Union, types.UnionType):
        return None if type(None) in args else sample(args[0], what)
    if origin is not None:
        empty: dict[Any, Any] = {list: [], tuple: (), set: set(), frozenset: frozenset(), dict: {}}
        return empty.get(origin, Placeholder(what))
    if not isinstance(tp, type):
        return Placeholder(what)
    simple: list[tuple[type, Any]] = [
        (bool, False),
        (int, 0),
        (float, 0.0),
        (str, ""),
        (bytes, b""),
        (Decimal, Decimal(0)),
        (datetime, SAMPLE_NOW),
        (date, SAMPLE_NOW.date()),
        (time, time(0)),
        (timedelta, timedelta(0)),
        (_uuid.UUID, SAMPLE_UUID),
    ]
    for base, value in simple:
        if issubclass(tp, base):
            return value
    if issubclass(tp, enum.Enum):
        return next(iter(tp))
    if issubclass(tp, BaseModel):
        values = {
            name: (
                info.get_default(call_default_factory=True)
                if not info.is_required()
                else sample(info.annotation, f"{what}.{name}")
            )
            for name, info in tp.model_fields.items()
        }
        return tp.model_construct(**values)
    if dataclasses.is_dataclass(tp):
        try:
            hints = typing.get_type_hints(tp)
            fields = {f.name: sample(hints.get(f.name, Any)) for f in dataclasses.fields(tp)}
            return typing.cast(Any, tp)(**fields)
        except Exception:
            return Placeholder(what)
    return Placeholder(what)


class _Enough(BaseException):
    """Stops a dry run after ``max_calls`` calls."""


class _QuietLog:
    def debug(self, msg: str, *args: Any) -> None:
        """Dry runs log nothing."""

    info = warning = error = debug


class DryRunContext:
    """A :class:`~iterflow.core.ctx.Ctx` that records calls instead of running them."""

    def __init__(self, flow: FlowDef[Any, Any], max_calls: int) -> None:
        self.run_id = SAMPLE_UUID
        self.flow_name = flow.name
        self.attempt = 1
        self.depth = 0
        self.is_replaying = False
        self.log = _QuietLog()
        self.calls: list[CallTrace] = []
        self._max = max_calls

    def _record(self, kind: StepKind, label: str, detail: str = "") -> None:
        if len(self.calls) >= self._max:
            raise _Enough
        self.calls.append(CallTrace(kind.value, label, detail))

    @staticmethod
    async def _value(value: T) -> T:
        return value

    @typing.overload
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

    @typing.overload
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

    def step(
        self,
        label: str,
        fn: Callable[[*Ts], Any],
        *args: *Ts,
        retries: int = 0,
        backoff: DurationLike | RetryPolicy | None = None,
        timeout: DurationLike | None = None,
        compensate: Callable[[Any], object] | None = None,
    ) -> Coroutine[None, None, Any]:
        """Record the step; answer with a sample of its return annotation."""
        parts = [f"retries={retries}" if retries else ""]
        parts.append(f"timeout={timeout}" if timeout is not None else "")
        parts.append(f"compensate={_name_of(compensate)}" if compensate is not None else "")
        self._record(StepKind.STEP, label, ", ".join(p for p in parts if p))
        return self._value(sample(codec.return_type(fn), f"step {label!r}"))

    def sleep(self, duration: WhenLike, label: str | None = None) -> Coroutine[None, None, None]:
        """Record the sleep; return at once."""
        self._record(StepKind.SLEEP, label or "", str(duration))
        return self._value(None)

    @typing.overload
    def signal(
        self, name: Signal[T], /, *, timeout: DurationLike | None = None
    ) -> Coroutine[None, None, T]: ...

    @typing.overload
    def signal(
        self, name: str, model: type[T], *, timeout: DurationLike | None = None
    ) -> Coroutine[None, None, T]: ...

    def signal(
        self,
        name: str | Signal[T],
        model: type[T] | None = None,
        *,
        timeout: DurationLike | None = None,
    ) -> Coroutine[None, None, T]:
        """Record the wait (a descriptor, or a name and model); answer with a sample payload."""
        label, tp = resolve(name, model)
        detail = model_name(tp) + (f", timeout={timeout}" if timeout else "")
        self._record(StepKind.SIGNAL, label, detail)
        return self._value(typing.cast(T, sample(tp, f"signal {label!r}")))

    def invoke(
        self, flow: Any, input: Any, *, detached: bool = False
    ) -> Coroutine[None, None, Any]:
        """Record the child call; answer with a sample of the child's output."""
        definition: FlowDef[Any, Any] = flow if isinstance(flow, FlowDef) else flow.definition
        self._record(StepKind.INVOKE, definition.key, "detached" if detached else "")
        return self._value(sample(definition.output_type, f"child {definition.key}"))

    async def gather(self, *aws: Awaitable[Any]) -> tuple[Any, ...]:
        """Await the (already recorded) calls in order."""
        return tuple([await aw for aw in aws])

    def now(self) -> Coroutine[None, None, datetime]:
        """A fixed time."""
        self._record(StepKind.NOW, "")
        return self._value(SAMPLE_NOW)

    def uuid(self) -> Coroutine[None, None, _uuid.UUID]:
        """A fixed id."""
        self._record(StepKind.UUID, "")
        return self._value(SAMPLE_UUID)

    def random(self) -> Coroutine[None, None, float]:
        """A fixed number."""
        self._record(StepKind.RANDOM, "")
        return self._value(0.0)

    def patched(self, change_id: str) -> Coroutine[None, None, bool]:
        """The new code path."""
        self._record(StepKind.PATCH, change_id)
        return self._value(True)


async def describe(
    flow: FlowDef[Any, Any] | Any, sample_input: Any = None, *, max_calls: int = 200
) -> FlowGraph:
    """Dry-run ``flow``'s body (a handle or a ``FlowDef``) on ``sample_input`` and return the
    graph of the calls it made. Without ``sample_input``, a sample of the input model is used.
    """
    definition: FlowDef[Any, Any] = flow if isinstance(flow, FlowDef) else flow.definition
    value = (
        sample(definition.input_type, "input")
        if sample_input is None
        else definition.validate_input(sample_input)
    )
    ctx = DryRunContext(definition, max_calls)
    finished, truncated, note = False, False, ""
    try:
        await definition.body(ctx, value)
        finished = True
    except _Enough:
        truncated, note = True, f"dry run stopped after {max_calls} calls"
    except Exception as exc:
        truncated = True
        note = f"the body raised {type(exc).__name__} on sample values: {exc}"
    return graph_from_calls(
        definition.name,
        definition.version,
        ctx.calls,
        finished=finished,
        source="describe",
        truncated=truncated,
        note=note,
    )


async def graph_of(flow: FlowDef[Any, Any] | Any, sample_input: Any = None) -> FlowGraph:
    """A built flow's static graph, else :func:`describe` of its body."""
    definition: FlowDef[Any, Any] = flow if isinstance(flow, FlowDef) else flow.definition
    static = getattr(definition, "graph", None)
    if isinstance(static, FlowGraph):
        return static
    return await describe(definition, sample_input)


def _name_of(fn: Callable[..., object]) -> str:
    """How a graph names a function (a compensation): its qualified name."""
    return str(getattr(fn, "__qualname__", None) or type(fn).__qualname__)
