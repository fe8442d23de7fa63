"""Human-readable rendering of a run: its state, memo rows and events in time order."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from iterflow.core.models import RunDetail

__all__ = ["Span", "render_timeline", "run_spans"]


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=str, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_timeline(detail: RunDetail) -> str:
    """Render ``engine.status(...)`` as text: header, then steps and events by time."""
    run = detail.run
    lines = [
        f"run {run.id}  {run.name}@{run.version}  status={run.status.value}  claims={run.claims}",
    ]
    if run.tags:
        lines.append(f"  tags: {', '.join(run.tags)}")
    if "schedule_id" in run.meta:
        lines.append(f"  schedule: {run.meta['schedule_id']} tick {run.meta.get('scheduled_at')}")
    if run.error:
        lines.append(f"  error: [{run.error.get('code')}] {run.error.get('message')}")
        trace = run.error.get("traceback")
        if isinstance(trace, str) and trace:
            lines.append("  traceback (the innermost frames):")
            lines.extend(f"    {line}" for line in trace.rstrip("\n").splitlines())
    if run.output is not None:
        lines.append(f"  output: {_short(run.output, 120)}")
    entries: list[tuple[datetime, int, str]] = []
    for ev in detail.events:
        data = "" if ev.data is None else " " + _short(ev.data)
        entries.append((ev.at, 0, f"event  {ev.type}{data}"))
    for step in detail.steps:
        at = step.finished_at or run.created_at
        body = _short(step.output) if step.error is None else f"[{step.error.get('code')}]"
        entries.append(
            (
                at,
                1,
                f"{step.kind:<6} #{step.position} {step.cursor_key} {step.status} "
                f"(attempts {step.attempts}) {body}",
            )
        )
    entries.sort(key=lambda e: (e[0], e[1]))
    start = run.created_at
    for at, _, text in entries:
        lines.append(f"  +{(at - start).total_seconds():7.3f}s  {text}")
    return "\n".join(lines)


#: Events that end an attempt (the worker stops working on the run).
_ENDS = frozenset({"suspended", "completed", "failed", "canceled", "parked"})


@dataclass(frozen=True, slots=True)
class Span:
    """One bar of a run's timeline: an ``attempt`` (a worker at work) or a ``wait`` (the run
    suspended: ``label`` is the call it waits on). ``end`` is None while it lasts."""

    kind: Literal["attempt", "wait"]
    start: datetime
    end: datetime | None
    label: str = ""


def run_spans(detail: RunDetail) -> tuple[Span, ...]:
    """A run's attempts and waits in time order, from its events and memo rows.

    An attempt ends at a ``suspended``, terminal or ``parked`` event; the wait a suspension
    begins ends at the run's next activity (a step starting or finishing, or the next attempt's
    end): claims write no event, so that is when the next attempt is first seen.
    """
    run = detail.run
    activity = sorted(
        t for s in detail.steps for t in (s.started_at, s.finished_at) if t is not None
    )
    ends = sorted((e for e in detail.events if e.type in _ENDS), key=lambda e: (e.at, e.id))
    spans: list[Span] = []
    start: datetime | None = run.started_at or (activity[0] if activity else None)
    for event in ends:
        if start is None:  # canceled or parked while waiting: no attempt in between
            start = event.at
            if event.type != "suspended":
                break
            continue
        spans.append(Span("attempt", start, max(start, event.at), event.type))
        if event.type != "suspended":
            start = None
            break
        after = [t for t in activity if t > event.at]
        later = [e.at for e in ends if e.at > event.at]
        resumed = min(after + later, default=None)
        spans.append(Span("wait", event.at, resumed, event.cursor_key or ""))
        start = resumed
    if start is not None and not run.is_terminal and run.status.value == "running":
        spans.append(Span("attempt", start, None, "running"))
    return tuple(spans)
