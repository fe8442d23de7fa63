"""``flowctl show | explain``: one run in full, and why it is where it is.

``show`` prints the run's state and why it waits, its input, output and error (with the
traceback when the error carries one), tags, parent and children, and a count of its steps and
events; ``--steps`` adds every memo row with its attempts and duration, ``--events`` the event
timeline. Long values are cut with a marker saying how much was left out and that ``--full``
prints everything; ``--json`` is always complete. Times are ISO 8601 with their UTC offset.

The JSON shapes built here (:func:`run_data`, :func:`run_summary`) are also those of
``flowctl list`` and are documented in docs/operations.md. Text output goes through
:func:`~iterflow.cli.common.echo`, which escapes control characters: a tag, key or message cannot
drive the terminal or forge a line (``--json`` has the exact values).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from iterflow.cli.common import (
    Subparsers,
    echo,
    iso,
    open_engine,
    print_json,
    schema_option,
    wants_json,
)

if TYPE_CHECKING:
    from iterflow.core.explain import Explanation
    from iterflow.core.models import EventRecord, RunDetail, RunRecord, StepRecord
    from iterflow.runtime.engine import Engine

__all__ = [
    "CHILDREN_SHOWN",
    "TEXT_LIMIT",
    "clip",
    "explanation_data",
    "register",
    "run_data",
    "run_summary",
]

#: Characters of one value (input, output, error message, traceback) printed without --full.
TEXT_LIMIT = 2000
#: Characters of a step's output or an event's data on its one line, without --full.
CELL_LIMIT = 100
#: Children listed without --full.
CHILDREN_SHOWN = 20


def register(subparsers: Subparsers) -> None:
    """Add ``show`` and ``explain``."""
    parents = [schema_option()]
    show = subparsers.add_parser(
        "show",
        parents=parents,
        help="a run in full: state and why it waits, input, output, error, children, steps",
    )
    show.add_argument("run_id")
    show.add_argument(
        "--steps", action="store_true", help="list every step with its attempts and duration"
    )
    show.add_argument("--events", action="store_true", help="list the run's event timeline")
    show.add_argument("--full", action="store_true", help="print long values uncut")
    show.set_defaults(func=_show)

    explain = subparsers.add_parser(
        "explain",
        parents=parents,
        help="what a run is doing or waiting for, what wakes it, what the reconciler would do",
    )
    explain.add_argument("run_id")
    explain.set_defaults(func=_explain)


# --- JSON shapes -------------------------------------------------------------------------------


def run_summary(run: RunRecord) -> dict[str, Any]:
    """A run as ``flowctl list --json`` prints it (no input or output)."""
    error = run.error or {}
    return {
        "id": str(run.id),
        "flow": run.name,
        "version": run.version,
        "status": run.status.value,
        "tags": list(run.tags),
        "idempotency_key": run.idempotency_key,
        "parent_run_id": None if run.parent_run_id is None else str(run.parent_run_id),
        "waiting_for": run.waiting_for,
        "wake_at": iso(run.wake_at),
        "error_code": error.get("code"),
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "updated_at": iso(run.updated_at),
        "cursor": run.seq,
    }


def run_data(run: RunRecord) -> dict[str, Any]:
    """A run as ``flowctl show --json`` prints it: :func:`run_summary` plus the rest."""
    return {
        **run_summary(run),
        "input": run.input,
        "output": run.output,
        "error": run.error,
        "parent_cursor_key": run.parent_cursor_key,
        "priority": run.priority,
        "claims": run.claims,
        "stalled_claims": run.stalled_claims,
        "lease_owner": run.lease_owner,
        "lease_expires_at": iso(run.lease_expires_at),
        "meta": run.meta,
    }


def _duration(step: StepRecord) -> float | None:
    if step.started_at is None or step.finished_at is None:
        return None
    return round((step.finished_at - step.started_at).total_seconds(), 6)


def _step_data(step: StepRecord) -> dict[str, Any]:
    return {
        "position": step.position,
        "cursor_key": step.cursor_key,
        "kind": step.kind.value,
        "label": step.label,
        "status": step.status.value,
        "attempts": step.attempts,
        "started_at": iso(step.started_at),
        "finished_at": iso(step.finished_at),
        "duration_seconds": _duration(step),
        "output": step.output,
        "error": step.error,
    }


def _event_data(event: EventRecord) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.type,
        "cursor_key": event.cursor_key,
        "data": event.data,
        "at": iso(event.at),
    }


def explanation_data(explanation: Explanation) -> dict[str, Any]:
    """An :class:`~iterflow.core.explain.Explanation` as JSON."""
    return {
        "state": explanation.state,
        "summary": explanation.summary,
        "wakes_at": iso(explanation.wakes_at),
        "wakes_on": explanation.wakes_on,
        "reconciler": explanation.reconciler,
        "detail": explanation.detail,
    }


# --- text --------------------------------------------------------------------------------------


def clip(text: str, limit: int, full: bool) -> str:
    """``text``, or its first ``limit`` characters and a marker saying what was left out."""
    if full or len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit} more characters; --full prints all]"


def _value(value: Any, full: bool) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return clip(text, TEXT_LIMIT, full)


def _cell(value: Any, full: bool) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))
    return clip(text, CELL_LIMIT, full)


def _indent(text: str, prefix: str = "    ") -> list[str]:
    """The lines of a multi-line block (a JSON value, a traceback), indented."""
    return [prefix + line for line in text.split("\n")]


def _traceback(error: dict[str, Any]) -> str | None:
    found = error.get("traceback")
    cause = error.get("cause")
    if found is None and isinstance(cause, dict):
        found = cause.get("traceback")
    if isinstance(found, list):
        found = "".join(str(line) for line in found)
    return None if found is None else str(found)


def _error_lines(error: dict[str, Any], full: bool) -> list[str]:
    lines = [
        f"error: [{error.get('code')}] {clip(str(error.get('message', '')), TEXT_LIMIT, full)}"
    ]
    cause = error.get("cause")
    if isinstance(cause, dict):
        message = clip(str(cause.get("message", "")), TEXT_LIMIT, full)
        lines.append(f"  cause: {cause.get('type')}: {message}")
    if error.get("details"):
        lines.append("  details:")
        lines += _indent(_value(error["details"], full))
    trace = _traceback(error)
    if trace:
        lines.append("  traceback:")
        lines += _indent(clip(trace.rstrip("\n"), TEXT_LIMIT, full))
    return lines


def _header(run: RunRecord, explanation: Explanation) -> list[str]:
    lines = [
        f"run {run.id}  {run.name}@{run.version}  status={run.status.value}  "
        f"claims={run.claims}  priority={run.priority}",
        f"  why: {explanation.summary}",
    ]
    if explanation.wakes_on:
        wakes = f"  wakes on: {explanation.wakes_on}"
        if explanation.wakes_at is not None:
            wakes += f" (at {iso(explanation.wakes_at)})"
        lines.append(wakes)
    if explanation.reconciler:
        lines.append(f"  reconciler: {explanation.reconciler}")
    if run.waiting_for is not None or run.wake_at is not None:
        lines.append(f"  waiting_for: {run.waiting_for or '-'}  wake_at: {iso(run.wake_at) or '-'}")
    times = [f"created {iso(run.created_at)}"]
    if run.started_at is not None:
        times.append(f"started {iso(run.started_at)}")
    if run.finished_at is not None:
        times.append(f"finished {iso(run.finished_at)}")
    lines.append("  " + "  ".join(times))
    if run.lease_owner is not None:
        lines.append(f"  lease: {run.lease_owner} until {iso(run.lease_expires_at)}")
    if run.tags:
        lines.append(f"  tags: {', '.join(run.tags)}")
    if run.idempotency_key is not None:
        lines.append(f"  idempotency key: {run.idempotency_key}")
    if run.parent_run_id is not None:
        lines.append(f"  parent: {run.parent_run_id} (at {run.parent_cursor_key})")
    if "forked_from" in run.meta:
        step = run.meta.get("fork_step") or "its retry point"
        lines.append(f"  forked from: {run.meta['forked_from']} at {step}")
    if "schedule_id" in run.meta:
        lines.append(f"  schedule: {run.meta['schedule_id']} tick {run.meta.get('scheduled_at')}")
    return lines


def _steps(detail: RunDetail, full: bool) -> list[str]:
    lines = [f"steps ({len(detail.steps)}):"]
    for step in detail.steps:
        seconds = _duration(step)
        took = "-" if seconds is None else f"{seconds:.3f}s"
        body = _cell(step.output, full) if step.error is None else f"[{step.error.get('code')}]"
        lines.append(
            f"  #{step.position:<3} {step.cursor_key}  {step.kind.value} {step.status.value}  "
            f"attempts={step.attempts}  took={took}  at {iso(step.finished_at)}  {body}"
        )
    return lines


def _events(detail: RunDetail, full: bool) -> list[str]:
    lines = [f"events ({len(detail.events)}):"]
    for event in detail.events:
        key = f" {event.cursor_key}" if event.cursor_key else ""
        data = "" if event.data is None else "  " + _cell(event.data, full)
        lines.append(f"  {iso(event.at)}  {event.type}{key}{data}")
    return lines


async def _children(engine: Engine, run: RunRecord, limit: int) -> tuple[list[RunRecord], int]:
    page = await engine.list_runs(parent=run.id, limit=limit, oldest_first=True)
    if page.next_cursor is None:
        return list(page.runs), len(page.runs)
    counts = await engine.count_runs(parent=run.id)
    return list(page.runs), sum(counts.values())


async def _show(args: argparse.Namespace) -> None:
    async with open_engine(args) as engine:
        detail = await engine.status(args.run_id)
        explanation = await engine.explain(detail.run.id)
        run = detail.run
        as_json = wants_json(args)
        shown = 1000 if as_json or args.full else CHILDREN_SHOWN
        children, total_children = await _children(engine, run, shown)
    if as_json:
        print_json(
            {
                "run": run_data(run),
                "explanation": explanation_data(explanation),
                "children": [run_summary(c) for c in children],
                "children_total": total_children,
                "steps": [_step_data(s) for s in detail.steps],
                "events": [_event_data(e) for e in detail.events],
                "signals": [
                    {
                        "id": g.id,
                        "name": g.name,
                        "payload": g.payload,
                        "idempotency_key": g.idempotency_key,
                        "received_at": iso(g.received_at),
                        "consumed_by": g.consumed_by,
                        "consumed_at": iso(g.consumed_at),
                    }
                    for g in detail.signals
                ],
                "timers": [
                    {
                        "cursor_key": t.cursor_key,
                        "fire_at": iso(t.fire_at),
                        "fired_at": iso(t.fired_at),
                    }
                    for t in detail.timers
                ],
            }
        )
        return
    full = bool(args.full)
    lines = _header(run, explanation)
    lines += ["input:", *_indent(_value(run.input, full))]
    if run.output is not None:
        lines += ["output:", *_indent(_value(run.output, full))]
    if run.error:
        lines += _error_lines(run.error, full)
    if children:
        lines.append(f"children ({total_children}):")
        for child in children:
            lines.append(
                f"  {child.id}  {child.name}@{child.version}  {child.status.value}  "
                f"at {child.parent_cursor_key}"
            )
        if total_children > len(children):
            lines.append(
                f"  … {total_children - len(children)} more: flowctl list --parent {run.id} "
                "(or show --full)"
            )
    if args.steps:
        lines += _steps(detail, full)
    else:
        last = f", last {detail.steps[-1].cursor_key}" if detail.steps else ""
        lines.append(f"steps: {len(detail.steps)}{last} (--steps lists them)")
    if args.events:
        lines += _events(detail, full)
    else:
        lines.append(f"events: {len(detail.events)} (--events lists them)")
    echo(*lines)


async def _explain(args: argparse.Namespace) -> None:
    async with open_engine(args) as engine:
        explanation = await engine.explain(args.run_id)
        run = await engine.status(args.run_id)
        workers = await engine.workers()
    key = f"{run.run.name}@{run.run.version}"
    serving = [w.id for w in workers if not w.stale and key in w.flows]
    if wants_json(args):
        print_json(
            {
                "run_id": str(run.run.id),
                "flow": run.run.name,
                "version": run.run.version,
                "status": run.run.status.value,
                **explanation_data(explanation),
                "workers": {
                    "registered": len(workers),
                    "live": sum(not w.stale for w in workers),
                    "serving": serving,
                },
            }
        )
        return
    lines = [
        f"run {run.run.id}  {key}  status={run.run.status.value}  state={explanation.state}",
        f"  {explanation.summary}",
    ]
    if explanation.wakes_on:
        at = "" if explanation.wakes_at is None else f" (at {iso(explanation.wakes_at)})"
        lines.append(f"  wakes on: {explanation.wakes_on}{at}")
    if explanation.reconciler:
        lines.append(f"  reconciler: {explanation.reconciler}")
    if explanation.detail:
        lines.append(f"  detail: {clip(explanation.detail, TEXT_LIMIT, False)}")
    live = sum(not w.stale for w in workers)
    if serving:
        lines.append(f"  workers: {len(serving)} of {live} live worker(s) run {key}")
    else:
        lines.append(f"  workers: none of {live} live worker(s) runs {key}")
    echo(*lines)
