"""Retention: delete finished runs past their age, in small batches that never lock live runs.

``Settings(retention=...)`` (:class:`iterflow.core.settings.Retention`) is applied by a periodic
task on the workers (``runtime/host.py``) and by ``engine.sweep_retention()``;
``engine.purge(...)`` and ``flowctl gc`` apply one rule set once. Each batch is one short
transaction (:meth:`iterflow.store.base.Store.purge`): up to ``batch`` top-level runs, oldest
first, locked ``SKIP LOCKED``, deleted by primary key with their descendants; their steps,
signals, timers and events go by ``ON DELETE CASCADE``. A rule loops until a batch comes back
short. Between batches it pauses in proportion to the batch's own duration (``pace``: the share
of time spent deleting, 10 % by default), so a backlog of a million runs drains in the
background without crowding out the workload. Deleted rows leave dead tuples that autovacuum
reclaims as for any delete; new runs reuse the space. With ``Retention.schedule_events`` a
sweep then deletes the schedules' decisions past that age, in batches paced the same way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from datetime import timedelta

from iterflow.core.hooks import Hooks, PurgeInfo
from iterflow.core.models import PurgeReport, RunStatus
from iterflow.core.settings import Retention, RetentionRule
from iterflow.store.base import ScheduleStore, Store

__all__ = ["RetentionSweeper"]

logger = logging.getLogger(__name__)


class RetentionSweeper:
    """Applies retention rules to a store, batch by batch (sized and paced by ``policy``, or by
    :class:`~iterflow.core.settings.Retention`'s defaults without one)."""

    def __init__(
        self,
        store: Store,
        policy: Retention | None,
        *,
        hooks: Hooks | None = None,
        schedules: ScheduleStore | None = None,
    ) -> None:
        self._store = store
        self._schedules = schedules
        self._policy = policy
        self._hooks = hooks
        settings = policy or Retention()
        self._batch = settings.batch
        self._idle = 1 / settings.pace - 1  # seconds of pause per second of deleting

    async def sweep(self, *, budget_seconds: float | None = None) -> PurgeReport:
        """One pass of the configured policy (nothing without one). With ``budget_seconds``
        no new batch starts once that long has passed: the next sweep goes on from there (the
        workers' periodic task stays short, like every periodic task)."""
        if self._policy is None:
            return PurgeReport()
        stop = _deadline(budget_seconds)
        report = await self._purge(self._policy.rules(), False, stop, None)
        if report.runs:
            logger.info("retention deleted %d run(s) %s", report.runs, dict(report.by_status))
        age, schedules = self._policy.schedule_events, self._schedules
        if age is None or schedules is None or _past(stop):
            return report
        events = await self._purge_schedule_events(schedules, age, stop)
        if events:
            logger.info("retention deleted %d schedule event(s)", events)
        return dataclasses.replace(report, schedule_events=events)

    async def _purge_schedule_events(
        self, schedules: ScheduleStore, age: timedelta, stop: float | None
    ) -> int:
        """Schedule events older than ``age``, batch after paced batch, as runs are."""
        total = 0
        while True:
            began = time.monotonic()
            deleted = await schedules.purge_schedule_events(age, limit=self._batch)
            total += deleted
            if deleted < self._batch or _past(stop):
                return total
            await self._rest(began)

    async def purge(
        self,
        rules: Sequence[RetentionRule],
        *,
        dry_run: bool = False,
        budget_seconds: float | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> PurgeReport:
        """Apply ``rules`` (or, with ``dry_run``, count what they would delete); ``progress``
        is called after each batch with the runs deleted so far."""
        return await self._purge(rules, dry_run, _deadline(budget_seconds), progress)

    async def _purge(
        self,
        rules: Sequence[RetentionRule],
        dry_run: bool,
        stop: float | None,
        progress: Callable[[int], object] | None,
    ) -> PurgeReport:
        """:meth:`purge` starting no batch after ``stop`` (``time.monotonic()``; None: never)."""
        runs = 0
        by_status: dict[RunStatus, int] = {}
        for rule in rules:
            if _past(stop):
                break
            top, total = await self._apply(rule, dry_run, stop, _offset(progress, runs))
            runs += total
            if top:
                by_status[rule.status] = by_status.get(rule.status, 0) + top
        return PurgeReport(runs=runs, by_status=by_status, dry_run=dry_run)

    async def _apply(
        self,
        rule: RetentionRule,
        dry_run: bool,
        stop: float | None,
        progress: Callable[[int], object] | None,
    ) -> tuple[int, int]:
        """(top-level runs, runs) deleted by ``rule``, batch after batch."""
        top = total = 0
        while True:
            began = time.monotonic()
            batch = await self._store.purge(
                rule.status,
                rule.older_than,
                flow=rule.flow,
                exclude=rule.exclude,
                limit=self._batch,
                dry_run=dry_run,
            )
            top += batch.top_level
            total += batch.runs
            if progress is not None and not dry_run:
                progress(total)
            if not dry_run and batch.runs and self._hooks is not None:
                info = PurgeInfo(count=batch.runs, flow=rule.flow, statuses=(rule.status,))
                self._hooks.purge(info)
            if dry_run or batch.top_level < self._batch or batch.runs == 0 or _past(stop):
                return top, total
            await self._rest(began)

    async def _rest(self, began: float) -> None:
        """Pause after a batch that began at ``began`` in proportion to its duration (``pace``)."""
        if self._idle:
            await asyncio.sleep((time.monotonic() - began) * self._idle)


def _deadline(budget_seconds: float | None) -> float | None:
    """When a sweep given ``budget_seconds`` stops starting batches (None: never)."""
    return None if budget_seconds is None else time.monotonic() + budget_seconds


def _past(stop: float | None) -> bool:
    """Whether the deadline ``stop`` (:func:`_deadline`) has passed."""
    return stop is not None and time.monotonic() >= stop


def _offset(
    progress: Callable[[int], object] | None, before: int
) -> Callable[[int], object] | None:
    """``progress`` counting from ``before`` (the runs of the rules already applied)."""
    if progress is None:
        return None
    report = progress
    return lambda done: report(before + done)
