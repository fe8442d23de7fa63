"""The dashboard's read pages: the runs list, a run, a value on demand, the schedules.

Every page reads through the engine's public API (``list_runs``, ``count_runs``, ``status``,
``list_schedules``...), escapes every value it shows (:func:`~iterflow.contrib.web.html.esc`) and,
in redact mode, shows no payload: inputs, outputs, step values, signal payloads, error details
and event data are replaced by a note, and the value route answers 403.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from iterflow.contrib.web.actions import (
    bulk_form_html,
    run_actions_html,
    schedule_actions_html,
)
from iterflow.contrib.web.filters import FILTER_PARAMS, FilterError, list_filters
from iterflow.contrib.web.html import esc, fmt_time, href, page, status_badge
from iterflow.contrib.web.live import Position
from iterflow.contrib.web.security import can
from iterflow.contrib.web.state import DashboardEngine, get_state
from iterflow.contrib.web.svg import graph_svg, timeline_svg
from iterflow.core.errors import FlowError, RunNotFound
from iterflow.core.explain import explain, humanize
from iterflow.core.graph import FlowGraph
from iterflow.core.models import RunDetail, RunRecord, RunStatus
from iterflow.core.progress import graph_from_history, overlay
from iterflow.core.schedule import next_tick, parse_schedule
from iterflow.core.scheduling import ScheduleRecord
from iterflow.core.timeline import run_spans

__all__ = [
    "page_routes",
    "preview",
    "served_callback",
]

#: Characters of a value shown inline before it is cut (the full value is one click away).
PREVIEW_CHARS = 300
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
_REDACTED = '<span class="redacted" data-testid="redacted">redacted</span>'


# -- the runs list ---------------------------------------------------------------------------


def _query(request: Request) -> dict[str, str | list[str]]:
    """The filter part of the current query string (for links that keep the filter)."""
    q = request.query_params
    kept: dict[str, str | list[str]] = {}
    for param in FILTER_PARAMS:
        values = [v for v in q.getlist(param) if v.strip()]
        if values:
            kept[param] = values if param in ("status", "tag") else values[0]
    if q.get("sort") == "created":
        kept["sort"] = "created"
    if (limit := q.get("limit")) and limit != str(DEFAULT_LIMIT):
        kept["limit"] = limit
    return kept


def _limit(request: Request) -> int:
    raw = request.query_params.get("limit", "").strip()
    if not raw:
        return DEFAULT_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise FilterError(f"limit must be an integer between 1 and {MAX_LIMIT}")
    return int(raw)


def _cursor(request: Request) -> int | None:
    raw = request.query_params.get("cursor", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or len(raw) > 19:
        raise FilterError("cursor must be the next-page cursor of a previous page")
    return int(raw)


def _filter_form(request: Request, error: str) -> str:
    q = request.query_params
    state = get_state(request)
    chosen = set(q.getlist("status"))
    boxes = "".join(
        f'<label class="check"><input type="checkbox" name="status" value="{esc(s.value)}"'
        f"{' checked' if s.value in chosen else ''}> {esc(s.value)}</label>"
        for s in RunStatus
    )
    flows = sorted({f.name for f in state.engine.registry.all()})
    datalist = "".join(f'<option value="{esc(name)}">' for name in flows)

    def field(name: str, label: str, placeholder: str = "", value: str | None = None) -> str:
        shown = q.get(name, "") if value is None else value
        datalist_attr = ' list="flows"' if name == "flow" else ""
        return (
            f'<label>{esc(label)} <input name="{esc(name)}" value="{esc(shown)}" '
            f'placeholder="{esc(placeholder)}"'
            f"{datalist_attr}></label>"
        )

    tags = [t for t in q.getlist("tag") if t.strip()] + [""]
    tag_inputs = "".join(field("tag", "tag", "customer:42", value=t) for t in tags)
    sort = q.get("sort", "-created")
    order = "".join(
        f'<option value="{v}"{" selected" if sort == v else ""}>{label}</option>'
        for v, label in (("-created", "newest first"), ("created", "oldest first"))
    )
    problem = f'<p class="error" data-testid="filter-error">{esc(error)}</p>' if error else ""
    return f"""<form id="filters" method="get" action="{esc(href(request, "/"))}">
<datalist id="flows">{datalist}</datalist>
<div class="row">{field("flow", "flow")}{field("version", "version", "2")}
{field("q", "run id", "3fa85f64")}{field("key", "idempotency key")}</div>
<div class="row statuses">{boxes}</div>
<div class="row">{tag_inputs}{field("parent", "parent run")}{field("schedule", "schedule")}</div>
<div class="row">{field("created_after", "created ≥", "2026-01-31T09:00Z")}
{field("created_before", "created <")}{field("finished_after", "finished ≥")}
{field("finished_before", "finished <")}</div>
<div class="row"><label>order <select name="sort">{order}</select></label>
<label>per page <input name="limit" value="{esc(q.get("limit", ""))}"
placeholder="{DEFAULT_LIMIT}" size="4"></label>
<button type="submit">Filter</button> <a href="{esc(href(request, "/"))}">reset</a></div>
{problem}
</form>"""


def _counts_html(request: Request, counts: Mapping[RunStatus, int]) -> str:
    query = _query(request)
    query.pop("status", None)
    items = []
    for status in RunStatus:
        link = href(request, "/", **{**query, "status": [status.value]})
        items.append(
            f'<li><a href="{esc(link)}">{status_badge(status.value)}</a> '
            f'<span class="count" data-status="{esc(status.value)}">'
            f"{counts.get(status, 0)}</span></li>"
        )
    total = sum(counts.values())
    items.append(f'<li>all <span class="count" data-status="all">{total}</span></li>')
    return f'<ul class="counts" data-testid="status-counts">{"".join(items)}</ul>'


def _run_row(request: Request, run: RunRecord) -> str:
    link = href(request, f"/runs/{run.id}")
    tags = " ".join(f'<span class="tag">{esc(t)}</span>' for t in run.tags)
    return (
        f'<tr data-run-id="{esc(run.id)}" data-status="{esc(run.status.value)}">'
        f'<td><a class="run-link" href="{esc(link)}"><code>{esc(run.id)}</code></a></td>'
        f"<td>{esc(run.name)}@{esc(run.version)}</td>"
        f'<td data-testid="run-status">{esc(run.status.value)}</td>'
        f"<td>{fmt_time(run.created_at)}</td><td>{fmt_time(run.finished_at)}</td>"
        f"<td>{tags}</td></tr>"
    )


def _runs_table(
    request: Request, runs: tuple[RunRecord, ...] | list[RunRecord], *, attrs: str = 'id="runs"'
) -> str:
    rows = "".join(_run_row(request, r) for r in runs)
    empty = '<tr class="empty"><td colspan="6">no runs</td></tr>' if not runs else ""
    return (
        f'<table {attrs} class="grid"><thead><tr><th>run</th><th>flow</th><th>status</th>'
        f"<th>created</th><th>finished</th><th>tags</th></tr></thead><tbody>{rows}{empty}"
        "</tbody></table>"
    )


async def runs_list(request: Request) -> Response:
    """GET ``/``: the runs list for the filter in the query string."""
    engine = get_state(request).engine
    since = await Position.now(engine)  # before reading: later changes reach app.js
    error = ""
    counts: Mapping[RunStatus, int] = {}
    runs: tuple[RunRecord, ...] = ()
    next_cursor: int | None = None
    try:
        filters = list_filters(request)
        limit, cursor = _limit(request), _cursor(request)
        oldest = request.query_params.get("sort") == "created"
        page_ = await engine.list_runs(**filters, limit=limit, cursor=cursor, oldest_first=oldest)
        runs, next_cursor = page_.runs, page_.next_cursor
        counts = await engine.count_runs(**{k: v for k, v in filters.items() if k != "status"})
    except FilterError as exc:
        error = str(exc)
    except FlowError as exc:
        if exc.error_code != "INPUT_INVALID":
            raise
        error = exc.message
    nav = []
    if request.query_params.get("cursor"):
        nav.append(f'<a rel="first" href="{esc(href(request, "/", **_query(request)))}">first</a>')
    if next_cursor is not None:
        link = href(request, "/", **_query(request), cursor=str(next_cursor))
        nav.append(f'<a rel="next" href="{esc(link)}">next page →</a>')
    start = (
        f' <a class="start-link" data-testid="start-link" href="{esc(href(request, "/start"))}">'
        "Start a run</a>"
        if await can(request, "start")
        else ""
    )
    body = (
        f'<h1>Runs{start}</h1><div class="layout-list" data-since="{since}">'
        f"{_filter_form(request, error)}"
        f"{_counts_html(request, counts)}"
        f"{await bulk_form_html(request) if not error else ''}"
        f'{_runs_table(request, runs)}<nav class="pages">{" ".join(nav)}</nav></div>'
    )
    return page(request, title="Runs", body=body, status_code=422 if error else 200)


# -- values ----------------------------------------------------------------------------------


def _dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=None, default=str, sort_keys=False)


def preview(request: Request, value: Any, *, run_id: uuid.UUID, what: str) -> str:
    """A value shown inline: JSON, cut at :data:`PREVIEW_CHARS` with its size and a link to
    the full value; ``redacted`` in redact mode."""
    if get_state(request).redact:
        return _REDACTED
    if value is None:
        return '<span class="none">-</span>'
    text = _dump(value)
    if len(text) <= PREVIEW_CHARS:
        return f'<code class="value">{esc(text)}</code>'
    size = len(text.encode("utf-8", "surrogatepass"))
    link = href(request, f"/runs/{run_id}/value/{what}")
    return (
        f'<code class="value">{esc(text[:PREVIEW_CHARS])}…</code> '
        f'<span class="size">({size:,} bytes)</span> '
        f'<a class="full-value" href="{esc(link)}">full value</a>'
    )


def _error_html(
    request: Request, error: Mapping[str, Any] | None, *, run_id: uuid.UUID, what: str
) -> str:
    if not error:
        return '<span class="none">-</span>'
    code = f'<span class="code">{esc(error.get("code", ""))}</span>'
    if get_state(request).redact:
        return f"{code} {_REDACTED}"
    message = str(error.get("message", ""))
    short = message if len(message) <= PREVIEW_CHARS else message[:PREVIEW_CHARS] + "…"
    link = href(request, f"/runs/{run_id}/value/{what}")
    trace = error.get("traceback")
    shown = (
        f'<details class="traceback"><summary>traceback</summary>'
        f'<pre data-testid="traceback">{esc(trace)}</pre></details>'
        if isinstance(trace, str) and trace
        else ""
    )
    return (
        f'{code} <span class="message">{esc(short)}</span> '
        f'<a class="full-value" href="{esc(link)}">details</a>{shown}'
    )


async def value_page(request: Request) -> Response:
    """GET ``/runs/{run_id}/value/{what}``: a full value (``input``, ``output``, ``error``,
    ``step-<position>``, ``signal-<id>``); 403 in redact mode."""
    state = get_state(request)
    detail = await _detail(request)
    if detail is None:
        return _not_found(request)
    what = request.path_params["what"]
    if state.redact:
        body = f"<h1>Value {esc(what)}</h1><p>{_REDACTED}: the dashboard runs in redact mode.</p>"
        return page(request, title="Redacted", body=body, status_code=403)
    found, value = _value_of(detail, what)
    if not found:
        return page(
            request,
            title="Not found",
            body=f"<h1>No value {esc(what)} on this run</h1>",
            status_code=404,
        )
    text = json.dumps(value, ensure_ascii=False, indent=2, default=str)
    back = href(request, f"/runs/{detail.run.id}")
    body = (
        f'<h1>{esc(what)} of run <a href="{esc(back)}"><code>{esc(detail.run.id)}</code></a></h1>'
        f'<p class="size">{len(text.encode("utf-8", "surrogatepass")):,} bytes</p>'
        f'<pre class="value" data-testid="full-value">{esc(text)}</pre>'
    )
    return page(request, title=f"{what} of {detail.run.id}", body=body)


def _value_of(detail: RunDetail, what: str) -> tuple[bool, Any]:
    run = detail.run
    if what == "input":
        return True, run.input
    if what == "output":
        return True, run.output
    if what == "error":
        return run.error is not None, run.error
    kind, _, ref = what.partition("-")
    if kind == "step" and ref.isdigit():
        for step in detail.steps:
            if step.position == int(ref):
                return True, step.output if step.error is None else step.error
    if kind == "signal" and ref.isdigit():
        for signal in detail.signals:
            if signal.id == int(ref):
                return True, signal.payload
    return False, None


# -- a run -----------------------------------------------------------------------------------


async def served_callback(engine: DashboardEngine) -> Callable[[str, int], bool] | None:
    """Whether a live worker serves a flow version, for "why is it waiting" (None: unknown).

    Reads the worker registry (``engine.workers()``, stale workers left out); when it cannot be
    read, falls back to this process's ``engine.registry`` (a dashboard that registers the
    application's flows knows them; one that registers none says nothing about workers)."""
    try:
        live = await engine.workers()
    except FlowError:
        if not engine.registry.all():
            return None
        registry = engine.registry
        return lambda name, version: registry.get(name, version) is not None
    served = {flow for worker in live if not worker.stale for flow in worker.flows}
    return lambda name, version: f"{name}@{version}" in served


async def _detail(request: Request) -> RunDetail | None:
    raw = request.path_params["run_id"]
    try:
        run_id = uuid.UUID(raw)
    except ValueError:
        return None
    try:
        return await get_state(request).engine.status(run_id)
    except RunNotFound:
        return None


def _not_found(request: Request) -> Response:
    body = (
        '<h1>Run not found</h1><p data-testid="not-found">No run with this id. '
        f'<a href="{esc(href(request, "/"))}">All runs</a></p>'
    )
    return page(request, title="Run not found", body=body, status_code=404)


def _graph(engine: DashboardEngine, detail: RunDetail) -> FlowGraph:
    run = detail.run
    flow = engine.registry.get(run.name, run.version)
    static = getattr(flow, "graph", None)
    return static if isinstance(static, FlowGraph) else graph_from_history(detail)


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "-"
    seconds = (end - start).total_seconds()
    return f"{seconds:.3f}s" if seconds < 60 else humanize(end - start)


def _header(request: Request, detail: RunDetail, now: datetime) -> str:
    run = detail.run
    rows = [
        ("run id", f"<code>{esc(run.id)}</code>"),
        ("flow", f"{esc(run.name)}@{esc(run.version)}"),
        ("status", status_badge(run.status.value, testid="run-status")),
        ("claims", f"{run.claims} ({run.stalled_claims} without progress)"),
        ("created", fmt_time(run.created_at)),
        ("started", fmt_time(run.started_at)),
        ("finished", fmt_time(run.finished_at)),
        ("updated", fmt_time(run.updated_at)),
        ("duration", _duration(run.started_at or run.created_at, run.finished_at or now)),
    ]
    if run.idempotency_key is not None:
        rows.append(("idempotency key", f"<code>{esc(run.idempotency_key)}</code>"))
    if run.tags:
        rows.append(("tags", " ".join(f'<span class="tag">{esc(t)}</span>' for t in run.tags)))
    if run.priority:
        rows.append(("priority", esc(run.priority)))
    if run.parent_run_id is not None:
        link = href(request, f"/runs/{run.parent_run_id}")
        rows.append(
            (
                "parent",
                f'<a class="parent-link" data-testid="parent-link" href="{esc(link)}">'
                f"<code>{esc(run.parent_run_id)}</code></a> at {esc(run.parent_cursor_key)}",
            )
        )
    if (schedule := run.meta.get("schedule_id")) is not None:
        link = href(request, "/", schedule=str(schedule))
        rows.append(
            (
                "schedule",
                f'<a href="{esc(link)}">{esc(schedule)}</a> tick '
                f"{esc(run.meta.get('scheduled_at'))}",
            )
        )
    if run.lease_owner is not None:
        rows.append(("lease", f"{esc(run.lease_owner)} until {fmt_time(run.lease_expires_at)}"))
    cells = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv" id="header">{cells}</table>'


def _without_messages(run: RunRecord) -> RunRecord:
    """``run`` as redact mode explains it: the failed compensation's error message (a saga's
    ``details.compensation.failed.error``) hidden, its code kept, as the error cells do."""
    error = run.error or {}
    details = error.get("details")
    if not isinstance(details, dict):
        return run
    record = details.get("compensation")
    if not isinstance(record, dict) or not isinstance(record.get("failed"), dict):
        return run
    failed = record["failed"]
    cause = failed.get("error")
    code = cause.get("code") if isinstance(cause, dict) else None
    hidden = {**record, "failed": {**failed, "error": {"code": code, "message": "redacted"}}}
    return dataclasses.replace(run, error={**error, "details": {**details, "compensation": hidden}})


async def _why(request: Request, detail: RunDetail, now: datetime) -> str:
    state = get_state(request)
    run = _without_messages(detail.run) if state.redact else detail.run
    why = explain(run, now=now, served=await served_callback(state.engine))
    if run.is_terminal:
        outcome = f'<p class="outcome" data-testid="outcome">{esc(why.summary)}</p>'
        return outcome
    parts = [
        f'<p class="why" data-testid="why-waiting" data-state="{esc(why.state)}">'
        f"{esc(why.summary)}</p>",
        '<dl class="why-more">',
        f"<dt>wakes on</dt><dd>{esc(why.wakes_on)}</dd>",
    ]
    if why.wakes_at is not None:
        parts.append(f"<dt>wakes at</dt><dd>{fmt_time(why.wakes_at)}</dd>")
    parts.append(f"<dt>reconciler</dt><dd>{esc(why.reconciler)}</dd>")
    if why.detail:
        parts.append(f"<dt>detail</dt><dd>{_REDACTED if state.redact else esc(why.detail)}</dd>")
    parts.append("</dl>")
    return "".join(parts)


def _steps_table(request: Request, detail: RunDetail) -> str:
    rows = []
    rid = detail.run.id
    for s in detail.steps:
        what = f"step-{s.position}"
        value = (
            _error_html(request, s.error, run_id=rid, what=what)
            if s.error is not None
            else preview(request, s.output, run_id=rid, what=what)
        )
        rows.append(
            f'<tr data-position="{s.position}" data-status="{esc(s.status)}">'
            f"<td>{s.position}</td><td><code>{esc(s.cursor_key)}</code></td>"
            f"<td>{esc(s.kind)}</td><td>{status_badge(str(s.status))}</td>"
            f"<td>{s.attempts}</td><td>{fmt_time(s.started_at)}</td>"
            f"<td>{fmt_time(s.finished_at)}</td>"
            f"<td>{_duration(s.started_at, s.finished_at)}</td><td>{value}</td></tr>"
        )
    empty = '<tr class="empty"><td colspan="9">no steps recorded</td></tr>' if not rows else ""
    return (
        '<table id="steps" class="grid"><thead><tr><th>#</th><th>cursor key</th><th>kind</th>'
        "<th>status</th><th>attempts</th><th>started</th><th>finished</th><th>took</th>"
        f"<th>output / error</th></tr></thead><tbody>{''.join(rows)}{empty}</tbody></table>"
    )


def _signals_html(request: Request, detail: RunDetail) -> str:
    rows = []
    for sig in detail.signals:
        state = "consumed" if sig.consumed_by is not None else "buffered"
        by = (
            f"by <code>{esc(sig.consumed_by)}</code> at {fmt_time(sig.consumed_at)}"
            if sig.consumed_by is not None
            else "waiting in the inbox"
        )
        rows.append(
            f'<tr data-signal-id="{sig.id}" data-state="{state}"><td>{sig.id}</td>'
            f"<td>{esc(sig.name)}</td><td>{fmt_time(sig.received_at)}</td>"
            f"<td>{state}</td><td>{by}</td>"
            f"<td>{esc(sig.idempotency_key or '')}</td>"
            f"<td>{preview(request, sig.payload, run_id=detail.run.id, what=f'signal-{sig.id}')}"
            "</td></tr>"
        )
    empty = '<tr class="empty"><td colspan="7">no signals</td></tr>' if not rows else ""
    return (
        '<section id="signals"><h2>Signal inbox</h2><table class="grid"><thead><tr><th>id</th>'
        "<th>name</th><th>received</th><th>state</th><th></th><th>key</th><th>payload</th>"
        f"</tr></thead><tbody>{''.join(rows)}{empty}</tbody></table></section>"
    )


def _events_html(request: Request, detail: RunDetail) -> str:
    redact = get_state(request).redact
    rows = []
    for ev in detail.events:
        data = "" if ev.data is None else (_REDACTED if redact else esc(_dump(ev.data)))
        rows.append(
            f'<tr data-event="{esc(ev.type)}"><td>{fmt_time(ev.at)}</td><td>{esc(ev.type)}</td>'
            f"<td><code>{esc(ev.cursor_key or '')}</code></td><td>{data}</td></tr>"
        )
    return (
        '<section id="events"><h2>Events</h2><table class="grid"><thead><tr><th>at</th>'
        "<th>type</th><th>cursor key</th><th>data</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


async def _children_html(request: Request, detail: RunDetail) -> str:
    engine = get_state(request).engine
    children = await engine.list_runs(parent=detail.run.id, limit=MAX_LIMIT, oldest_first=True)
    more = ""
    if children.next_cursor is not None:
        link = href(request, "/", parent=str(detail.run.id), sort="created")
        more = f'<p><a href="{esc(link)}">all children</a></p>'
    table = _runs_table(request, children.runs, attrs='id="children-runs"')
    return f'<section id="children"><h2>Children</h2>{table}{more}</section>'


async def run_page(request: Request) -> Response:
    """GET ``/runs/{run_id}``: everything about one run."""
    state = get_state(request)
    since = await Position.now(state.engine)  # before reading: later changes reach app.js
    detail = await _detail(request)
    if detail is None:
        return _not_found(request)
    run = detail.run
    now = datetime.now(UTC)
    graph = _graph(state.engine, detail)
    spans = run_spans(detail)
    ends = [run.finished_at or now] + [s.end for s in spans if s.end is not None]
    end = max(e for e in ends if e is not None)
    rid = run.id
    values = (
        f'<section id="values"><h2>Input and result</h2><table class="kv">'
        f"<tr><th>input</th><td>{preview(request, run.input, run_id=rid, what='input')}</td></tr>"
        f"<tr><th>output</th><td>{preview(request, run.output, run_id=rid, what='output')}"
        "</td></tr>"
        f"<tr><th>error</th><td>{_error_html(request, run.error, run_id=rid, what='error')}</td>"
        "</tr></table></section>"
    )
    source = {"builder": "compiled graph", "describe": "dry run", "history": "as executed"}
    body = (
        f'<div class="run" data-run-id="{esc(rid)}" data-since="{since}">'
        f"<h1>{esc(run.name)}@{esc(run.version)} <small><code>{esc(rid)}</code></small></h1>"
        f"{_header(request, detail, now)}"
        f'<section id="why">{await _why(request, detail, now)}</section>'
        f'<section id="actions">{await run_actions_html(request, detail)}</section>'
        f"{values}"
        f'<section id="graph-section"><h2>Graph <small>'
        f"{esc(source.get(graph.source, graph.source))}</small></h2>"
        f"{graph_svg(graph, overlay(graph, detail))}</section>"
        f'<section id="timeline"><h2>Timeline</h2>'
        f"{timeline_svg(spans, detail.steps, start=run.created_at, end=end)}</section>"
        f"<section><h2>Steps</h2>{_steps_table(request, detail)}</section>"
        f"{_signals_html(request, detail)}"
        f"{await _children_html(request, detail)}"
        f"{_events_html(request, detail)}</div>"
    )
    return page(request, title=f"{run.name} {rid}", body=body)


# -- schedules -------------------------------------------------------------------------------


def _next_ticks(record: ScheduleRecord, count: int = 3) -> list[datetime]:
    if record.paused or record.next_tick is None:
        return []
    ticks = [record.next_tick]
    try:
        spec = parse_schedule(record.spec.cron, record.spec.tz)
        while len(ticks) < count:
            tick = next_tick(spec, ticks[-1])
            if record.spec.end_at is not None and tick > record.spec.end_at:
                break
            ticks.append(tick)
    except (FlowError, ValueError):
        pass
    return ticks


def _zone(tz: str) -> tzinfo:
    try:
        return ZoneInfo(tz)
    except (ValueError, ZoneInfoNotFoundError):
        return UTC


async def schedules_page(request: Request) -> Response:
    """GET ``/schedules``: every schedule, its next ticks, its last runs and its actions."""
    engine = get_state(request).engine
    schedules = await engine.list_schedules()
    cards = []
    for record in schedules:
        spec = record.spec
        recent = await engine.list_runs(schedule=spec.id, limit=5)
        zone = _zone(spec.tz)
        ticks = "".join(f"<li>{fmt_time(t.astimezone(zone))}</li>" for t in _next_ticks(record))
        runs = _runs_table(request, recent.runs, attrs='data-testid="last-runs"')
        more = href(request, "/", schedule=spec.id)
        forms = await schedule_actions_html(request, record)
        state = "paused" if record.paused else "active"
        cards.append(
            f'<section class="schedule" data-schedule-id="{esc(spec.id)}" '
            f'data-state="{state}"><h2>{esc(spec.id)} '
            f'<span class="status status-{state}" data-testid="schedule-state">{state}</span>'
            f'</h2><table class="kv"><tr><th>flow</th><td>{esc(spec.flow)}'
            f"{'' if spec.version is None else '@' + esc(spec.version)}</td></tr>"
            f"<tr><th>cron</th><td><code>{esc(spec.cron)}</code> ({esc(spec.tz)})</td></tr>"
            f"<tr><th>overlap</th><td>{esc(spec.overlap)}</td></tr>"
            f"<tr><th>last tick</th><td>{fmt_time(record.last_tick)}</td></tr>"
            f'<tr><th>next ticks</th><td><ul class="ticks" data-testid="next-ticks">{ticks}'
            f"</ul></td></tr></table>"
            f'<div class="schedule-actions">{forms}</div>'
            f'<h3>Last runs <a href="{esc(more)}">all</a></h3>{runs}</section>'
        )
    empty = '<p class="empty">No schedules.</p>' if not cards else ""
    body = f'<h1>Schedules</h1><div id="schedules">{"".join(cards)}{empty}</div>'
    return page(request, title="Schedules", body=body)


def page_routes() -> list[BaseRoute]:
    """The read routes (the runs list, a run, its values, the schedules)."""
    return [
        Route("/", runs_list, methods=["GET"], name="runs"),
        Route("/runs/{run_id}", run_page, methods=["GET"], name="run"),
        Route("/runs/{run_id}/value/{what}", value_page, methods=["GET"], name="value"),
        Route("/schedules", schedules_page, methods=["GET"], name="schedules"),
    ]
