"""Human-readable rendering of a run: its state, memo rows and events in time order."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from iterflow.core.models import RunDetail

__all__ = ["render_timeline"]


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
