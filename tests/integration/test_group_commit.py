"""Group commit across runs (``store/group_commit.py``): the plain checkpoints of concurrent
runs share one statement and one commit, each still fenced by its own run's lease and each
caller answered for its own row, on a real PostgreSQL.

The first of several concurrent checkpoints finds nothing in flight and runs alone, at once;
the others arrive while it runs and go together in the next statement.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import asyncpg
import pytest
import sqlalchemy as sa

from iterflow import Engine, Settings
from iterflow.core.errors import DatabaseUnavailable, DataRejected, LeaseLost
from iterflow.core.models import NewRun, StepRecord
from iterflow.store.base import Lease
from iterflow.store.postgres import PostgresStore
from iterflow.store.urls import libpq_url
from tests.contract.support import memo
from tests.integration.flows import eventually, sql

STATEMENTS = ("checkpoint_fenced", "checkpoint_skip_locked", "checkpoint_batch")


@asynccontextmanager
async def _engine(url: str, **settings: Any) -> AsyncIterator[tuple[Engine, PostgresStore]]:
    async with Engine(url, settings=Settings(**settings)) as engine:
        yield engine, cast(PostgresStore, engine.store)


async def _leases(store: PostgresStore, n: int) -> list[Lease]:
    """``n`` runs, each claimed: a lease per run."""
    leases = []
    for _ in range(n):
        run = NewRun(id=uuid.uuid4(), name="grouped", version=1, input={})
        await store.create_run(run)
        claim = await store.claim(run.id, "w1", 30.0)
        assert claim is not None
        leases.append(claim.lease)
    return leases


def _memo(position: int, output: Any = None) -> StepRecord:
    return memo(position, f"s{position}", output={"step": position} if output is None else output)


def _spy(store: PostgresStore, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record each checkpoint statement the store runs: (its name, rows it carried)."""
    names = {id(getattr(store._q, name)): name for name in STATEMENTS}
    seen: list[tuple[str, int]] = []
    conns = store._conns
    fetch, fetchrow = conns.fetch, conns.fetchrow

    def note(stmt: sa.TextClause, params: dict[str, Any]) -> None:
        if (name := names.get(id(stmt))) is not None:
            seen.append((name, len(params["run_ids"]) if "run_ids" in params else 1))

    async def spy_fetch(stmt: sa.TextClause, params: dict[str, Any]) -> Any:
        note(stmt, params)
        return await fetch(stmt, params)

    async def spy_fetchrow(stmt: sa.TextClause, params: dict[str, Any]) -> Any:
        note(stmt, params)
        return await fetchrow(stmt, params)

    monkeypatch.setattr(conns, "fetch", spy_fetch)
    monkeypatch.setattr(conns, "fetchrow", spy_fetchrow)
    return seen


def _outputs(url: str, leases: list[Lease], position: int) -> list[Any]:
    """Each run's memo at ``position`` (None where there is none), in ``leases`` order."""
    rows = dict(
        sql(
            url,
            "SELECT run_id, output FROM iterflow.steps WHERE position = %s AND run_id = ANY(%s)",
            position,
            [lease.run_id for lease in leases],
        )
    )
    return [rows.get(lease.run_id) for lease in leases]


async def _outcomes(calls: list[Any]) -> list[Any]:
    """Each call's result, or the exception (a BaseException too: LeaseLost) it raised."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    await asyncio.wait(tasks)
    return [task.exception() or task.result() for task in tasks]


async def test_concurrent_plain_checkpoints_of_different_runs_share_one_statement(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _engine(database_url) as (_, store):
        leases = await _leases(store, 10)
        seen = _spy(store, monkeypatch)
        await asyncio.gather(*(store.checkpoint(lease, _memo(0), renew=False) for lease in leases))
        # the first alone, at once; the nine that came while it ran, in one statement
        assert seen == [("checkpoint_skip_locked", 1), ("checkpoint_batch", 9)]
        assert _outputs(database_url, leases, 0) == [{"step": 0}] * 10


async def test_an_attempts_first_checkpoint_renews_its_lease_in_the_shared_statement(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attempt's first checkpoint renews the lease and resets the no-progress count; in a
    shared statement it still does, for its own run only, beside plain checkpoints that touch
    no run row."""
    async with _engine(database_url) as (_, store):
        leases = await _leases(store, 6)
        ids = [lease.run_id for lease in leases]
        sql(
            database_url,
            "UPDATE iterflow.runs SET stalled_claims = 3, "
            "lease_expires_at = now() + interval '1 second' WHERE id = ANY(%s)",
            ids,
        )
        seen = _spy(store, monkeypatch)
        await asyncio.gather(
            *(store.checkpoint(lease, _memo(0), renew=i < 3) for i, lease in enumerate(leases))
        )
        assert seen == [("checkpoint_batch", 1), ("checkpoint_batch", 5)]
        assert _outputs(database_url, leases, 0) == [{"step": 0}] * 6
        rows = dict(
            (run_id, (stalled, left))
            for run_id, stalled, left in sql(
                database_url,
                "SELECT id, stalled_claims, extract(epoch FROM lease_expires_at - now()) "
                "FROM iterflow.runs WHERE id = ANY(%s)",
                ids,
            )
        )
        for i, run_id in enumerate(ids):
            stalled, left = rows[run_id]
            if i < 3:  # renewed: the 30 s lease of the claim, from now
                assert stalled == 0 and left > 20, (i, stalled, left)
            else:  # untouched
                assert stalled == 3 and left < 2, (i, stalled, left)


async def test_a_quiet_checkpoint_runs_alone_at_once(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _engine(database_url) as (_, store):
        [lease] = await _leases(store, 1)
        seen = _spy(store, monkeypatch)
        for position in range(3):
            await store.checkpoint(lease, _memo(position), renew=False)
        assert seen == [("checkpoint_skip_locked", 1)] * 3
        assert [
            row[0]
            for row in sql(database_url, "SELECT position FROM iterflow.steps ORDER BY position")
        ] == [0, 1, 2]


async def test_a_run_that_lost_its_lease_is_refused_and_the_rest_of_its_batch_commits(
    database_url: str,
) -> None:
    async with _engine(database_url) as (_, store):
        leases = await _leases(store, 5)
        assert (await store.cancel(leases[2].run_id, "taken over")).kind == "canceled"
        outcomes = await _outcomes(
            [store.checkpoint(lease, _memo(0), renew=False) for lease in leases]
        )
        assert [type(o) for o in outcomes] == [type(None)] * 2 + [LeaseLost] + [type(None)] * 2
        assert _outputs(database_url, leases, 0) == [{"step": 0}] * 2 + [None] + [{"step": 0}] * 2


@pytest.mark.parametrize("renew", [False, True], ids=["plain", "renewing"])
@pytest.mark.parametrize("locked", [0, 3], ids=["the-first-alone", "one-in-the-batch"])
async def test_a_locked_run_row_holds_up_only_its_own_checkpoint(
    database_url: str, locked: int, renew: bool
) -> None:
    """A run whose row another transaction locks (a signal being delivered, a cancel, a frozen
    process) waits alone: the other runs' checkpoints, in flight with it or batched after it,
    commit meanwhile; its own commits once the row is free."""
    async with _engine(database_url) as (_, store):
        leases = await _leases(store, 6)
        holder = await asyncpg.connect(libpq_url(database_url))
        try:
            tx = holder.transaction()
            await tx.start()
            await holder.execute(
                "SELECT 1 FROM iterflow.runs WHERE id = $1 FOR UPDATE", leases[locked].run_id
            )
            tasks = [
                asyncio.ensure_future(store.checkpoint(lease, _memo(0), renew=renew))
                for lease in leases
            ]
            others = [task for i, task in enumerate(tasks) if i != locked]

            async def others_done() -> bool:
                return all(task.done() for task in others)

            await eventually(others_done, what="the other runs' checkpoints to commit")
            assert [task.result() for task in others] == [None] * 5
            assert not tasks[locked].done()
            assert _outputs(database_url, leases, 0)[locked] is None
            await tx.rollback()
            await asyncio.wait_for(tasks[locked], timeout=15)
        finally:
            await holder.close()
        assert _outputs(database_url, leases, 0) == [{"step": 0}] * 6


async def test_a_batch_refused_as_a_whole_is_tried_row_by_row(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One row PostgreSQL refuses (here: a position already written, a unique violation)
    fails the whole statement and commits nothing; each row is then tried alone, so only
    that row's caller gets the refusal."""
    async with _engine(database_url) as (_, store):
        leases = await _leases(store, 5)
        await store.checkpoint(leases[3], _memo(0, output="first"), renew=False)
        seen = _spy(store, monkeypatch)
        outcomes = await _outcomes(
            [store.checkpoint(lease, _memo(0), renew=False) for lease in leases]
        )
        assert [type(o) for o in outcomes] == [type(None)] * 3 + [DataRejected, type(None)]
        assert _outputs(database_url, leases, 0) == [{"step": 0}] * 3 + ["first", {"step": 0}]
        assert seen[:2] == [("checkpoint_skip_locked", 1), ("checkpoint_batch", 4)]
        assert sorted(seen[2:]) == [("checkpoint_fenced", 1)] * 4  # each alone


async def test_a_batch_whose_commit_is_in_doubt_fails_every_caller_and_is_not_retried(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure that is not a refusal (the connection lost, maybe after the commit) is
    every caller's, as it would be alone: writing a row again could record it twice."""
    async with _engine(database_url) as (_, store):
        leases = await _leases(store, 4)
        seen = _spy(store, monkeypatch)
        spied = store._conns.fetch

        async def lost(stmt: sa.TextClause, params: dict[str, Any]) -> Any:
            if stmt is store._q.checkpoint_batch:
                await spied(stmt, params)  # committed, and then the answer is lost
                raise DatabaseUnavailable("PostgreSQL connection failed: lost")
            return await spied(stmt, params)

        monkeypatch.setattr(store._conns, "fetch", lost)
        outcomes = await _outcomes(
            [store.checkpoint(lease, _memo(0), renew=False) for lease in leases]
        )
        assert outcomes[0] is None
        assert [type(o) for o in outcomes[1:]] == [DatabaseUnavailable] * 3
        assert seen == [("checkpoint_skip_locked", 1), ("checkpoint_batch", 3)]
        assert _outputs(database_url, leases, 0) == [{"step": 0}] * 4


async def test_group_commit_off_commits_every_checkpoint_alone(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _engine(database_url, group_commit=False) as (_, store):
        leases = await _leases(store, 5)
        seen = _spy(store, monkeypatch)
        await asyncio.gather(*(store.checkpoint(lease, _memo(0), renew=False) for lease in leases))
        assert seen == [("checkpoint_fenced", 1)] * 5
        assert _outputs(database_url, leases, 0) == [{"step": 0}] * 5
