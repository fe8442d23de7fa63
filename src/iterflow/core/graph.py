"""``FlowGraph``: the step graph of a flow, whichever way it was written.

Three sources produce the same data structure:

* a built flow carries its **static** graph (``flow(...)...build().graph``), with explicit loop
  and branch nodes;
* :func:`iterflow.core.describe.describe` dry-runs a raw body and records its ``ctx`` calls;
* :func:`iterflow.core.progress.graph_from_history` reads the memo rows of any run.

Node ids are cursor-key bases (``charge``, ``sleep:cool-off``, ``signal:approve``,
``invoke:ship@1``; a builder ``map`` node's is the key base of its per-item calls), plus
``loop``/``branch`` ids for builder structure and ``output`` for the end. Graphs compare equal
on name, version, nodes (id, kind, label) and edges, so a flow written both ways yields equal
graphs. Rendering: :func:`to_mermaid`, :func:`to_json`, :func:`render`,
optionally with a run's progress (:func:`iterflow.core.progress.overlay`). Everything here is pure.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from iterflow.core.models import StepKind

__all__ = [
    "Branch",
    "CallTrace",
    "FlowGraph",
    "GraphEdge",
    "GraphNode",
    "Loop",
    "NodeKind",
    "NodeState",
    "RunOverlay",
    "graph_from_calls",
    "graph_from_tree",
    "map_call",
    "node_id",
    "render",
    "to_json",
    "to_mermaid",
]

NodeKind = Literal["step", "sleep", "signal", "loop", "branch", "invoke", "map", "output"]
NodeState = Literal["done", "waiting", "failed"]
OUTPUT = "output"

#: ``ctx`` call kinds that are graph nodes (``now``/``uuid``/``random``/``patch`` are not).
CALL_KINDS: Mapping[str, NodeKind] = {
    StepKind.STEP.value: "step",
    StepKind.SLEEP.value: "sleep",
    StepKind.SIGNAL.value: "signal",
    StepKind.INVOKE.value: "invoke",
}


@dataclass(frozen=True, slots=True)
class GraphNode:
    """One node. ``detail`` (durations, models, retries) is informative and not compared."""

    id: str
    kind: NodeKind
    label: str
    detail: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class GraphEdge:
    """A possible transition; ``label`` names a branch case or a loop's ``repeat``/``done``."""

    src: str
    dst: str
    label: str = ""


@dataclass(frozen=True, slots=True)
class Loop:
    """Structure of a builder loop: its node id and body."""

    id: str
    body: tuple[Item, ...]


@dataclass(frozen=True, slots=True)
class Branch:
    """Structure of a builder branch: its node id, cases and default (None = pass through)."""

    id: str
    cases: tuple[tuple[str, tuple[Item, ...]], ...]
    default: tuple[Item, ...] | None


#: A leaf node id, a loop or a branch.
Item = str | Loop | Branch


@dataclass(frozen=True)
class FlowGraph:
    """Nodes and edges of a flow; ``tree`` keeps a builder's nesting for run overlays."""

    name: str
    version: int
    nodes: tuple[GraphNode, ...]
    edges: tuple[GraphEdge, ...]
    source: Literal["builder", "describe", "history"] = field(default="builder", compare=False)
    tree: tuple[Item, ...] = field(default=(), compare=False, repr=False)
    truncated: bool = field(default=False, compare=False)
    note: str = field(default="", compare=False)

    def node(self, node_id: str) -> GraphNode:
        """The node with this id (``KeyError`` if none)."""
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)


@dataclass(frozen=True, slots=True)
class RunOverlay:
    """A run's progress on a graph: each reached node's state and how often it ran (built by
    :func:`iterflow.core.progress.overlay`)."""

    run_id: str
    status: str
    states: Mapping[str, NodeState]
    counts: Mapping[str, int]
    error: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class CallTrace:
    """One observed ``ctx`` call (from a dry run or a memo row)."""

    kind: str
    label: str
    detail: str = ""


def map_call(node: GraphNode) -> tuple[str, str]:
    """The ``(kind, label)`` of the call a builder ``map`` node makes once per item: a step
    labelled like the node (id = its label), or an invoke of the child flow (id
    ``invoke:<flow key>``, maybe ``#n``, label the flow key)."""
    invoke = StepKind.INVOKE.value
    if node.id.partition("#")[0] == node_id(invoke, node.label):
        return invoke, node.label
    return StepKind.STEP.value, node.label


def node_id(kind: str, label: str) -> str:
    """The node id of a call: its cursor-key base (same rule as :func:`replay.key_base`)."""
    if kind == StepKind.STEP.value:
        return label
    return f"{kind}:{label}" if label else kind


def _sorted_edges(nodes: Sequence[GraphNode], edges: Iterable[GraphEdge]) -> tuple[GraphEdge, ...]:
    order = {n.id: i for i, n in enumerate(nodes)}
    unique = dict.fromkeys(edges)
    return tuple(sorted(unique, key=lambda e: (order[e.src], order[e.dst], e.label)))


# --- construction -----------------------------------------------------------------------------


def graph_from_tree(
    name: str, version: int, nodes: Sequence[GraphNode], tree: tuple[Item, ...]
) -> FlowGraph:
    """A builder's static graph: ``tree`` is the top-level sequence (ending with ``output``)."""
    edges: list[GraphEdge] = []

    def wire_seq(seq: tuple[Item, ...], exit_id: str | None) -> str | None:
        entry = exit_id
        for item in reversed(seq):
            entry = wire_item(item, entry)
        return entry

    def wire_item(item: Item, next_id: str | None) -> str:
        if isinstance(item, str):
            if next_id is not None:
                edges.append(GraphEdge(item, next_id))
            return item
        if isinstance(item, Loop):
            body_entry = wire_seq(item.body, item.id)
            if body_entry is not None:
                edges.append(GraphEdge(item.id, body_entry, "repeat"))
            if next_id is not None:
                edges.append(GraphEdge(item.id, next_id, "done"))
            return item.id
        for key, seq in item.cases:
            target = wire_seq(seq, next_id)
            if target is not None:
                edges.append(GraphEdge(item.id, target, key))
        target = wire_seq(item.default or (), next_id)
        if target is not None:
            edges.append(GraphEdge(item.id, target, "default"))
        return item.id

    wire_seq(tree, None)
    return FlowGraph(
        name, version, tuple(nodes), _sorted_edges(nodes, edges), source="builder", tree=tree
    )


def graph_from_calls(
    name: str,
    version: int,
    calls: Sequence[CallTrace],
    *,
    finished: bool,
    source: Literal["describe", "history"],
    truncated: bool = False,
    note: str = "",
) -> FlowGraph:
    """A graph from calls in order: one node per key base (repeats fold into loops-as-cycles),
    an edge per observed transition, and ``output`` when the body returned."""
    nodes: dict[str, GraphNode] = {}
    edges: list[GraphEdge] = []
    prev: str | None = None
    for call in calls:
        kind = CALL_KINDS.get(call.kind)
        if kind is None:
            continue
        nid = node_id(call.kind, call.label)
        if nid not in nodes:
            nodes[nid] = GraphNode(nid, kind, call.label, call.detail)
        if prev is not None:
            edges.append(GraphEdge(prev, nid))
        prev = nid
    if finished:
        nodes[OUTPUT] = GraphNode(OUTPUT, "output", "")
        if prev is not None:
            edges.append(GraphEdge(prev, OUTPUT))
    ordered = tuple(nodes.values())
    return FlowGraph(
        name,
        version,
        ordered,
        _sorted_edges(ordered, edges),
        source=source,
        tree=tuple(nodes),
        truncated=truncated,
        note=note,
    )


# --- rendering --------------------------------------------------------------------------------

_SHAPES: Mapping[str, tuple[str, str]] = {
    "step": ("[", "]"),
    "sleep": ("([", "])"),
    "signal": ("[/", "/]"),
    "invoke": ("[[", "]]"),
    "map": ("[/", "\\]"),
    "loop": ("{{", "}}"),
    "branch": ("{", "}"),
    "output": ("((", "))"),
}
_CLASSES = {
    "done": "fill:#d4edda,stroke:#28a745",
    "waiting": "fill:#fff3cd,stroke:#d39e00",
    "failed": "fill:#f8d7da,stroke:#dc3545",
}


def _text(node: GraphNode) -> str:
    if node.kind == "step":
        text = node.label
    elif node.kind == "output":
        text = "output"
    else:
        text = f"{node.kind} {node.label}".strip()
    if node.detail:
        text = f"{text}<br/>{node.detail}"
    return text


def _quote(text: str) -> str:
    return '"' + text.replace('"', "#quot;") + '"'


def to_mermaid(graph: FlowGraph, run: RunOverlay | None = None) -> str:
    """A Mermaid ``flowchart``; with ``run``, nodes are classed ``done``/``waiting``/``failed``."""
    ids = {n.id: f"n{i}" for i, n in enumerate(graph.nodes)}
    lines = [f"%% {graph.name}@{graph.version} ({graph.source})", "flowchart TD"]
    for node in graph.nodes:
        left, right = _SHAPES[node.kind]
        text = _text(node)
        if run is not None and run.counts.get(node.id, 0) > 1:
            text = f"{text} (x{run.counts[node.id]})"
        lines.append(f"    {ids[node.id]}{left}{_quote(text)}{right}")
    for edge in graph.edges:
        arrow = f"-->|{_quote(edge.label)}|" if edge.label else "-->"
        lines.append(f"    {ids[edge.src]} {arrow} {ids[edge.dst]}")
    if graph.truncated:
        lines.append(f"    %% truncated: {graph.note or 'dry run stopped early'}")
    if run is not None:
        lines.append(f"    %% run {run.run_id}: {run.status}")
        for name, style in _CLASSES.items():
            members = [ids[n.id] for n in graph.nodes if run.states.get(n.id) == name]
            lines.append(f"    classDef {name} {style}")
            if members:
                lines.append(f"    class {','.join(members)} {name}")
    return "\n".join(lines) + "\n"


def to_json(graph: FlowGraph, run: RunOverlay | None = None) -> dict[str, Any]:
    """A JSON-ready dict: nodes, edges and, with ``run``, each node's state and count."""
    nodes = []
    for node in graph.nodes:
        item: dict[str, Any] = {
            "id": node.id,
            "kind": node.kind,
            "label": node.label,
            "detail": node.detail,
        }
        if run is not None:
            item["state"] = run.states.get(node.id)
            item["count"] = run.counts.get(node.id, 0)
        nodes.append(item)
    data: dict[str, Any] = {
        "name": graph.name,
        "version": graph.version,
        "source": graph.source,
        "truncated": graph.truncated,
        "nodes": nodes,
        "edges": [{"from": e.src, "to": e.dst, "label": e.label} for e in graph.edges],
    }
    if graph.note:
        data["note"] = graph.note
    if run is not None:
        data["run"] = {
            "id": run.run_id,
            "status": run.status,
            "error": dict(run.error) if run.error else None,
        }
    return data


def render(graph: FlowGraph, fmt: str = "mermaid", run: RunOverlay | None = None) -> str:
    """``mermaid`` or ``json`` text (what ``flowctl graph`` prints)."""
    if fmt == "json":
        return json.dumps(to_json(graph, run), indent=2) + "\n"
    if fmt == "mermaid":
        return to_mermaid(graph, run)
    raise ValueError(f"unknown graph format {fmt!r}; use 'mermaid' or 'json'")
