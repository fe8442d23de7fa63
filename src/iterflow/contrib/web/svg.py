"""Inline SVG for the run page: the step graph with a run's progress, and the timeline.

Server-rendered, no JavaScript and no external library: nodes are laid out top to bottom in the
graph's order (a flow's call order), forward edges between neighbours are straight, every other
edge (a branch skipping ahead, a loop's ``repeat``) is an arc on the right. Every text is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from iterflow.contrib.web.html import esc
from iterflow.core.graph import FlowGraph, GraphNode, RunOverlay
from iterflow.core.models import StepRecord
from iterflow.core.timeline import Span

__all__ = ["graph_svg", "timeline_svg"]

_NODE_W, _NODE_H, _GAP, _PAD = 240, 34, 22, 12


def _node_text(node: GraphNode) -> str:
    if node.kind == "step":
        return node.label
    if node.kind == "output":
        return "output"
    return f"{node.kind} {node.label}".strip()


def graph_svg(graph: FlowGraph, run: RunOverlay | None = None) -> str:
    """``<svg id="graph">`` with one ``g.node[data-state]`` per node (``done``, ``failed``,
    ``waiting``, ``running`` or ``pending``) and its run count when it ran more than once."""
    index = {n.id: i for i, n in enumerate(graph.nodes)}
    arcs = [e for e in graph.edges if index.get(e.dst, -1) != index.get(e.src, -2) + 1]
    width = _PAD * 2 + _NODE_W + 40 + 18 * len(arcs)
    height = _PAD * 2 + len(graph.nodes) * (_NODE_H + _GAP)
    parts = [
        f'<svg id="graph" xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" '
        f'aria-label="{esc(f"step graph of {graph.name}@{graph.version}")}">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z"/>'
        "</marker></defs>",
    ]

    def top(i: int) -> int:
        return _PAD + i * (_NODE_H + _GAP)

    right = _PAD + _NODE_W
    for k, edge in enumerate(graph.edges):
        if edge.src not in index or edge.dst not in index:
            continue
        a, b = index[edge.src], index[edge.dst]
        cx = _PAD + _NODE_W // 2
        label = f"<title>{esc(edge.label)}</title>" if edge.label else ""
        if b == a + 1:
            y1, y2 = top(a) + _NODE_H, top(b)
            parts.append(
                f'<g class="edge"><line x1="{cx}" y1="{y1}" x2="{cx}" y2="{y2}" '
                f'marker-end="url(#arrow)"/>{label}</g>'
            )
            if edge.label:
                parts.append(
                    f'<text class="edge-label" x="{cx + 6}" y="{(y1 + y2) // 2 + 4}">'
                    f"{esc(edge.label)}</text>"
                )
            continue
        out = right + 20 + 18 * (arcs.index(edge) if edge in arcs else k)
        y1, y2 = top(a) + _NODE_H // 2, top(b) + _NODE_H // 2
        parts.append(
            f'<g class="edge"><path d="M {right} {y1} H {out} V {y2} H {right}" fill="none" '
            f'marker-end="url(#arrow)"/>{label}</g>'
        )
        if edge.label:
            parts.append(
                f'<text class="edge-label" x="{out + 3}" y="{(y1 + y2) // 2}">'
                f"{esc(edge.label)}</text>"
            )
    for i, node in enumerate(graph.nodes):
        state = "pending"
        count = 0
        if run is not None:
            state = run.states.get(node.id, "pending")
            if state == "waiting" and run.status == "running":
                state = "running"
            count = run.counts.get(node.id, 0)
        text = _node_text(node)
        if count > 1:
            text = f"{text} x{count}"
        shown = text if len(text) <= 34 else text[:33] + "…"
        title = text if not node.detail else f"{text}\n{node.detail}"
        y = top(i)
        parts.append(
            f'<g class="node kind-{esc(node.kind)}" data-node-id="{esc(node.id)}" '
            f'data-state="{esc(state)}"><title>{esc(title)} ({esc(state)})</title>'
            f'<rect x="{_PAD}" y="{y}" width="{_NODE_W}" height="{_NODE_H}" rx="6"/>'
            f'<text x="{_PAD + 10}" y="{y + _NODE_H // 2 + 5}">{esc(shown)}</text></g>'
        )
    if graph.truncated:
        parts.append(
            f'<text class="note" x="{_PAD}" y="{height - 2}">'
            f"{esc(graph.note or 'truncated')}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _x(at: datetime, t0: datetime, span: float, width: int) -> float:
    return round((at - t0).total_seconds() / span * width, 1) if span > 0 else 0.0


def timeline_svg(
    spans: Sequence[Span], steps: Sequence[StepRecord], *, start: datetime, end: datetime
) -> str:
    """The run's attempts (bars) and waits (gaps, dashed) on one row, then one row per step
    (its last attempt's bar, with its attempt count), scaled from ``start`` to ``end``."""
    width, row, label_w = 640, 22, 170
    total = max((end - start).total_seconds(), 0.001)
    rows = 1 + len(steps)
    height = rows * row + 24
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{label_w + width + 10}" '
        f'height="{height}" role="img" aria-label="timeline">',
        f'<text class="axis" x="{label_w}" y="{height - 6}">{esc(start.isoformat("T", "seconds"))}'
        f'</text><text class="axis" x="{label_w + width}" y="{height - 6}" text-anchor="end">'
        f"+{total:.3f}s</text>",
        f'<text x="4" y="{row - 7}">attempts</text>',
    ]
    for span in spans:
        x1 = _x(span.start, start, total, width)
        x2 = _x(span.end or end, start, total, width)
        w = max(x2 - x1, 2.0)
        cls = "attempt" if span.kind == "attempt" else "wait"
        title = f"{span.kind} {span.label}".strip()
        until = span.end.isoformat("T", "seconds") if span.end else "now"
        parts.append(
            f'<g class="span {cls}"><title>{esc(title)}: '
            f"{esc(span.start.isoformat('T', 'seconds'))} → {esc(until)}</title>"
            f'<rect x="{label_w + x1}" y="4" width="{w}" height="{row - 8}" rx="3"/></g>'
        )
    for i, step in enumerate(steps, start=1):
        y = i * row
        name = step.cursor_key if len(step.cursor_key) <= 24 else step.cursor_key[:23] + "…"
        parts.append(f'<text x="4" y="{y + row - 7}">{esc(name)}</text>')
        began = step.started_at or step.finished_at
        if began is None:
            continue
        x1 = _x(began, start, total, width)
        x2 = _x(step.finished_at or end, start, total, width)
        tries = f", {step.attempts} attempts" if step.attempts > 1 else ""
        parts.append(
            f'<g class="span step status-{esc(step.status)}"><title>{esc(step.cursor_key)} '
            f"{esc(step.status)}{esc(tries)}</title>"
            f'<rect x="{label_w + x1}" y="{y + 4}" width="{max(x2 - x1, 2.0)}" '
            f'height="{row - 8}" rx="3"/></g>'
        )
    parts.append("</svg>")
    return "".join(parts)
