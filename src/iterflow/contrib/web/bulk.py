"""Bulk cancel, retry and resume over a runs-list filter: the runs list's form, a dry run
counting the runs an action would touch (``engine.count_runs``) with a confirmation step (for
cancel, a ``compensate`` box: ``engine.cancel(compensate=True)``, sagas), then the action on
each run (``engine.cancel`` / ``engine.retry`` / ``engine.retry(resume=True)``, through
``engine.bulk``) and the count of each typed result (``canceled``, ``canceling``,
``already_terminal``, ``queued``, ``not_failed``...).

Only the runs an action can change are selected: live runs for cancel, failed and parked runs
for retry, canceled runs for resume (narrowed by the filter's statuses), so the dry run's count
is the work to do. Resume is a retry for ``authorize`` (``bulk_retry``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.datastructures import FormData, ImmutableMultiDict
from starlette.requests import Request
from starlette.responses import Response

from iterflow.contrib.web.filters import FILTER_PARAMS, FilterError, filters_from
from iterflow.contrib.web.forms import error_page, post_form
from iterflow.contrib.web.html import esc, href, page
from iterflow.contrib.web.security import Denied, can, guard, read_form
from iterflow.contrib.web.state import get_state
from iterflow.core import inputs
from iterflow.core.errors import FlowError, InputInvalid
from iterflow.core.models import RunStatus
from iterflow.core.states import LIVE_STATUSES
from iterflow.core.states import RETRYABLE_STATUSES as REPLAYABLE

__all__ = ["BULK_LIMIT", "RETRYABLE_STATUSES", "bulk", "bulk_form_html"]

#: The most runs one confirmed bulk request acts on (submit again for the rest).
BULK_LIMIT = 10_000
#: The statuses ``engine.retry`` acts on (a parked run is woken to be re-checked).
RETRYABLE_STATUSES = frozenset({*REPLAYABLE, RunStatus.PARKED})
#: The statuses each bulk action selects.
_ACTED: Mapping[str, frozenset[RunStatus]] = {
    "cancel": LIVE_STATUSES,
    "retry": RETRYABLE_STATUSES,
    "resume": frozenset({RunStatus.CANCELED}),
}
_PAGE = 200


def _texts(form: FormData) -> ImmutableMultiDict[str, str]:
    return ImmutableMultiDict([(k, v) for k, v in form.multi_items() if isinstance(v, str)])


def _filters(form: FormData) -> dict[str, Any]:
    """The ``engine.list_runs`` keywords of the list filter a bulk form carries (the runs list's
    parsing; an unreadable value is ``INPUT_INVALID``)."""
    try:
        filters = filters_from(_texts(form))
    except FilterError as exc:
        raise InputInvalid(str(exc)) from None
    return filters


def _acted_statuses(action: str, filters: Mapping[str, Any]) -> list[RunStatus]:
    """The statuses a bulk action applies to, narrowed by the filter's statuses."""
    wanted = _ACTED[action]
    chosen = set(inputs.statuses(filters.get("status"))) or set(RunStatus)
    return sorted(wanted & chosen)


def _filter_inputs(params: ImmutableMultiDict[str, Any]) -> str:
    return "".join(
        f'<input type="hidden" name="{esc(name)}" value="{esc(value)}">'
        for name in FILTER_PARAMS
        for value in params.getlist(name)
        if isinstance(value, str) and value != ""
    )


async def bulk_form_html(request: Request) -> str:
    """The runs list's bulk form (``form#bulk``): cancel or retry every run the current list
    filter selects, after a dry run counting them and a confirmation. Empty when the user may
    do neither."""
    buttons = [
        f'<button type="submit" name="action" value="{action}">{label}</button>'
        for action, label in (
            ("cancel", "Cancel matching runs…"),
            ("retry", "Retry matching…"),
            ("resume", "Resume matching canceled…"),
        )
        if await can(request, "bulk_cancel" if action == "cancel" else "bulk_retry")
    ]
    if not buttons:
        return ""
    inner = f"{_filter_inputs(request.query_params)}{''.join(buttons)}"
    return post_form(request, "/bulk", inner, id="bulk", data_action="bulk")


async def bulk(request: Request) -> Response:
    """``POST /bulk``: a dry run (the count and a confirmation form), or, with ``confirm=1``,
    the action on every selected run and the count of each typed result."""
    form: FormData = FormData()
    counts: Counter[str] = Counter()
    try:
        form = await _guard_bulk(request)
        action = str(form.get("action"))
        filters = _filters(form)
        engine = get_state(request).engine
        statuses = _acted_statuses(action, filters)
        acted = {**filters, "status": statuses}
        if form.get("confirm") != "1":
            per_status = await engine.count_runs(**acted) if statuses else {}
            return _dry_run_page(request, action, form, statuses, per_status)
        left = False
        if statuses:
            done = await engine.bulk(
                "cancel" if action == "cancel" else "retry",
                reason="canceled in bulk" if action == "cancel" else None,
                compensate=action == "cancel" and form.get("compensate") == "1",
                resume=action == "resume",
                limit=BULK_LIMIT,
                **acted,
            )
            counts.update(done.outcomes)
            left = done.more
    except Denied as denied:
        return error_page(request, denied)
    except FlowError as error:
        return error_page(request, error, extra=_counts_html(counts) if counts else "")
    more = f"<p>Stopped after {BULK_LIMIT} runs: submit again for the rest.</p>" if left else ""
    body = (
        f"<h1>Bulk {esc(action)}</h1>{_counts_html(counts)}{more}"
        f'<p><a href="{esc(href(request, "/", **_query(form)))}">Back to the runs</a></p>'
    )
    return page(request, title=f"Bulk {action}", body=body)


async def _guard_bulk(request: Request) -> FormData:
    """Guard a bulk request as ``bulk_cancel`` or ``bulk_retry`` (its ``action`` field)."""
    action = (await read_form(request)).get("action")
    form = await guard(request, "bulk_cancel" if action == "cancel" else "bulk_retry")
    if action not in _ACTED:
        raise Denied(422, "FORM_INVALID", "action must be cancel, retry or resume")
    return form


def _query(form: FormData) -> dict[str, list[str]]:
    return {
        name: [v for v in form.getlist(name) if isinstance(v, str)]
        for name in FILTER_PARAMS
        if form.getlist(name)
    }


def _counts_html(counts: Counter[str]) -> str:
    total = sum(counts.values())
    items = "".join(
        f'<li>{esc(kind)}: <span class="count" data-result="{esc(kind)}">{n}</span></li>'
        for kind, n in sorted(counts.items())
    )
    return (
        f'<div class="result" role="status" data-testid="action-result" data-result="bulk">'
        f'Acted on <span data-testid="bulk-total">{total}</span> run(s):'
        f'<ul data-testid="bulk-results">{items}</ul></div>'
    )


def _dry_run_page(
    request: Request,
    action: str,
    form: FormData,
    statuses: Iterable[RunStatus],
    per_status: Mapping[RunStatus, int],
) -> Response:
    total = sum(per_status.values())
    shown = ", ".join(s.value for s in statuses) or "none"
    items = "".join(
        f'<li>{esc(s.value)}: <span class="count" data-status="{esc(s.value)}">{n}</span></li>'
        for s, n in sorted(per_status.items())
    )
    summary = (
        f'<div data-testid="bulk-dry-run"><p>{esc(action.capitalize())} would act on '
        f'<strong data-testid="bulk-count">{total}</strong> run(s) (status: {esc(shown)}).</p>'
        f"<ul>{items}</ul></div>"
    )
    confirm = ""
    if total:
        compensate = (
            '<label class="compensate"><input type="checkbox" name="compensate" value="1" '
            'data-testid="bulk-compensate"> run the compensations of their completed steps '
            "first (sagas: such runs cannot be resumed)</label>"
            if action == "cancel"
            else ""
        )
        inner = (
            f"{_filter_inputs(form)}"
            f'<input type="hidden" name="action" value="{esc(action)}">'
            f'<input type="hidden" name="confirm" value="1">{compensate}'
            f'<button type="submit" class="danger" data-testid="bulk-confirm">'
            f"{esc(action.capitalize())} {total} run(s)</button>"
        )
        confirm = post_form(request, "/bulk", inner, id="bulk-confirm", data_action="bulk")
    back = f'<p><a href="{esc(href(request, "/", **_query(form)))}">Back to the runs</a></p>'
    body = f"<h1>Bulk {esc(action)}: dry run</h1>{summary}{confirm}{back}"
    return page(request, title=f"Bulk {action}", body=body)
