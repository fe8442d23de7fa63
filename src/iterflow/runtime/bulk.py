"""Bulk actions: retry, resume or cancel every run a filter selects (``Engine.bulk``).

One loop for every caller (``flowctl retry/cancel --flow ... [--dry-run]``, the dashboard): the
runs are listed oldest first in keyset pages with the filter of ``Engine.list_runs`` and acted on
one by one through the engine's own ``retry`` and ``cancel``, so each run gets exactly the
single-run semantics (its own transaction, children included). A run that changed in between
answers with its own result (``not_failed``, ``already_terminal``), counted in ``outcomes``.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Literal

from iterflow.core.models import BulkResult, RunPage, RunRecord, RunStatus
from iterflow.core.states import LIVE_STATUSES, RETRYABLE_STATUSES

__all__ = ["BULK_PAGE", "BulkAction", "run_bulk", "would_do"]

#: Runs listed per page by a bulk action.
BULK_PAGE = 200

BulkAction = Literal["retry", "cancel"]


def would_do(action: BulkAction, run: RunRecord, *, resume: bool) -> str:
    """What ``action`` would do to ``run`` now: ``would_retry`` (failed, compensation_failed or
    parked),
    ``would_resume`` (canceled, with ``resume``), ``would_cancel`` (live), else ``skipped``."""
    if action == "cancel":
        return "would_cancel" if run.status in LIVE_STATUSES else "skipped"
    if run.status in RETRYABLE_STATUSES or run.status is RunStatus.PARKED:
        return "would_retry"
    if resume and run.status is RunStatus.CANCELED:
        return "would_resume"
    return "skipped"


async def run_bulk(
    action: BulkAction,
    *,
    list_page: Callable[[int | None], Awaitable[RunPage]],
    act: Callable[[uuid.UUID], Awaitable[str]],
    total: int,
    dry_run: bool,
    resume: bool,
    progress: Callable[[int, int], None] | None = None,
    limit: int | None = None,
) -> BulkResult:
    """Walk every page of ``list_page(cursor)`` and ``act(run_id)`` (returning the result's
    kind) on each run, or with ``dry_run`` only predict it (:func:`would_do`); ``progress(done,
    total)`` is called after each run. With ``limit``, stop after that many runs (``more``
    says whether runs were left)."""
    outcomes: dict[str, int] = {}
    acted: list[uuid.UUID] = []
    matched = 0
    cursor: int | None = None
    more = False
    while not more:
        page = await list_page(cursor)
        for run in page.runs:
            if limit is not None and matched >= limit:
                more = True
                break
            matched += 1
            if dry_run:
                kind = would_do(action, run, resume=resume)
                if kind != "skipped":
                    acted.append(run.id)
            else:
                kind = await act(run.id)
                if kind in ("queued", "canceled", "canceling"):
                    acted.append(run.id)
            outcomes[kind] = outcomes.get(kind, 0) + 1
            if progress is not None:
                progress(matched, max(total, matched))
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    return BulkResult(
        action=action,
        dry_run=dry_run,
        matched=matched,
        acted=len(acted),
        outcomes=outcomes,
        run_ids=tuple(acted),
        more=more,
    )
