"""The flow builder: ``flow("onboard").input(M).step(...).sleep(...).signal(...).build()``.

Immutable and fluent: every call returns a new builder, so a partial chain can be reused.
A single **value channel** runs through the flow: each step receives the previous value (and a
:class:`StepContext`) and returns the next; ``sleep`` passes it through; ``signal`` replaces it
with the payload or ``merge(value, payload)``; ``loop`` repeats a body while ``until(value)`` is
false; ``branch`` picks a sub-flow by a key computed from the value; ``invoke`` runs a child flow
on it; ``map`` runs a step or a child flow on each item of a list computed from the value (at most
``concurrency`` at once) and gives the list of results; ``output`` maps the final value.

``build()`` returns a :class:`BuiltFlow`: a :class:`~iterflow.core.definition.FlowDef` whose
body walks the nodes with the very same ``ctx.step``/``ctx.sleep``/``ctx.signal``/``ctx.invoke``
as a raw body, so replay, drift detection and history rows are identical; it also carries the static
:class:`~iterflow.core.graph.FlowGraph`. Definition mistakes (duplicate labels, one signal name with
two models, a bad version) raise :class:`~iterflow.core.errors.FlowDefinitionError` while building.

Over 500 lines because it is the builder's whole typed public surface (overloads per method so
the value channel's type flows through the chain); the nodes it builds are in ``core/nodes.py``.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar, overload

from iterflow.core import codec
from iterflow.core.ctx import HasDefinition
from iterflow.core.definition import _NAME, DriftPolicy, FlowDef
from iterflow.core.durations import DurationLike, WhenLike, due_at, parse_duration
from iterflow.core.errors import FlowDefinitionError
from iterflow.core.graph import Branch, FlowGraph, GraphNode, Item, Loop, graph_from_tree
from iterflow.core.keys import check_label
from iterflow.core.nodes import (
    BranchNode,
    InvokeNode,
    LoopNode,
    MapNode,
    Node,
    SignalNode,
    SleepNode,
    StepContext,
    StepNode,
    make_body,
)
from iterflow.core.retry import RetryPolicy
from iterflow.core.signals import Signal, resolve

__all__ = [
    "DEFAULT_MAP_CONCURRENCY",
    "BuiltFlow",
    "FlowBuilder",
    "OutputBuilder",
    "StepContext",
    "flow",
]

In = TypeVar("In")
V = TypeVar("V")
N = TypeVar("N")
M = TypeVar("M")
K = TypeVar("K", bound=Hashable)
X = TypeVar("X")
R = TypeVar("R")

#: How many items of a ``.map`` are in flight at once unless ``concurrency=`` says otherwise.
DEFAULT_MAP_CONCURRENCY = 10


# --- builder state ----------------------------------------------------------------------------


_NONE: Any = type(None)


@dataclass(frozen=True, slots=True)
class _State:
    name: str
    version: int = 1
    input_type: Any = _NONE
    value_type: Any = _NONE
    nodes: tuple[Node, ...] = ()
    ids: frozenset[str] = frozenset()
    signals: tuple[tuple[str, Any], ...] = ()
    drift_policy: DriftPolicy = "fail"
    sub: bool = False
    items: tuple[Item, ...] = ()
    graph_nodes: tuple[GraphNode, ...] = ()

    def fail(self, message: str) -> FlowDefinitionError:
        return FlowDefinitionError(f"flow {self.name!r}: {message}")

    def new_id(self, base: str, *, unique: bool, what: str) -> str:
        """A node id; ``unique`` ids (labels) may not repeat, others get ``#n`` occurrences."""
        if base not in self.ids:
            return base
        if unique:
            raise self.fail(
                f"duplicate {what} {base!r}: labels are unique within a flow (loop bodies and "
                "branch cases included), since each one names one history row and one graph node"
            )
        n = 1
        while f"{base}#{n}" in self.ids:
            n += 1
        return f"{base}#{n}"

    def add(self, node: Node, graph_node: GraphNode, item: Item, value_type: Any) -> _State:
        return dataclasses.replace(
            self,
            nodes=(*self.nodes, node),
            ids=self.ids | {graph_node.id},
            items=(*self.items, item),
            graph_nodes=(*self.graph_nodes, graph_node),
            value_type=value_type,
        )

    def declare_signal(self, name: str, model: Any) -> tuple[tuple[str, Any], ...]:
        for known, known_model in self.signals:
            if known == name and known_model is not model:
                raise self.fail(
                    f"signal {name!r} is declared with {_type_name(known_model)} and with "
                    f"{_type_name(model)}; one signal name has one payload model"
                )
        if any(known == name for known, _ in self.signals):
            return self.signals
        return (*self.signals, (name, model))

    def top_level(self, method: str) -> None:
        if self.sub:
            raise self.fail(f".{method}() applies to the whole flow, not inside a loop or branch")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or repr(tp)


def _positional_arity(fn: Callable[..., Any]) -> int:
    """How many positional arguments ``fn`` takes: ``fn(value)`` or ``fn(value, step)``."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins: called with the value only
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return 2
    return sum(1 for p in params if p.kind in kinds)


def _check_label(
    label: str, what: str, *, max_chars: int | None, fail: Callable[[str], FlowDefinitionError]
) -> None:
    """The runtime's label rule (:func:`~iterflow.core.keys.check_label`): the length only once
    the engine's ``max_label_chars`` is known (``max_chars``, at registration)."""
    try:
        check_label(label, f"{what} label", max_chars=max_chars)
    except FlowDefinitionError as exc:
        raise fail(f"{exc.message}: {codec.shown(label, 40)}") from None


def _check_new_label(state: _State, label: str, what: str, *, required: bool) -> None:
    if not isinstance(label, str) or (required and not label):
        raise state.fail(f"{what} needs a non-empty string label, got {codec.shown(label, 60)}")
    if "#" in label:
        raise state.fail(
            f"{what} label {codec.shown(label, 60)} may not contain '#' (used for repeat counters)"
        )
    if label:
        _check_label(label, what, max_chars=None, fail=state.fail)


def _describe_duration(value: WhenLike | None) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _list_of(item_type: Any) -> Any:
    """``list[item_type]`` for a type known only at run time (a map's value type)."""
    return types.GenericAlias(list, (item_type,))


def _qualname(fn: Callable[..., object]) -> str:
    return str(getattr(fn, "__qualname__", None) or type(fn).__qualname__)


def _step_node(
    state: _State,
    what: str,
    label: str,
    fn: Callable[..., Any],
    retries: int,
    backoff: DurationLike | RetryPolicy | None,
    timeout: DurationLike | None,
    *,
    compensate: Callable[[Any], object] | None = None,
) -> tuple[StepNode, str]:
    """A checked step node (``what``: ``step`` or ``map``) and its graph detail."""
    _check_new_label(state, label, what, required=True)
    if not callable(fn):
        raise state.fail(f"{what} {label!r}: fn must be callable, got {fn!r}")
    if compensate is not None and not callable(compensate):
        raise state.fail(f"{what} {label!r}: compensate must be callable, got {compensate!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise state.fail(
            f"{what} {label!r}: retries must be a non-negative integer, got {retries!r}"
        )
    try:
        RetryPolicy.of(retries, backoff)
        if timeout is not None:
            parse_duration(timeout)
    except FlowDefinitionError:
        raise
    except Exception as exc:
        raise state.fail(f"{what} {label!r}: {exc}") from exc
    nid = state.new_id(label, unique=True, what=f"{what} label")
    node = StepNode(
        nid, label, fn, _positional_arity(fn) >= 2, retries, backoff, timeout, compensate
    )
    detail = ", ".join(
        part
        for part in (
            f"retries={retries}" if retries else "",
            f"timeout={_describe_duration(timeout)}" if timeout is not None else "",
            f"compensate={_qualname(compensate)}" if compensate is not None else "",
        )
        if part
    )
    return node, detail


class FlowBuilder(Generic[In, V]):
    """A flow under construction whose input is ``In`` and whose current value is ``V``."""

    __slots__ = ("_s",)

    def __init__(self, state: _State) -> None:
        self._s = state

    def __repr__(self) -> str:
        return f"<FlowBuilder {self._s.name}@{self._s.version}: {len(self._s.nodes)} nodes>"

    # -- flow-level settings ------------------------------------------------------------------

    def version(self, n: int) -> FlowBuilder[In, V]:
        """Set the version (a positive integer; default 1)."""
        self._s.top_level("version")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise self._s.fail(f"version must be a positive integer, got {n!r}")
        return FlowBuilder(dataclasses.replace(self._s, version=n))

    def input(self, model: type[N]) -> FlowBuilder[N, N]:
        """Declare the input model; the input is the channel's first value."""
        self._s.top_level("input")
        if self._s.nodes:
            raise self._s.fail(".input() must come before the first step")
        return FlowBuilder(dataclasses.replace(self._s, input_type=model, value_type=model))

    def drift_policy(self, policy: DriftPolicy) -> FlowBuilder[In, V]:
        """``fail`` (default) or ``park`` runs whose history no longer matches the code."""
        self._s.top_level("drift_policy")
        if policy not in ("fail", "park"):
            raise self._s.fail(f"drift_policy must be 'fail' or 'park', got {policy!r}")
        return FlowBuilder(dataclasses.replace(self._s, drift_policy=policy))

    # -- nodes --------------------------------------------------------------------------------

    @overload
    def step(
        self,
        label: str,
        fn: Callable[[V, StepContext[In]], Awaitable[N]],
        *,
        retries: int = 0,
        backoff: DurationLike | RetryPolicy | None = None,
        timeout: DurationLike | None = None,
        compensate: Callable[[N], object] | None = None,
    ) -> FlowBuilder[In, N]: ...

    @overload
    def step(
        self,
        label: str,
        fn: Callable[[V], Awaitable[N]],
        *,
        retries: int = 0,
        backoff: DurationLike | RetryPolicy | None = None,
        timeout: DurationLike | None = None,
        compensate: Callable[[N], object] | None = None,
    ) -> FlowBuilder[In, N]: ...

    @overload
    def step(
        self,
        label: str,
        fn: Callable[[V, StepContext[In]], N],
        *,
        retries: int = 0,
        backoff: DurationLike | RetryPolicy | None = None,
        timeout: DurationLike | None = None,
        compensate: Callable[[N], object] | None = None,
    ) -> FlowBuilder[In, N]: ...

    @overload
    def step(
        self,
        label: str,
        fn: Callable[[V], N],
        *,
        retries: int = 0,
        backoff: DurationLike | RetryPolicy | None = None,
        timeout: DurationLike | None = None,
        compensate: Callable[[N], object] | None = None,
    ) -> FlowBuilder[In, N]: ...

    def step(
        self,
        label: str,
        fn: Callable[..., Any],
        *,
        retries: int = 0,
        backoff: DurationLike | RetryPolicy | None = None,
        timeout: DurationLike | None = None,
        compensate: Callable[[Any], object] | None = None,
    ) -> FlowBuilder[In, Any]:
        """A durable step: ``fn(value)`` or ``fn(value, step_ctx)``; its result is the next value.

        Sync functions run in a thread, async ones on the loop. The result is stored as JSON
        typed by ``fn``'s return annotation (annotate it: an unannotated lambda gives plain
        JSON data). ``retries``/``backoff``/``timeout``/``compensate`` are those of
        ``ctx.step``: ``compensate(result)`` undoes the completed step if the run fails later
        (or is canceled with ``compensate=True``).
        """
        s = self._s
        node, detail = _step_node(
            s, "step", label, fn, retries, backoff, timeout, compensate=compensate
        )
        return FlowBuilder(
            s.add(node, GraphNode(node.id, "step", label, detail), node.id, codec.return_type(fn))
        )

    def sleep(self, duration: WhenLike, *, label: str = "") -> FlowBuilder[In, V]:
        """A durable wait (``"3d"``, ``timedelta``, seconds, or an aware ``datetime``)."""
        s = self._s
        _check_new_label(s, label, "sleep", required=False)
        try:
            if isinstance(duration, datetime):
                due_at(duration, duration)  # must be timezone-aware
            else:
                parse_duration(duration)
        except Exception as exc:
            raise s.fail(f"sleep {label!r}: {exc}") from exc
        nid = s.new_id(f"sleep:{label}" if label else "sleep", unique=bool(label), what="sleep")
        node = SleepNode(nid, label, duration)
        graph_node = GraphNode(nid, "sleep", label, _describe_duration(duration))
        return FlowBuilder(s.add(node, graph_node, nid, s.value_type))

    @overload
    def signal(
        self, name: Signal[M], /, *, timeout: DurationLike | None = None
    ) -> FlowBuilder[In, M]: ...

    @overload
    def signal(
        self,
        name: Signal[M],
        /,
        *,
        timeout: DurationLike | None = None,
        merge: Callable[[V, M], N],
    ) -> FlowBuilder[In, N]: ...

    @overload
    def signal(
        self, name: str, model: type[M], *, timeout: DurationLike | None = None
    ) -> FlowBuilder[In, M]: ...

    @overload
    def signal(
        self,
        name: str,
        model: type[M],
        *,
        timeout: DurationLike | None = None,
        merge: Callable[[V, M], N],
    ) -> FlowBuilder[In, N]: ...

    def signal(
        self,
        name: str | Signal[Any],
        model: type[Any] | None = None,
        *,
        timeout: DurationLike | None = None,
        merge: Callable[[Any, Any], Any] | None = None,
    ) -> FlowBuilder[In, Any]:
        """Wait for a signal (a :class:`~iterflow.core.signals.Signal` descriptor, or a name and
        its ``model``); the value becomes its payload, or ``merge(value, payload)``.

        The signal is declared on the flow with its model, so ``engine.signal`` validates
        payloads before storing them. ``merge`` must be pure (it runs again on every replay).
        """
        s = self._s
        try:
            name, model = resolve(name, model)
        except FlowDefinitionError as exc:
            raise s.fail(exc.message) from None
        if not isinstance(name, str) or not _NAME.match(name):
            raise s.fail(f"invalid signal name {name!r}: use 1-200 letters, digits or _ . : -")
        if timeout is not None:
            try:
                parse_duration(timeout)
            except Exception as exc:
                raise s.fail(f"signal {name!r}: {exc}") from exc
        signals = s.declare_signal(name, model)
        nid = s.new_id(f"signal:{name}", unique=False, what="signal")
        detail = _type_name(model) + (f", timeout={timeout}" if timeout is not None else "")
        value_type = model if merge is None else codec.return_type(merge)
        state = dataclasses.replace(s, signals=signals).add(
            SignalNode(nid, name, model, timeout, merge),
            GraphNode(nid, "signal", name, detail),
            nid,
            value_type,
        )
        return FlowBuilder(state)

    def invoke(
        self, child: FlowDef[V, N] | HasDefinition[V, N], *, detached: bool = False
    ) -> FlowBuilder[In, N]:
        """Run ``child`` (a handle or a flow definition) on the value; its output is the next
        value. The parent waits in ``awaiting_child``, holding nothing in memory."""
        s = self._s
        definition = child if isinstance(child, FlowDef) else child.definition
        if not isinstance(definition, FlowDef):
            raise s.fail(f"invoke needs a flow handle or FlowDef, got {child!r}")
        nid = s.new_id(f"invoke:{definition.key}", unique=False, what="invoke")
        node = InvokeNode(nid, definition, detached)
        graph_node = GraphNode(nid, "invoke", definition.key, "detached" if detached else "")
        return FlowBuilder(s.add(node, graph_node, nid, definition.output_type))

    @overload
    def map(
        self,
        label: str,
        fn: Callable[[X, StepContext[In]], Awaitable[R]],
        /,
        *,
        over: Callable[[V], Iterable[X]],
        concurrency: int = DEFAULT_MAP_CONCURRENCY,
        retries: int = 0,
        backoff: DurationLike | RetryPolicy | None = None,
        timeout: DurationLike | None = None,
    ) -> FlowBuilder[In, list[R]]: ...

    @overload
    def map(
        self,
        label: str,
        fn: Callable[[X], Awaitable[R]],
        /,
        *,
        over: Callable[[V], Iterable[X]],
        concurrency: int = DEFAULT_MAP_CONCURRENCY,
        retries: int = 0,
        backoff: DurationLike | RetryPolicy | None = None,
        timeout: DurationLike | None = None,
    ) -> FlowBuilder[In, list[R]]: ...

    @overload
    def map(
        self,
        label: str,
        fn: Callable[[X, StepContext[In]], R],
        /,
        *,
        over: Callable[[V], Iterable[X]],
        concurrency: int = DEFAULT_MAP_CONCURRENCY,
        retries: int = 0,
        backoff: DurationLike | RetryPolicy | None = None,
        timeout: DurationLike | None = None,
    ) -> FlowBuilder[In, list[R]]: ...

    @overload
    def map(
        self,
        label: str,
        fn: Callable[[X], R],
        /,
        *,
        over: Callable[[V], Iterable[X]],
        concurrency: int = DEFAULT_MAP_CONCURRENCY,
        retries: int = 0,
        backoff: DurationLike | RetryPolicy | None = None,
        timeout: DurationLike | None = None,
    ) -> FlowBuilder[In, list[R]]: ...

    @overload
    def map(
        self,
        child: FlowDef[X, R] | HasDefinition[X, R],
        /,
        *,
        over: Callable[[V], Iterable[X]],
        concurrency: int = DEFAULT_MAP_CONCURRENCY,
    ) -> FlowBuilder[In, list[R]]: ...

    def map(
        self,
        target: str | FlowDef[Any, Any] | HasDefinition[Any, Any],
        fn: Callable[..., Any] | None = None,
        /,
        *,
        over: Callable[[V], Iterable[Any]],
        concurrency: int = DEFAULT_MAP_CONCURRENCY,
        retries: int = 0,
        backoff: DurationLike | RetryPolicy | None = None,
        timeout: DurationLike | None = None,
    ) -> FlowBuilder[In, list[Any]]:
        """Fan out: run a step (``label, fn``) or a child flow on each item of ``over(value)``,
        at most ``concurrency`` items at once; the value becomes the list of results, in the
        items' order.

        Each item is one durable call with its own memo, retries (``retries``/``backoff``/
        ``timeout``, as for ``.step``) and cursor key (``charge``, ``charge#1``... in item order),
        so a replay returns the same list whatever order the items finished in. ``fn`` receives
        an item (and optionally a :class:`StepContext`); a child flow gets an item as its input
        (one child run each, like ``.invoke``). An item waiting for a retry or for its child
        keeps its slot. ``over`` is pure code, run again on every replay: it must return the
        same ordered collection (a list) each time.
        """
        s = self._s
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise s.fail(f"map concurrency must be a positive integer, got {concurrency!r}")
        if not callable(over):
            raise s.fail(f"map needs over=<callable> returning the items, got {over!r}")
        limit = f"concurrency={concurrency}"
        if isinstance(target, str):
            if fn is None:
                raise s.fail(f"map {target!r}: give the step function to run on each item")
            step, detail = _step_node(s, "map", target, fn, retries, backoff, timeout)
            node = MapNode(step.id, over, concurrency, step, None)
            graph_node = GraphNode(step.id, "map", target, ", ".join(filter(None, (limit, detail))))
            return FlowBuilder(s.add(node, graph_node, step.id, _list_of(codec.return_type(fn))))
        definition = target if isinstance(target, FlowDef) else getattr(target, "definition", None)
        if not isinstance(definition, FlowDef):
            raise s.fail(f"map needs a label and a step function, or a flow, got {target!r}")
        if fn is not None or retries or backoff is not None or timeout is not None:
            raise s.fail(
                f"map of flow {definition.key}: no step function or step options (each item is "
                "a child run, with the child's own retries)"
            )
        nid = s.new_id(f"invoke:{definition.key}", unique=False, what="map")
        node = MapNode(nid, over, concurrency, None, definition)
        graph_node = GraphNode(nid, "map", definition.key, limit)
        return FlowBuilder(s.add(node, graph_node, nid, _list_of(definition.output_type)))

    def loop(
        self,
        *,
        until: Callable[[V], bool],
        body: Callable[[FlowBuilder[In, V]], FlowBuilder[In, V]],
        label: str = "",
    ) -> FlowBuilder[In, V]:
        """Repeat ``body`` while ``until(value)`` is false, checked **before** each iteration
        (so zero iterations are possible). Each iteration's calls get occurrence keys
        (``poll``, ``poll#1``, ...). ``until`` must be pure: it runs again on every replay."""
        s = self._s
        _check_new_label(s, label, "loop", required=False)
        if not callable(until):
            raise s.fail("loop needs until=<callable>")
        nid = s.new_id(f"loop:{label}" if label else "loop", unique=bool(label), what="loop")
        inner = self._sub(body, dataclasses.replace(s, ids=s.ids | {nid}), nid, "loop body")
        if not inner.nodes:
            raise s.fail(f"{nid}: the loop body must contain at least one node")
        state = dataclasses.replace(
            s,
            ids=inner.ids,
            signals=inner.signals,
            nodes=(*s.nodes, LoopNode(nid, until, inner.nodes)),
            items=(*s.items, Loop(nid, inner.items)),
            graph_nodes=(
                *s.graph_nodes,
                GraphNode(nid, "loop", label),
                *inner.graph_nodes[len(s.graph_nodes) :],
            ),
        )
        return FlowBuilder(state)

    @overload
    def branch(
        self,
        *,
        on: Callable[[V], K],
        cases: Mapping[K, Callable[[FlowBuilder[In, V]], FlowBuilder[In, V]]],
        label: str = "",
    ) -> FlowBuilder[In, V]: ...

    @overload
    def branch(
        self,
        *,
        on: Callable[[V], K],
        cases: Mapping[K, Callable[[FlowBuilder[In, V]], FlowBuilder[In, N]]],
        default: Callable[[FlowBuilder[In, V]], FlowBuilder[In, N]],
        label: str = "",
    ) -> FlowBuilder[In, N]: ...

    def branch(
        self,
        *,
        on: Callable[[Any], Any],
        cases: Mapping[Any, Callable[[Any], Any]],
        default: Callable[[Any], Any] | None = None,
        label: str = "",
    ) -> FlowBuilder[In, Any]:
        """Switch on ``on(value)``: run the sub-flow of the matching case, else ``default``
        (without a default, the value passes through unchanged). Selection is pure code on the
        value, so replays take the same case; nothing is recorded for it."""
        s = self._s
        _check_new_label(s, label, "branch", required=False)
        if not callable(on):
            raise s.fail("branch needs on=<callable>")
        if not cases:
            raise s.fail("branch needs at least one case")
        nid = s.new_id(f"branch:{label}" if label else "branch", unique=bool(label), what="branch")
        acc = dataclasses.replace(s, ids=s.ids | {nid})
        built_cases: list[tuple[Any, tuple[Node, ...]]] = []
        tree_cases: list[tuple[str, tuple[Item, ...]]] = []
        extra_nodes: list[GraphNode] = []
        value_types: list[Any] = []
        alternatives = [(key, fn, f"case {key!r}") for key, fn in cases.items()]
        if default is not None:
            alternatives.append((None, default, "default"))
        default_nodes: tuple[Node, ...] | None = None
        default_items: tuple[Item, ...] | None = None
        for key, fn, what in alternatives:
            inner = self._sub(fn, acc, nid, what)
            acc = dataclasses.replace(acc, ids=inner.ids, signals=inner.signals)
            extra_nodes.extend(inner.graph_nodes[len(s.graph_nodes) :])
            value_types.append(inner.value_type)
            if what == "default":
                default_nodes, default_items = inner.nodes, inner.items
            else:
                built_cases.append((key, inner.nodes))
                tree_cases.append((str(key), inner.items))
        if default is None:
            value_types.append(s.value_type)
        same = all(t == value_types[0] for t in value_types)
        node = BranchNode(nid, on, tuple(built_cases), default_nodes)
        state = dataclasses.replace(
            acc,
            nodes=(*s.nodes, node),
            items=(*s.items, Branch(nid, tuple(tree_cases), default_items)),
            graph_nodes=(*s.graph_nodes, GraphNode(nid, "branch", label), *extra_nodes),
            value_type=value_types[0] if same else Any,
        )
        return FlowBuilder(state)

    @staticmethod
    def _sub(fn: Callable[[Any], Any], parent: _State, owner: str, what: str) -> _State:
        """Build a nested scope, seeded with the parent's labels and signals."""
        seed = dataclasses.replace(parent, nodes=(), items=(), sub=True)
        result = fn(FlowBuilder(seed))
        if not isinstance(result, FlowBuilder):
            raise parent.fail(
                f"{owner}: the {what} must return the builder it was given, extended with "
                f"steps (got {type(result).__name__})"
            )
        inner = result._s
        if not inner.sub or inner.graph_nodes[: len(parent.graph_nodes)] != parent.graph_nodes:
            raise parent.fail(f"{owner}: the {what} must extend the builder it was given")
        return inner

    # -- the end ------------------------------------------------------------------------------

    def output(self, fn: Callable[[V], N], *, model: Any = None) -> OutputBuilder[In, N]:
        """Map the final value to the flow's output (pure code, runs on every replay).

        The output model is ``model`` if given, else ``fn``'s return annotation.
        """
        self._s.top_level("output")
        if not callable(fn):
            raise self._s.fail("output needs a callable")
        return OutputBuilder(self._s, fn, model if model is not None else codec.return_type(fn))

    def build(self) -> BuiltFlow[In, V]:
        """The flow definition; its output is the final value."""
        self._s.top_level("build")
        return _build(self._s, None, self._s.value_type)


class OutputBuilder(Generic[In, V]):
    """A flow whose output is mapped: only ``build()`` (and flow settings) remain."""

    __slots__ = ("_fn", "_model", "_s")

    def __init__(self, state: _State, fn: Callable[[Any], Any], model: Any) -> None:
        self._s = state
        self._fn = fn
        self._model = model

    def version(self, n: int) -> OutputBuilder[In, V]:
        """Set the version (a positive integer)."""
        return OutputBuilder(FlowBuilder(self._s).version(n)._s, self._fn, self._model)

    def drift_policy(self, policy: DriftPolicy) -> OutputBuilder[In, V]:
        """``fail`` (default) or ``park``."""
        return OutputBuilder(FlowBuilder(self._s).drift_policy(policy)._s, self._fn, self._model)

    def build(self) -> BuiltFlow[In, V]:
        """The flow definition."""
        return _build(self._s, self._fn, self._model)


@dataclass(frozen=True, kw_only=True)
class BuiltFlow(FlowDef[In, V]):
    """A :class:`FlowDef` made by the builder; ``graph`` is its static step graph."""

    graph: FlowGraph = field(compare=False, repr=False)
    labels: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)
    """``(kind, label)`` of each step, map and sleep label: those its runs pass to ``ctx``."""

    def check_labels(self, max_chars: int) -> None:
        """Refuse (``FLOW_DEFINITION_INVALID``) a label longer than ``max_chars``, the engine's
        ``max_label_chars``, which every run would fail on: ``engine.register`` calls it, the
        builder having checked all the rest of the label rule while building."""
        for what, label in self.labels:
            _check_label(
                label,
                what,
                max_chars=max_chars,
                fail=lambda message: FlowDefinitionError(
                    f"flow {self.name!r}: {message} (the engine's max_label_chars)"
                ),
            )


def _call_labels(nodes: Iterable[Node]) -> Iterator[tuple[str, str]]:
    """``(kind, label)`` of each label the nodes pass to ``ctx.step``/``ctx.sleep``, nested
    loop and branch bodies included."""
    for node in nodes:
        if isinstance(node, StepNode):
            yield "step", node.label
        elif isinstance(node, SleepNode) and node.label:
            yield "sleep", node.label
        elif isinstance(node, MapNode) and node.step is not None:
            yield "map", node.step.label
        elif isinstance(node, LoopNode):
            yield from _call_labels(node.body)
        elif isinstance(node, BranchNode):
            for _, body in (*node.cases, (None, node.default or ())):
                yield from _call_labels(body)


def _build(s: _State, output: Callable[[Any], Any] | None, output_type: Any) -> BuiltFlow[Any, Any]:
    out = GraphNode("output", "output", "")
    graph = graph_from_tree(s.name, s.version, (*s.graph_nodes, out), (*s.items, "output"))
    return BuiltFlow(
        name=s.name,
        version=s.version,
        input_type=s.input_type,
        output_type=output_type,
        body=make_body(s.nodes, output, s.name),
        signals=dict(s.signals),
        drift_policy=s.drift_policy,
        graph=graph,
        labels=tuple(_call_labels(s.nodes)),
    )


def flow(name: str) -> FlowBuilder[None, None]:
    """Start building flow ``name`` (version 1, input ``None`` until ``.input(Model)``)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise FlowDefinitionError(
            f"invalid flow name {name!r}: use 1-200 letters, digits or _ . : -"
        )
    return FlowBuilder(_State(name=name))
