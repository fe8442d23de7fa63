"""The worker's fetch of a wake-up (``PostgresStore.fetch_job``, ``outbox.FETCH_JOB_SQL``):
procrastinate's rules (``procrastinate_fetch_job_v2``) with a plan whose cost does not grow
with the wake-ups queued ahead of time (sleeping runs'), which procrastinate's own did as soon
as some jobs were due: it walked every queued job in ``(priority, id)`` order."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import psycopg
import pytest
import sqlalchemy as sa

from iterflow import Engine
from iterflow.store import outbox
from iterflow.store.postgres import PostgresStore
from iterflow.store.urls import libpq_url
from tests.integration.flows import sql

QUEUE = "default/probe@1"
OTHER = "default/other@1"


@pytest.fixture
async def store(engine: Engine) -> AsyncIterator[PostgresStore]:
    yield cast(PostgresStore, engine.store)


def worker_id(url: str) -> int:
    return int(sql(url, "INSERT INTO procrastinate_workers DEFAULT VALUES RETURNING id")[0][0])


def queue_jobs(
    url: str,
    n: int,
    *,
    queue: str = QUEUE,
    priority: int = 0,
    due_in: float | None = None,
    lock: str | None = None,
) -> list[int]:
    """``n`` wake-up jobs (due ``due_in`` seconds from now; None: at once), their ids."""
    query = """
        INSERT INTO procrastinate_jobs
            (queue_name, task_name, priority, lock, queueing_lock, args, scheduled_at)
        SELECT %(queue)s, %(task)s, %(priority)s, coalesce(%(lock)s, r::text),
               CASE WHEN %(lock)s IS NULL THEN r::text END,
               jsonb_build_object('run_id', r::text),
               now() + make_interval(secs => %(due_in)s)
        FROM (SELECT gen_random_uuid() AS r FROM generate_series(1, %(n)s)) AS s
        RETURNING id"""
    params = {
        "queue": queue,
        "task": outbox.TASK_NAME,
        "priority": priority,
        "lock": lock,
        "due_in": due_in,
        "n": n,
    }
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        return sorted(int(row[0]) for row in conn.execute(query, params).fetchall())


async def fetched(store: PostgresStore, wid: int, queues: list[str]) -> int | None:
    row = await store.fetch_job(queues, wid)
    return None if row is None else int(row["id"])


async def test_the_highest_priority_then_the_oldest_due_job_of_the_served_queues(
    store: PostgresStore, database_url: str
) -> None:
    wid = worker_id(database_url)
    [later] = queue_jobs(database_url, 1, due_in=3600)  # not due yet
    [unserved] = queue_jobs(database_url, 1, queue=OTHER, priority=9)
    first, second = queue_jobs(database_url, 2)
    [scheduled] = queue_jobs(database_url, 1, due_in=-60)  # due a minute ago, queued last
    [urgent] = queue_jobs(database_url, 1, priority=5, due_in=-1)
    order = [await fetched(store, wid, [QUEUE]) for _ in range(5)]
    assert order == [urgent, first, second, scheduled, None]
    statuses = dict(sql(database_url, "SELECT id, status::text FROM procrastinate_jobs"))
    assert statuses == {
        later: "todo",
        unserved: "todo",
        first: "doing",
        second: "doing",
        scheduled: "doing",
        urgent: "doing",
    }
    doing = sql(
        database_url, "SELECT DISTINCT worker_id FROM procrastinate_jobs WHERE status = 'doing'"
    )
    assert doing == [(wid,)]


async def test_a_job_whose_lock_is_held_or_queued_ahead_waits(
    store: PostgresStore, database_url: str
) -> None:
    """procrastinate's lock rule: not while a job of the same lock is ``doing``, nor before an
    earlier queued one of the same lock."""
    wid = worker_id(database_url)
    lock = str(uuid.uuid4())
    running, queued = queue_jobs(database_url, 2, lock=lock)
    [free] = queue_jobs(database_url, 1)
    sql(database_url, "UPDATE procrastinate_jobs SET status = 'doing' WHERE id = %s", running)
    assert await fetched(store, wid, [QUEUE]) == free
    assert await fetched(store, wid, [QUEUE]) is None  # `queued` waits for `running`
    sql(database_url, "DELETE FROM procrastinate_jobs WHERE id = %s", running)
    assert await fetched(store, wid, [QUEUE]) == queued


async def test_blocked_jobs_ahead_never_hide_a_free_one(
    store: PostgresStore, database_url: str
) -> None:
    """More jobs than the fetch's candidates per index (``outbox.FETCH_CANDIDATES``) wait for
    running attempts at the head of the queue, at once and with a due time: the free job behind
    them is fetched all the same."""
    wid = worker_id(database_url)
    blocked = outbox.FETCH_CANDIDATES + 2
    for due_in in (None, -60.0):
        for _ in range(blocked):
            lock = str(uuid.uuid4())
            running, _waiting = queue_jobs(database_url, 2, lock=lock, due_in=due_in)
            sql(
                database_url,
                "UPDATE procrastinate_jobs SET status = 'doing' WHERE id = %s",
                running,
            )
    [free_now] = queue_jobs(database_url, 1)
    [free_due] = queue_jobs(database_url, 1, due_in=-1)
    assert await fetched(store, wid, [QUEUE]) == free_now
    assert await fetched(store, wid, [QUEUE]) == free_due
    assert await fetched(store, wid, [QUEUE]) is None


async def test_a_job_another_fetch_has_locked_is_skipped(
    store: PostgresStore, database_url: str
) -> None:
    wid = worker_id(database_url)
    first, second = queue_jobs(database_url, 2)
    with psycopg.connect(libpq_url(database_url)) as other:  # a fetch in flight elsewhere
        other.execute("SELECT 1 FROM procrastinate_jobs WHERE id = %s FOR UPDATE", [first])
        assert await fetched(store, wid, [QUEUE]) == second
        other.rollback()
    assert await fetched(store, wid, [QUEUE]) == first


async def test_every_queue_when_none_is_named_uses_procrastinates_own_fetch(
    store: PostgresStore, database_url: str
) -> None:
    wid = worker_id(database_url)
    [job] = queue_jobs(database_url, 1, queue=OTHER)
    row = await store.fetch_job(None, wid)
    assert row is not None and (row["id"], row["status"]) == (job, "doing")


async def _buffers(engine: Engine, wid: int) -> int:
    """Shared buffers one fetch reads (EXPLAIN ANALYZE, rolled back): its cost in pages."""
    params = {"queues": json.dumps([QUEUE, OTHER, "default"]), "worker_id": wid}
    explain = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + outbox.FETCH_JOB_SQL
    async with engine.sqlalchemy_engine.connect() as conn:
        plan: Any = (await conn.execute(sa.text(explain), params)).scalar()
        await conn.rollback()
    top = plan[0]["Plan"]
    return int(top["Shared Hit Blocks"]) + int(top["Shared Read Blocks"])


@pytest.mark.parametrize(
    ("ahead", "due"),
    [
        pytest.param({"due_in": 86_400.0}, {"due_in": -1.0}, id="sleepers"),
        pytest.param({"queue": "default/unserved@1"}, {}, id="another-queue-backlog"),
        pytest.param(
            {"queue": "default/unserved@1", "due_in": -1.0},
            {"due_in": -1.0},
            id="another-queue-timers-due",
        ),
    ],
)
async def test_the_cost_of_a_fetch_does_not_grow_with_jobs_it_will_not_take(
    engine: Engine, database_url: str, ahead: dict[str, Any], due: dict[str, Any]
) -> None:
    """Jobs queued ahead of the due ones (lower ids, the same priority) that the fetch will not
    take: sleeping runs' wake-ups (due later), or the backlog of a queue this worker does not
    serve (due at once, or timers long due). The fetch reads about as many pages with 20,000
    of them as with 20, when jobs are due and when none is (an idle poll). procrastinate's
    fetch read past all of them, and so did this one for another queue's backlog before its
    indexes led with the queue (revision 0011's due index: 702 pages for 20,000 timers)."""
    wid = worker_id(database_url)
    costs: dict[tuple[int, str], int] = {}
    for n in (20, 20_000):
        sql(database_url, "DELETE FROM procrastinate_jobs")
        queue_jobs(database_url, n, **ahead)
        sql(database_url, "ANALYZE procrastinate_jobs")
        await _buffers(engine, wid)  # the session's first plan reads the catalogue
        costs[n, "idle"] = await _buffers(engine, wid)
        queue_jobs(database_url, 300, **due)
        sql(database_url, "ANALYZE procrastinate_jobs")
        costs[n, "due"] = await _buffers(engine, wid)
    # a deeper index costs a few pages more; procrastinate's fetch read 170 and 836 pages with
    # 20,000 sleepers (11 and 340 with 20): it walked their jobs
    for case in ("idle", "due"):
        assert costs[20_000, case] <= 2 * costs[20, case] + 20, costs
