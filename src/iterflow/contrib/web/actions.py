"""The dashboard's acting side: the forms of the run, start and schedules pages and the POST
routes behind them, every one through the engine's public API and :func:`security.guard`.

* ``POST /runs/{id}/cancel`` (the form lists the live children the cascade cancels too;
  ``compensate=1`` runs the saga's compensations first: ``canceling``),
  ``POST /runs/{id}/retry`` (with ``resume=1``: resume a canceled run),
  ``POST /runs/{id}/signal/{name}`` (a form generated from the
  signal's declared model, validated before sending; a model-less or unknown flow gets a JSON
  textarea and ``POST /runs/{id}/signal`` with the name as a field): redirect (303) to the run
  page with ``?action=<action>&result=<typed result>``, which the run page shows in
  ``[data-testid=action-result]``.
* ``GET /start`` (the registered flows), ``GET /start/{flow}`` (``?version=N``, else the newest
  registered version) and ``POST /start/{flow}``: a form generated from the flow's input model;
  redirects to the new run (``result=created``, or ``existing`` for a known idempotency key).
* ``POST /bulk``: cancel or retry every run a list filter selects (:mod:`.bulk`).
* ``POST /schedules/{id}/pause|resume`` (a result page) and ``.../trigger`` (redirects to the
  run it started).

A refused or failed action renders ``[data-testid=action-error]`` (the FlowError's code and
message, or why it was refused) with its HTTP status (403, 404, 413, 422...); nothing is written.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from iterflow.contrib.web.bulk import RETRYABLE_STATUSES, bulk, bulk_form_html
from iterflow.contrib.web.forms import (
    error_page,
    field_errors,
    form_model,
    model_form,
    parse_form,
    post_form,
)
from iterflow.contrib.web.html import esc, href, page
from iterflow.contrib.web.security import Action, Denied, can, guard
from iterflow.contrib.web.state import DashboardEngine, get_state
from iterflow.core import codec, inputs, keys
from iterflow.core.decisions import was_compensated
from iterflow.core.definition import FlowDef, Registry
from iterflow.core.errors import FlowError, FlowUnknown, InputInvalid
from iterflow.core.models import RunDetail, RunRecord, RunStatus
from iterflow.core.scheduling import ScheduleRecord
from iterflow.core.signals import payload_model
from iterflow.core.states import LIVE_STATUSES

__all__ = [
    "action_routes",
    "bulk_form_html",
    "run_actions_html",
    "schedule_actions_html",
]

_PAGE = 200
_CASCADE_SHOWN = 50
_CASCADE_VISITED = 1_000
#: Typed results a redirect may carry, by action (anything else in the query is ignored).
_RESULTS: Mapping[str, frozenset[str]] = {
    "cancel": frozenset({"canceled", "canceling", "not_found", "already_terminal"}),
    "retry": frozenset({"queued", "missing", "not_failed"}),
    "resume": frozenset({"queued", "missing", "not_failed"}),
    "signal": frozenset({"delivered", "buffered", "duplicate", "not_found", "closed"}),
    "start": frozenset({"created", "existing"}),
    "trigger": frozenset({"created", "existing"}),
}


# -- shared pieces --------------------------------------------------------------------------------


def _redirect(request: Request, path: str, action: str, result: str) -> Response:
    """303 to ``path`` carrying only the action and its typed result (no secret in a URL)."""
    return RedirectResponse(href(request, path, action=action, result=result), status_code=303)


def _engine(request: Request) -> DashboardEngine:
    return get_state(request).engine


def _definition(registry: Registry, name: str, version: int) -> FlowDef[Any, Any] | None:
    """The flow version's definition if registered here, else the newest registered version."""
    return registry.get(name, version) or registry.latest(name)


def _run_id(request: Request) -> uuid.UUID:
    return inputs.run_id(request.path_params["run_id"])


# -- run page forms -------------------------------------------------------------------------------


def _result_banner(request: Request) -> str:
    action = request.query_params.get("action", "")
    result = request.query_params.get("result", "")
    if result not in _RESULTS.get(action, frozenset()):
        return ""
    return (
        f'<div class="result" role="status" data-testid="action-result" '
        f'data-result="{esc(result)}">{esc(action)}: <strong>{esc(result)}</strong></div>'
    )


async def _cascade(engine: DashboardEngine, root: uuid.UUID) -> tuple[list[RunRecord], bool]:
    """The live runs a cancel of ``root`` cancels too: its non-detached descendants (the
    engine's cascade), at most ``_CASCADE_VISITED`` runs visited; True if cut short."""
    live: list[RunRecord] = []
    frontier = [root]
    visited = 0
    while frontier:
        parent = frontier.pop()
        cursor: int | None = None
        while True:
            page_ = await engine.list_runs(parent=parent, limit=_PAGE, cursor=cursor)
            for child in page_.runs:
                visited += 1
                if child.meta.get("detached"):
                    continue
                if child.status in LIVE_STATUSES:
                    live.append(child)
                frontier.append(child.id)
            if visited >= _CASCADE_VISITED:
                return live, True
            cursor = page_.next_cursor
            if cursor is None:
                break
    return live, False


def _cascade_html(request: Request, live: list[RunRecord], cut: bool) -> str:
    if not live:
        return '<p data-testid="cancel-cascade" data-count="0">No live child run is canceled.</p>'
    items = "".join(
        f'<li data-run-id="{esc(r.id)}"><a href="{esc(href(request, f"/runs/{r.id}"))}">'
        f"{esc(r.id)}</a> {esc(r.name)}@{esc(r.version)} ({esc(r.status.value)})</li>"
        for r in live[:_CASCADE_SHOWN]
    )
    more = len(live) - _CASCADE_SHOWN
    tail = f"<li>… and {more} more</li>" if more > 0 else ""
    count = f"{len(live)}+" if cut else str(len(live))
    return (
        f'<div data-testid="cancel-cascade" data-count="{esc(count)}">Also cancels '
        f"{esc(count)} live child run(s):<ul>{items}{tail}</ul></div>"
    )


def _signal_form(
    request: Request,
    run: RunRecord,
    name: str,
    model: Any,
    *,
    values: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
) -> str:
    fields = model_form(form_model(model), values=values, errors=errors)
    waits = run.status is RunStatus.AWAITING_SIGNAL and run.waiting_for == keys.waiting_for_signal(
        name
    )  # ``waiting_for`` outlives the wait: a claimed run keeps it while it runs
    waiting = " (the run waits for it)" if waits else ""
    effect = (
        "The run resumes as soon as it is delivered."
        if waits
        else "The run does not wait for it now: it is kept in the run's inbox (buffered) until "
        "the flow asks for it."
    )
    help_text = (
        f"Sends <code>{esc(name)}</code> to this run. The payload is checked against the "
        f"signal's declared model first: nothing is sent while a field is invalid. {effect}"
    )
    inner = (
        f"<fieldset><legend>Signal <code>{esc(name)}</code>{esc(waiting)}</legend>"
        f'<p class="form-help" data-testid="signal-help">{help_text}</p>{fields}'
        f'<button type="submit">Send {esc(name)}</button></fieldset>'
    )
    path = f"/runs/{run.id}/signal/{name}"
    return post_form(request, path, inner, data_signal=name, data_action="signal")


def _any_signal_form(request: Request, run: RunRecord) -> str:
    inner = (
        "<fieldset><legend>Signal (flow not registered here: the payload is JSON)</legend>"
        '<label>name <input type="text" name="signal" required></label>'
        f'{model_form(None)}<button type="submit">Send signal</button></fieldset>'
    )
    return post_form(request, f"/runs/{run.id}/signal", inner, data_signal="", data_action="signal")


#: What Retry does, by the status it is offered on (``RETRYABLE_STATUSES``).
_RETRY_EFFECT: Mapping[RunStatus, str] = {
    RunStatus.PARKED: "Wake the parked run to check it against the code deployed now.",
    RunStatus.FAILED: "Replay the run from its failed step (its completed steps are kept; if "
    "its compensations ran, from its earliest compensated step).",
    RunStatus.COMPENSATION_FAILED: "Resume the compensations from the one that failed (those "
    "that ran are not repeated); the run then ends failed or canceled.",
}


def _resume_form(request: Request, run: RunDetail) -> str:
    """Resume for a canceled run, only where ``engine.retry(resume=True)`` accepts it: a run
    whose compensations ran (``cancel(compensate=True)``) had its steps undone."""
    if was_compensated(run.steps):
        return (
            '<p class="form-help" data-testid="no-resume">Its compensations ran: this canceled '
            "run cannot be resumed (its completed steps were undone).</p>"
        )
    inner = (
        "<fieldset><legend>Resume</legend><p>Resume the canceled run where it stopped (its "
        "whole history is kept; the canceled children it awaits resume with it).</p>"
        '<input type="hidden" name="resume" value="1">'
        '<button type="submit">Resume run</button></fieldset>'
    )
    return post_form(request, f"/runs/{run.run.id}/retry", inner, data_action="resume")


async def run_actions_html(request: Request, run: RunDetail) -> str:
    """The action forms of a run page, each posting with a hidden ``csrf_token``: cancel (live
    runs; lists the live children canceled with it; a ``compensate`` box cancels with
    ``compensate=True``), retry (failed, compensation_failed or parked runs), resume (canceled
    runs whose compensations did not run: ``engine.retry(run_id, resume=True)``), one signal
    form per signal the run's flow version declares (``form[data-signal="<name>"]``; the newest
    registered version's when that version is not registered here, a JSON form when none is).
    Shows the typed result of the action that redirected here. Without permission: no form, a
    read-only note."""
    record = run.run
    banner = _result_banner(request)
    allowed = {action: await can(request, action) for action in ("cancel", "retry", "signal")}
    if not any(allowed.values()):
        return (
            f'{banner}<p class="read-only-note" data-testid="read-only-note">'
            "Read-only: you may not act on this run.</p>"
        )
    parts = [banner]
    engine = _engine(request)
    live = record.status in LIVE_STATUSES
    if allowed["cancel"] and live:
        children, cut = await _cascade(engine, record.id)
        inner = (
            f"<fieldset><legend>Cancel</legend>{_cascade_html(request, children, cut)}"
            '<label>reason (optional) <input type="text" name="reason" maxlength="1000">'
            '</label><label class="compensate"><input type="checkbox" name="compensate" '
            'value="1" data-testid="cancel-compensate"> run the compensations of its completed '
            "steps first (saga: the run ends canceled once they ran, compensation_failed if one "
            "fails; it cannot be resumed)"
            '</label><button type="submit" class="danger">Cancel run</button></fieldset>'
        )
        parts.append(post_form(request, f"/runs/{record.id}/cancel", inner, data_action="cancel"))
    if allowed["retry"] and record.status in RETRYABLE_STATUSES:
        inner = (
            f"<fieldset><legend>Retry</legend><p>{esc(_RETRY_EFFECT[record.status])}</p>"
            '<button type="submit">Retry run</button></fieldset>'
        )
        parts.append(post_form(request, f"/runs/{record.id}/retry", inner, data_action="retry"))
    if allowed["retry"] and record.status is RunStatus.CANCELED:
        parts.append(_resume_form(request, run))
    if allowed["signal"] and live:
        flow = _definition(engine.registry, record.name, record.version)
        if flow is None:
            parts.append(_any_signal_form(request, record))
        else:
            for name in sorted(flow.signals):
                parts.append(_signal_form(request, record, name, flow.signals[name]))
    return "\n".join(parts)


# -- run actions ----------------------------------------------------------------------------------


async def _cancel(request: Request) -> Response:
    try:
        form = await guard(request, "cancel")
        run_id = _run_id(request)
        reason = str(form.get("reason") or "").strip() or None
        compensate = form.get("compensate") == "1"
        outcome = await _engine(request).cancel(run_id, reason=reason, compensate=compensate)
    except (Denied, FlowError) as error:
        return error_page(request, error)
    return _redirect(request, f"/runs/{run_id}", "cancel", outcome.kind)


async def _retry(request: Request) -> Response:
    try:
        form = await guard(request, "retry")
        run_id = _run_id(request)
        resume = form.get("resume") == "1"
        outcome = await _engine(request).retry(run_id, resume=resume)
    except (Denied, FlowError) as error:
        return error_page(request, error)
    return _redirect(request, f"/runs/{run_id}", "resume" if resume else "retry", outcome.kind)


async def _signal(request: Request) -> Response:
    run: RunRecord | None = None
    name = ""
    model: Any = None
    declared = False
    form: FormData = FormData()
    try:
        form = await guard(request, "signal")
        engine = _engine(request)
        run_id = _run_id(request)
        name = str(request.path_params.get("signal") or form.get("signal") or "")
        codec.check_text(name, what="signal name", max_chars=200)
        run = (await engine.status(run_id)).run
        # the engine's choice: the run's version's model, else the newest version's, else none
        model = payload_model(engine.registry, run.name, run.version, name)
        declared = True
        payload = parse_form(form_model(model), form)
        if model is not None:
            try:
                codec.load(payload, model)  # field errors before the engine sees the payload
            except ValidationError as exc:
                raise InputInvalid(
                    f"payload for signal {name!r} is invalid: {codec.validation_message(exc)}",
                    details={"errors": exc.errors(include_url=False, include_context=False)},
                ) from exc
        outcome = await engine.signal(run_id, name, payload)
    except Denied as denied:
        return error_page(request, denied)
    except FlowError as error:
        retry_form = ""
        if run is not None and declared:
            values = {k: v for k, v in form.items() if isinstance(v, str)}
            errors = field_errors(error)
            retry_form = _signal_form(request, run, name, model, values=values, errors=errors)
        return error_page(request, error, extra=retry_form)
    return _redirect(request, f"/runs/{run_id}", "signal", outcome.kind)


# -- start ----------------------------------------------------------------------------------------


def _start_flow(request: Request, version: object) -> FlowDef[Any, Any]:
    registry = _engine(request).registry
    name = str(request.path_params["flow"])
    wanted: int | None = None
    if version not in (None, ""):
        try:
            wanted = int(str(version))
        except ValueError:
            raise InputInvalid(f"version must be an integer, got {codec.shown(version)}") from None
    flow = registry.latest(name) if wanted is None else registry.get(name, wanted)
    if flow is None:
        at = "" if wanted is None else f" at version {wanted}"
        raise FlowUnknown(f"no flow named {codec.shown(name)}{at} is registered in this process")
    return flow


def _start_form(
    request: Request,
    flow: FlowDef[Any, Any],
    *,
    values: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
) -> str:
    registry = _engine(request).registry
    versions = sorted(f.version for f in registry.all() if f.name == flow.name)
    links = " ".join(
        f'<a data-version="{v}" href="{esc(href(request, f"/start/{flow.name}", version=v))}"'
        f"{' aria-current=page' if v == flow.version else ''}>v{v}</a>"
        for v in versions
    )
    given = values or {}
    inner = (
        f'<p class="versions">Version: {links}</p>'
        f'<input type="hidden" name="_version" value="{flow.version}">'
        f"<fieldset><legend>Input of {esc(flow.key)}</legend>"
        f"{model_form(form_model(flow.input_type), values=values, errors=errors)}</fieldset>"
        "<fieldset><legend>Options</legend>"
        '<label>idempotency key (optional) <input type="text" name="_key" '
        f'value="{esc(given.get("_key", ""))}"></label>'
        '<label>tags (optional, comma-separated) <input type="text" name="_tags" '
        f'value="{esc(given.get("_tags", ""))}"></label></fieldset>'
        f'<button type="submit">Start {esc(flow.key)}</button>'
    )
    return post_form(request, f"/start/{flow.name}", inner, id="start-form", data_flow=flow.name)


async def _start_page(request: Request) -> Response:
    try:
        flow = _start_flow(request, request.query_params.get("version"))
    except FlowError as error:
        return error_page(request, error)
    title = f"Start {flow.key}"
    if not await can(request, "start"):
        note = (
            '<p class="read-only-note" data-testid="read-only-note">Read-only: you may not '
            "start runs.</p>"
        )
        return page(request, title=title, body=f"<h1>{esc(title)}</h1>{note}")
    body = f"<h1>{esc(title)}</h1>{_start_form(request, flow)}"
    return page(request, title=title, body=body)


async def _start_index(request: Request) -> Response:
    """GET ``/start``: the flows registered in this process, each linking to its start form."""
    registry = _engine(request).registry
    newest: dict[str, int] = {}
    for flow in registry.all():
        newest[flow.name] = max(flow.version, newest.get(flow.name, 0))
    items = "".join(
        f'<li data-flow="{esc(name)}"><a href="{esc(href(request, f"/start/{name}"))}">'
        f"{esc(name)}</a> (newest: v{version})</li>"
        for name, version in sorted(newest.items())
    )
    listing = f'<ul id="start-flows">{items}</ul>' if items else "<p>No flow is registered.</p>"
    note = (
        ""
        if await can(request, "start")
        else '<p class="read-only-note" data-testid="read-only-note">Read-only: you may not '
        "start runs.</p>"
    )
    return page(request, title="Start a run", body=f"<h1>Start a run</h1>{note}{listing}")


def _tags(text: str) -> list[str]:
    return [tag.strip() for tag in text.split(",") if tag.strip()]


async def _start(request: Request) -> Response:
    flow: FlowDef[Any, Any] | None = None
    form: FormData = FormData()
    try:
        form = await guard(request, "start")
        flow = _start_flow(request, form.get("_version"))
        payload = parse_form(form_model(flow.input_type), form)
        flow.validate_input(payload)  # field errors before the engine sees the input
        outcome = await _engine(request).start(
            flow.name,
            payload,
            version=flow.version,
            idempotency_key=str(form.get("_key") or "").strip() or None,
            tags=_tags(str(form.get("_tags") or "")),
        )
    except Denied as denied:
        return error_page(request, denied)
    except FlowError as error:
        retry_form = ""
        if flow is not None:
            values = {k: v for k, v in form.items() if isinstance(v, str)}
            retry_form = _start_form(request, flow, values=values, errors=field_errors(error))
        return error_page(request, error, extra=retry_form)
    result = "created" if outcome.created else "existing"
    return _redirect(request, f"/runs/{outcome.run_id}", "start", result)


# -- schedules ------------------------------------------------------------------------------------

_SCHEDULE_OPS: Mapping[str, Action] = {
    "pause": "schedule_pause",
    "resume": "schedule_resume",
    "trigger": "schedule_trigger",
}


async def schedule_actions_html(request: Request, schedule: ScheduleRecord) -> str:
    """Pause (or resume) and trigger forms for one schedule row, ``form[data-action=<op>]``
    posting to ``/schedules/<id>/<op>``; empty when the user may do none of them."""
    ops = ["resume" if schedule.paused else "pause", "trigger"]
    forms = [
        post_form(
            request,
            f"/schedules/{schedule.id}/{op}",
            f'<button type="submit">{op.capitalize()}</button>',
            data_action=op,
            data_schedule=schedule.id,
        )
        for op in ops
        if await can(request, _SCHEDULE_OPS[op])
    ]
    return "".join(forms)


async def _schedule(request: Request) -> Response:
    op = str(request.path_params["op"])
    schedule_id = str(request.path_params["schedule_id"])
    try:
        if op not in _SCHEDULE_OPS:
            raise Denied(404, "FORM_INVALID", "use pause, resume or trigger")
        await guard(request, _SCHEDULE_OPS[op])
        engine = _engine(request)
        if op == "trigger":
            started = await engine.trigger(schedule_id)
            result = "created" if started.created else "existing"
            return _redirect(request, f"/runs/{started.run_id}", "trigger", result)
        record = await (engine.pause if op == "pause" else engine.resume)(schedule_id)
    except (Denied, FlowError) as error:
        return error_page(request, error)
    result = "paused" if record.paused else "resumed"
    body = (
        f"<h1>Schedule {esc(schedule_id)}</h1>"
        f'<div class="result" role="status" data-testid="action-result" '
        f'data-result="{result}">{esc(op)}: <strong>{result}</strong></div>'
        f'<p><a href="{esc(href(request, "/schedules"))}">Back to the schedules</a></p>'
    )
    return page(request, title=f"Schedule {schedule_id}", body=body)


def action_routes() -> list[BaseRoute]:
    """The dashboard's acting routes (relative to its mount root), every one guarded."""
    return [
        Route("/runs/{run_id}/cancel", _cancel, methods=["POST"]),
        Route("/runs/{run_id}/retry", _retry, methods=["POST"]),
        Route("/runs/{run_id}/signal", _signal, methods=["POST"]),
        Route("/runs/{run_id}/signal/{signal}", _signal, methods=["POST"]),
        Route("/start", _start_index, methods=["GET"]),
        Route("/start/{flow}", _start_page, methods=["GET"]),
        Route("/start/{flow}", _start, methods=["POST"]),
        Route("/bulk", bulk, methods=["POST"]),
        Route("/schedules/{schedule_id}/{op}", _schedule, methods=["POST"]),
    ]
