"""The nodes of a built flow and how they run.

A built flow's body walks its nodes calling the same ``ctx.step`` / ``ctx.sleep`` /
``ctx.signal`` / ``ctx.invoke`` as a raw body, so replay, drift detection, retries and history
rows are those of the equivalent raw body; loops and branches are plain code on the value and
record nothing. A step function receives the value, and optionally a :class:`StepContext`.

A ``map`` makes one ``ctx.step`` (or ``ctx.invoke``) per item inside one ``ctx.gather``. Each
item's call is **made** in input order (so it takes the same history position and cursor key,
``charge``, ``charge#1``..., on every replay, whatever order the items finish in) and at most
``concurrency`` items are in flight: running, retrying, or waiting for their child run. An item
that waits keeps its slot; once every slot is held by a waiting item the items not yet started
are left for the next attempt, and the run suspends.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Set
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from iterflow.core import codec
from iterflow.core.ctx import Ctx, FlowLogger, step_attempt
from iterflow.core.definition import FlowDef
from iterflow.core.durations import DurationLike, WhenLike
from iterflow.core.errors import MapItemsInvalid, Suspended
from iterflow.core.retry import RetryPolicy

__all__ = [
    "BranchNode",
    "InvokeNode",
    "LoopNode",
    "MapNode",
    "Node",
    "SignalNode",
    "SleepNode",
    "StepContext",
    "StepNode",
    "make_body",
]

In = TypeVar("In")


class StepContext(Generic[In]):
    """What a builder step receives besides the value.

    * ``input``: the run's input; ``run_id``, ``flow``, ``label``: where it runs;
    * ``attempt``: 1 for the first attempt of this step, 2 for its first retry...;
    * ``log``: the run's logger (``run_id`` and ``flow`` attached);
    * ``is_cancelled()`` / ``wait_cancelled(timeout)``: True once the engine stopped waiting for
      this call (run canceled, lease lost, step ended). An async step is also cancelled
      directly (``asyncio.CancelledError``); a sync step, running in a thread, should poll.
    """

    __slots__ = ("_stopped", "flow", "input", "label", "log", "run_id")

    def __init__(
        self, *, input: In, run_id: uuid.UUID, flow: str, label: str, log: FlowLogger
    ) -> None:
        self.input = input
        self.run_id = run_id
        self.flow = flow
        self.label = label
        self.log = log
        self._stopped = threading.Event()

    @property
    def attempt(self) -> int:
        """The 1-based attempt of this step (retries included, across crashes and resumes)."""
        return step_attempt()

    def is_cancelled(self) -> bool:
        """True once the engine no longer waits for this step's result."""
        return self._stopped.is_set()

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block (sync steps) until cancelled or ``timeout`` seconds; return ``is_cancelled()``."""
        return self._stopped.wait(timeout)


# --- node records ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepNode:
    id: str
    label: str
    fn: Callable[..., Any]
    pass_context: bool
    retries: int
    backoff: DurationLike | RetryPolicy | None
    timeout: DurationLike | None
    compensate: Callable[[Any], object] | None = None


@dataclass(frozen=True, slots=True)
class SleepNode:
    id: str
    label: str
    duration: WhenLike


@dataclass(frozen=True, slots=True)
class SignalNode:
    id: str
    name: str
    model: Any
    timeout: DurationLike | None
    merge: Callable[[Any, Any], Any] | None


@dataclass(frozen=True, slots=True)
class InvokeNode:
    id: str
    flow: FlowDef[Any, Any]
    detached: bool


@dataclass(frozen=True, slots=True)
class LoopNode:
    id: str
    until: Callable[[Any], bool]
    body: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class BranchNode:
    id: str
    on: Callable[[Any], Any]
    cases: tuple[tuple[Any, tuple[Node, ...]], ...]
    default: tuple[Node, ...] | None


@dataclass(frozen=True, slots=True)
class MapNode:
    """``over(value)``'s items, each through ``step`` (a step node whose id is the map's) or
    ``flow`` (a child run each); the value becomes the list of results, in input order."""

    id: str
    over: Callable[[Any], Iterable[Any]]
    concurrency: int
    step: StepNode | None
    flow: FlowDef[Any, Any] | None


Node = StepNode | SleepNode | SignalNode | InvokeNode | LoopNode | BranchNode | MapNode


# --- execution (the same ctx calls as a raw body) -----------------------------------------------


async def _run_nodes(nodes: tuple[Node, ...], ctx: Ctx, input: Any, value: Any) -> Any:
    for node in nodes:
        value = await _run_node(node, ctx, input, value)
    return value


def _step_call(node: StepNode, ctx: Ctx, input: Any, value: Any) -> Awaitable[Any]:
    """Make the step's ``ctx.step`` call now (it takes its history position here); the
    awaitable returns its result and then marks the step context cancelled."""
    sc: StepContext[Any] = StepContext(
        input=input, run_id=ctx.run_id, flow=ctx.flow_name, label=node.label, log=ctx.log
    )
    args = (value, sc) if node.pass_context else (value,)
    call = ctx.step(
        node.label,
        node.fn,
        *args,
        retries=node.retries,
        backoff=node.backoff,
        timeout=node.timeout,
        compensate=node.compensate,
    )

    async def run() -> Any:
        try:
            return await call
        finally:
            sc._stopped.set()

    return run()


async def _run_node(node: Node, ctx: Ctx, input: Any, value: Any) -> Any:
    if isinstance(node, StepNode):
        return await _step_call(node, ctx, input, value)
    if isinstance(node, MapNode):
        return await _run_map(node, ctx, input, value)
    if isinstance(node, SleepNode):
        await ctx.sleep(node.duration, label=node.label or None)
        return value
    if isinstance(node, SignalNode):
        payload = await ctx.signal(node.name, node.model, timeout=node.timeout)
        return payload if node.merge is None else node.merge(value, payload)
    if isinstance(node, InvokeNode):
        return await ctx.invoke(node.flow, value, detached=node.detached)
    if isinstance(node, LoopNode):
        while not node.until(value):  # checked before each iteration: zero iterations possible
            value = await _run_nodes(node.body, ctx, input, value)
        return value
    key = node.on(value)
    for case_key, case in node.cases:
        if case_key == key:
            return await _run_nodes(case, ctx, input, value)
    if node.default is None:
        return value
    return await _run_nodes(node.default, ctx, input, value)


#: Far above any stored payload: items are checked for what cannot be stored, not for size
#: (a step's items stay in memory; a child's input is checked again against the byte cap).
_NO_SIZE_LIMIT = 2**62


def map_items(node: MapNode, value: Any) -> list[Any]:
    """``node.over(value)`` as a list, refused like a step result that cannot be stored:
    ``MAP_ITEMS_INVALID`` for no ordered collection, ``PAYLOAD_INVALID`` for an item with a NUL,
    a lone surrogate, NaN or a type the codec cannot encode."""
    items = node.over(value)
    unordered = isinstance(items, str | bytes | bytearray | Mapping | Set)
    if unordered or not isinstance(items, Iterable):
        raise MapItemsInvalid(
            f"map {node.id!r}: over= returned {type(items).__name__}, not an ordered collection "
            "of items; return a list (or a tuple, or a generator) of the items to map",
            details={"map": node.id, "type": type(items).__name__},
        )
    listed = list(items)
    for index, item in enumerate(listed):
        codec.encode(item, what=f"item {index} of map {node.id!r}", limit=_NO_SIZE_LIMIT)
    return listed


class _Slots:
    """Starts items in input order, at most ``limit`` in flight; a suspended item keeps its slot
    and, once all of them are held by suspended items, the rest are not started (``None``)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._turn = asyncio.Condition()
        self._next = 0  # the index of the next item to start
        self._active = 0  # started and not finished (suspended ones included)
        self._suspended = 0
        self._stopped = False

    async def run(self, index: int, make: Callable[[], Awaitable[Any]]) -> Any:
        async with self._turn:
            await self._turn.wait_for(
                lambda: self._stopped or (self._next == index and self._active < self._limit)
            )
            if self._stopped:
                return None  # the run suspends: this item starts on a later attempt
            try:
                call = make()  # takes the item's history position: always in input order
            finally:
                self._next += 1
                self._turn.notify_all()
            self._active += 1
        try:
            result = await call
        except Suspended:
            async with self._turn:
                self._suspended += 1
                self._stopped = self._suspended >= self._limit
                self._turn.notify_all()
            raise
        except BaseException:
            await self._release()
            raise
        await self._release()
        return result

    async def _release(self) -> None:
        async with self._turn:
            self._active -= 1
            self._turn.notify_all()


async def _run_map(node: MapNode, ctx: Ctx, input: Any, value: Any) -> list[Any]:
    items = map_items(node, value)
    slots = _Slots(node.concurrency)

    def make(item: Any) -> Callable[[], Awaitable[Any]]:
        if node.step is not None:
            step = node.step
            return lambda: _step_call(step, ctx, input, item)
        flow = node.flow
        assert flow is not None
        return lambda: ctx.invoke(flow, item)

    results = await ctx.gather(*(slots.run(i, make(item)) for i, item in enumerate(items)))
    return list(results)


def make_body(
    nodes: tuple[Node, ...], output: Callable[[Any], Any] | None, name: str
) -> Callable[[Ctx, Any], Awaitable[Any]]:
    async def body(ctx: Ctx, input: Any) -> Any:
        value = await _run_nodes(nodes, ctx, input, input)
        return value if output is None else output(value)

    body.__name__ = body.__qualname__ = f"built_flow_{name}"
    return body
