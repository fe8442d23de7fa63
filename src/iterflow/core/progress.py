"""A run's progress on a step graph.

* :func:`graph_from_history`: the graph a run actually walked, from its memo rows and the call
  it waits on now (any flow, raw or built);
* :func:`overlay`: each node's state for one run (``done``, ``waiting``, ``failed``) and how often
  it ran. Built flows are matched structurally, so loop iterations (``poll``, ``poll#1``...)
  land on their body's nodes and a map's items on the map; other graphs map each call to the
  node of its key base.

Pure: it reads a :class:`~iterflow.core.models.RunDetail` (``engine.status(run_id)``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

from iterflow.core.graph import (
    CALL_KINDS,
    OUTPUT,
    Branch,
    CallTrace,
    FlowGraph,
    Item,
    Loop,
    NodeState,
    RunOverlay,
    graph_from_calls,
    map_call,
    node_id,
)
from iterflow.core.models import RunDetail, RunStatus, StepKind, StepStatus

__all__ = ["RunOverlay", "graph_from_history", "overlay"]


_WAITING = frozenset(
    {RunStatus.SLEEPING, RunStatus.AWAITING_SIGNAL, RunStatus.AWAITING_CHILD, RunStatus.RETRYING}
)
_SUFFIX = re.compile(r"#\d+$")


def _parse_key(key: str) -> tuple[str, str]:
    """``sleep:cool-off#2`` → (``sleep``, ``cool-off``); a bare key is a step."""
    base = _SUFFIX.sub("", key)
    for kind in (StepKind.SLEEP, StepKind.SIGNAL, StepKind.INVOKE, StepKind.PATCH):
        if base == kind.value:
            return kind.value, ""
        if base.startswith(f"{kind.value}:"):
            return kind.value, base[len(kind.value) + 1 :]
    return StepKind.STEP.value, base


def _observed(detail: RunDetail) -> list[tuple[str, str, NodeState]]:
    """The run's calls in order with their state, plus the call it waits on now."""
    calls: list[tuple[str, str, NodeState]] = []
    for s in detail.steps:
        state: NodeState = (
            "done"
            if s.status is StepStatus.OK
            else "failed"
            if s.status is StepStatus.FAILED
            else "waiting"
        )
        calls.append((str(s.kind), s.label, state))
    if detail.run.status in _WAITING:
        suspended = [e for e in detail.events if e.type == "suspended" and e.cursor_key]
        if suspended:
            key = str(suspended[-1].cursor_key)
            if key not in {s.cursor_key for s in detail.steps}:
                kind, label = _parse_key(key)
                calls.append((kind, label, "waiting"))
    return [c for c in calls if c[0] in CALL_KINDS]


class _TreeMatcher:
    """Walks a builder tree along the observed calls (greedy: a loop repeats while the next call
    can start its body; a branch takes the case the next call can start)."""

    def __init__(self, graph: FlowGraph, calls: Sequence[tuple[str, str, NodeState]]) -> None:
        self.keys = {
            n.id: map_call(n) if n.kind == "map" else (n.kind, n.label)
            for n in graph.nodes
            if n.kind not in _STRUCTURE_KINDS
        }
        #: map nodes: zero or more calls in a row (one per item)
        self.maps = frozenset(n.id for n in graph.nodes if n.kind == "map")
        self.calls = calls
        self.i = 0
        self.matched: list[tuple[int, str]] = []

    def nullable(self, item: Item) -> bool:
        """Whether ``item`` can be passed without making any call."""
        if isinstance(item, str):
            return item not in self.keys or item in self.maps
        if isinstance(item, Loop):
            return True
        alternatives = [seq for _, seq in item.cases] + [item.default or ()]
        return any(all(self.nullable(i) for i in alt) for alt in alternatives)

    def first(self, seq: tuple[Item, ...]) -> set[tuple[str, str]]:
        """The calls that can start ``seq``."""
        out: set[tuple[str, str]] = set()
        for item in seq:
            if isinstance(item, str):
                if item in self.keys:
                    out.add(self.keys[item])
            elif isinstance(item, Loop):
                out |= self.first(item.body)
            else:
                for _, case in item.cases:
                    out |= self.first(case)
                out |= self.first(item.default or ())
            if not self.nullable(item):
                break
        return out

    def seq(self, seq: tuple[Item, ...]) -> bool:
        return all(self.item(item) for item in seq)

    def item(self, item: Item) -> bool:
        if self.i >= len(self.calls):
            return False
        head = self.calls[self.i][:2]
        if isinstance(item, str):
            if item not in self.keys:
                return True
            if item in self.maps:
                while self.i < len(self.calls) and self.calls[self.i][:2] == self.keys[item]:
                    self.matched.append((self.i, item))
                    self.i += 1
                return True
            if self.keys[item] != head:
                return False
            self.matched.append((self.i, item))
            self.i += 1
            return True
        if isinstance(item, Loop):
            body_first = self.first(item.body)
            while self.i < len(self.calls) and self.calls[self.i][:2] in body_first:
                start = self.i
                if not self.seq(item.body):
                    return False
                if self.i == start:
                    break
            return True
        for _, case in item.cases:
            if head in self.first(case):
                return self.seq(case)
        if item.default is not None and head in self.first(item.default):
            return self.seq(item.default)
        return True


_STRUCTURE_KINDS = frozenset({"loop", "branch", "output"})
_PRECEDENCE: tuple[NodeState, ...] = ("waiting", "failed", "done")


def _descendants(item: Item) -> Iterator[str]:
    if isinstance(item, str):
        yield item
    elif isinstance(item, Loop):
        for sub in item.body:
            yield from _descendants(sub)
    else:
        for _, seq in item.cases:
            for sub in seq:
                yield from _descendants(sub)
        for sub in item.default or ():
            yield from _descendants(sub)


def _containers(seq: tuple[Item, ...]) -> Iterator[Loop | Branch]:
    for item in seq:
        if isinstance(item, Loop | Branch):
            yield item
            inner = (
                item.body
                if isinstance(item, Loop)
                else tuple(i for _, s in item.cases for i in s) + (item.default or ())
            )
            yield from _containers(inner)


def overlay(graph: FlowGraph, detail: RunDetail) -> RunOverlay:
    """Lay a run's progress over ``graph``: ``done``, ``waiting`` or ``failed`` per node.

    Builder graphs are matched structurally (so loop iterations land on their body nodes);
    other graphs map each call to the node of its key base.
    """
    calls = _observed(detail)
    states: dict[str, NodeState] = {}
    counts: dict[str, int] = {}
    ids = {n.id for n in graph.nodes}
    if graph.source == "builder" and graph.tree:
        matcher = _TreeMatcher(graph, calls)
        matcher.seq(graph.tree)
        pairs = [(calls[i], nid) for i, nid in matcher.matched]
    else:
        pairs = [(c, node_id(c[0], c[1])) for c in calls if node_id(c[0], c[1]) in ids]
    maps = {n.id for n in graph.nodes if n.kind == "map"}
    for (_, _, state), nid in pairs:
        if state != "waiting":
            counts[nid] = counts.get(nid, 0) + 1
        if nid in maps and nid in states:  # a map's items: waiting, else failed, else done
            state = min(state, states[nid], key=_PRECEDENCE.index)
        states[nid] = state  # the latest call of a node (loop iteration) wins
    for container in _containers(graph.tree if graph.source == "builder" else ()):
        inner = {states[d] for d in _descendants(container) if d in states}
        for wanted in _PRECEDENCE:
            if wanted in inner:
                states[container.id] = wanted
                break
    if detail.run.status is RunStatus.DONE and OUTPUT in ids:
        states[OUTPUT] = "done"
        counts[OUTPUT] = 1
    return RunOverlay(
        run_id=str(detail.run.id),
        status=detail.run.status.value,
        states=states,
        counts=counts,
        error=detail.run.error,
    )


def graph_from_history(detail: RunDetail) -> FlowGraph:
    """The graph a run actually walked, from its memo rows and the call it waits on (works
    for any flow)."""
    calls = [CallTrace(kind, label) for kind, label, _ in _observed(detail)]
    return graph_from_calls(
        detail.run.name,
        detail.run.version,
        calls,
        finished=detail.run.status is RunStatus.DONE,
        source="history",
    )
