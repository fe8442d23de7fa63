"""The nodes of a built flow and how they run.

A built flow's body walks its nodes calling the same ``ctx.step`` / ``ctx.sleep`` /
``ctx.signal`` / ``ctx.invoke`` as a raw body, so replay, drift detection, retries and history
rows are those of the equivalent raw body; loops and branches are plain code on the value and
record nothing. A step function receives the value, and optionally a :class:`StepContext`.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from iterflow.core.ctx import Ctx, FlowLogger, step_attempt
from iterflow.core.definition import FlowDef
from iterflow.core.durations import DurationLike, WhenLike
from iterflow.core.retry import RetryPolicy

__all__ = [
    "BranchNode",
    "InvokeNode",
    "LoopNode",
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


Node = StepNode | SleepNode | SignalNode | InvokeNode | LoopNode | BranchNode


# --- execution (the same ctx calls as a raw body) -----------------------------------------------


async def _run_nodes(nodes: tuple[Node, ...], ctx: Ctx, input: Any, value: Any) -> Any:
    for node in nodes:
        value = await _run_node(node, ctx, input, value)
    return value


async def _run_node(node: Node, ctx: Ctx, input: Any, value: Any) -> Any:
    if isinstance(node, StepNode):
        sc: StepContext[Any] = StepContext(
            input=input, run_id=ctx.run_id, flow=ctx.flow_name, label=node.label, log=ctx.log
        )
        args = (value, sc) if node.pass_context else (value,)
        try:
            return await ctx.step(
                node.label,
                node.fn,
                *args,
                retries=node.retries,
                backoff=node.backoff,
                timeout=node.timeout,
            )
        finally:
            sc._stopped.set()
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


def make_body(
    nodes: tuple[Node, ...], output: Callable[[Any], Any] | None, name: str
) -> Callable[[Ctx, Any], Awaitable[Any]]:
    async def body(ctx: Ctx, input: Any) -> Any:
        value = await _run_nodes(nodes, ctx, input, input)
        return value if output is None else output(value)

    body.__name__ = body.__qualname__ = f"built_flow_{name}"
    return body
