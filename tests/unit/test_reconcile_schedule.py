"""The periodic reconciler's cron, read by procrastinate's own scheduling code.

procrastinate parses the cron with ``croniter.croniter(cron)`` (``PeriodicTask.croniter``), where
a sixth field means *seconds* and comes **last**. The ticks below are computed by procrastinate's
``PeriodicDeferrer`` — ``get_next_tick`` (how long the deferrer sleeps) and ``get_timestamps``
(which ticks it defers) — on the periodic task that ``_procrastinate_app`` actually registers, so
the test checks the real schedule rather than our reading of the cron syntax.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from procrastinate import periodic

from iterflow.core.settings import Settings
from iterflow.runtime.host import _procrastinate_app, reconcile_cron
from iterflow.runtime.worker import Worker
from iterflow.store.outbox import reconcile_task_name

EVERY = (1, 5, 7, 30, 59)

#: Starting instants: minutes 1, 31 and 59 (the old spelling only ticked in minutes 0, 5, ...),
#: across an hour boundary and a day boundary, and off whole seconds.
STARTS = (
    datetime(2024, 3, 5, 12, 1, 0, tzinfo=UTC),
    datetime(2024, 3, 5, 12, 31, 17, 400_000, tzinfo=UTC),
    datetime(2024, 3, 5, 12, 59, 0, tzinfo=UTC),
    datetime(2024, 3, 5, 12, 59, 58, 900_000, tzinfo=UTC),
    datetime(2024, 3, 5, 23, 59, 31, tzinfo=UTC),
)

#: How far past each start the deferred ticks are checked (crosses at least one minute).
SPAN = 150.0


async def _never() -> None:
    raise AssertionError("the reconciler is not run by this test")


def registered(every: int) -> periodic.PeriodicTask:
    """The periodic task that the worker's procrastinate app registers (no connection opened)."""
    settings = Settings(database_url="postgresql://u@localhost/x", reconcile_every_seconds=every)
    worker = Worker(cast(Any, None), cast(Any, None), settings)
    app = _procrastinate_app(worker, settings, "postgresql://u@localhost/x", _never)
    tasks = list(app.periodic_registry.periodic_tasks.values())
    assert [t.task.name for t in tasks] == [reconcile_task_name(settings.db_schema)]
    return cast(periodic.PeriodicTask, tasks[0])


def periodic_task(cron: str) -> periodic.PeriodicTask:
    """A periodic task with this cron, registered through procrastinate's own registry."""
    registry = periodic.PeriodicRegistry()
    task = cast(Any, type("T", (), {"name": f"probe.{uuid.uuid4().hex}"}))()
    return registry.register_task(task=task, cron=cron, periodic_id="", configure_kwargs={})


def largest_gap(task: periodic.PeriodicTask, start: float) -> float:
    """The longest wait between ``start`` and a tick, and between consecutive ticks, over
    ``SPAN`` seconds, as procrastinate's deferrer computes them."""
    registry = periodic.PeriodicRegistry()
    registry.periodic_tasks[(task.task.name, task.periodic_id)] = task
    deferrer = periodic.PeriodicDeferrer(registry=registry)
    # The deferrer's sleep: from the start (and from each tick) to the next tick.
    gaps = []
    at = start
    while at < start + SPAN:
        wait = deferrer.get_next_tick(at=at)
        assert wait > 0
        gaps.append(wait)
        at += wait
    # The ticks it defers after sleeping (catch-up path, since the last deferred tick).
    ticks = list(deferrer.get_timestamps(periodic_task=task, since=int(start), until=start + SPAN))
    edges = [int(start), *ticks]
    assert all(b > a for a, b in itertools.pairwise(edges))
    # Up to the end of the span: a lower bound of the gap to the tick after it.
    gaps += [b - a for a, b in itertools.pairwise([*edges, start + SPAN])]
    return max(gaps)


@pytest.mark.parametrize("every", EVERY)
def test_reconcile_cron_puts_the_step_in_the_seconds_field(every: int) -> None:
    cron = reconcile_cron(every)
    assert cron == f"* * * * * */{every}"
    assert registered(every).cron == cron


@pytest.mark.parametrize("every", EVERY)
@pytest.mark.parametrize("start", STARTS, ids=lambda d: d.strftime("%H:%M:%S.%f"))
def test_sweeps_are_never_more_than_every_seconds_apart(every: int, start: datetime) -> None:
    gap = largest_gap(registered(every), start.timestamp())
    assert gap <= every, f"every={every}: a {gap:.1f} s gap after {start:%H:%M:%S}"


@pytest.mark.parametrize("every", EVERY)
def test_tick_seconds_are_the_multiples_of_every(every: int) -> None:
    """The documented ticks: seconds 0, n, 2n, ... <= 59 of every minute."""
    task = registered(every)
    start = STARTS[2].timestamp()  # 12:59:00, the ticks cross into 13:00
    deferrer = periodic.PeriodicDeferrer(registry=periodic.PeriodicRegistry())
    ticks = list(deferrer.get_timestamps(periodic_task=task, since=int(start), until=start + 119))
    seconds = sorted({datetime.fromtimestamp(t, UTC).second for t in ticks})
    assert seconds == list(range(0, 60, every))
    assert {datetime.fromtimestamp(t, UTC).minute for t in ticks} == {59, 0}


def test_the_old_spelling_is_caught() -> None:
    """``*/5 * * * * *`` ticks every second of minutes 0, 5, 10, ...: from 12:31 the next sweep
    would be at 12:35 — the bug this file guards against."""
    old = periodic_task("*/5 * * * * *")
    assert largest_gap(old, STARTS[1].timestamp()) > 200
    assert largest_gap(old, STARTS[0].timestamp()) > 200


@pytest.mark.parametrize("every", [0, 60, -5])
def test_reconcile_cron_rejects_what_settings_reject(every: int) -> None:
    with pytest.raises(ValueError, match=r"1\.\.59"):
        reconcile_cron(every)
