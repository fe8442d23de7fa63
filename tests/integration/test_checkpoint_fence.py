"""The steady-state checkpoint is fenced by a share lock on the run row, not by an update.

A takeover of the run (cancel, lease recovery, an expired-lease claim) is an UPDATE of that row,
so it must wait while a checkpoint's transaction is open, and a checkpoint that comes after a
committed takeover must insert nothing. The statement is held open here in a transaction of its
own to make the interleaving that a real race produces in microseconds observable.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

import asyncpg

from iterflow import Engine
from iterflow.core.models import NewRun, RunStatus
from iterflow.store.postgres import PostgresStore
from iterflow.store.urls import libpq_url
from tests.integration.flows import eventually, sql


def _fenced_statement(engine: Engine) -> tuple[str, list[str]]:
    store = cast(PostgresStore, engine.store)
    compiled = store._q.checkpoint_fenced.compile(dialect=engine.sqlalchemy_engine.dialect)
    return compiled.string, list(compiled.positiontup or ())


def _params(run_id: uuid.UUID, token: uuid.UUID, position: int) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "token": token,
        "position": position,
        "cursor_key": f"s{position}",
        "kind": "step",
        "label": f"s{position}",
        "status": "ok",
        "output": "1",
        "error": None,
        "attempts": 1,
        "started_at": None,
    }


async def test_a_takeover_waits_for_an_open_checkpoint_and_refuses_a_later_one(
    database_url: str,
) -> None:
    async with Engine(database_url) as engine:
        store = engine.store
        run = NewRun(id=uuid.uuid4(), name="f", version=1, input={})
        await store.create_run(run)
        claim = await store.claim(run.id, "w1", 30.0)
        assert claim is not None
        text, order = _fenced_statement(engine)
        conn = await asyncpg.connect(libpq_url(database_url))
        try:
            tx = conn.transaction()
            await tx.start()
            params = _params(run.id, claim.lease.token, 0)
            assert await conn.fetchval(text, *[params[k] for k in order]) == 1
            cancel = asyncio.ensure_future(store.cancel(run.id, "stop"))

            async def cancel_blocked() -> bool:
                rows = sql(
                    database_url,
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE wait_event_type = 'Lock' AND datname = current_database()",
                )
                return bool(rows[0][0])

            await eventually(cancel_blocked, what="cancel to wait for the checkpoint's lock")
            assert not cancel.done()
            await tx.commit()
            assert (await cancel).kind == "canceled"

            params = _params(run.id, claim.lease.token, 1)
            assert await conn.fetchval(text, *[params[k] for k in order]) is None
        finally:
            await conn.close()
        detail = await store.detail(run.id)
        assert detail is not None and detail.run.status is RunStatus.CANCELED
        assert [s.cursor_key for s in detail.steps] == ["s0"]  # the held memo landed, not s1
