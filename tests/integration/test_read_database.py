"""``Settings.read_database_url``: read-only inspection goes to a second URL, writes never do.

No streaming replica can be built inside the test session's embedded server, so the stand-in is
a **second database on the same server, reached through a role whose transactions are
read-only** (``default_transaction_read_only``): rows appear in it only when the test copies
them there (what replication would do, late), so whatever the engine's inspection methods see
proves where they read, and the read-only role proves they never write.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from pydantic import BaseModel
from sqlalchemy.engine import make_url

from iterflow import Engine, FlowContext
from iterflow.core.errors import ConfigInvalid, RunNotFound
from iterflow.store.urls import libpq_url
from tests.conftest import TEMPLATE, _admin_exec, with_database

#: The per-run tables copied to the stand-in replica, parents first.
REPLICATED = ("runs", "steps", "signals", "timers", "events")


class Order(BaseModel):
    n: int


class Go(BaseModel):
    by: str


@pytest.fixture
def replica_url(server_url: str, template_url: str) -> Iterator[str]:
    """A second migrated database, reached as a role that can only read."""
    name = f"r_{uuid.uuid4().hex[:16]}"
    role = f"reader_{uuid.uuid4().hex[:12]}"
    _admin_exec(server_url, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    admin = with_database(server_url, name)
    _admin_exec(
        admin,
        f"CREATE ROLE {role} LOGIN",
        f"ALTER ROLE {role} SET default_transaction_read_only = on",
        f"GRANT USAGE ON SCHEMA iterflow TO {role}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA iterflow TO {role}",
    )
    url = make_url(admin).set(username=role).render_as_string(hide_password=False)
    yield url
    _admin_exec(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    _admin_exec(server_url, f"DROP ROLE IF EXISTS {role}")


def _replicate(primary: str, replica_admin: str) -> None:
    """Copy every row of the per-run tables from the primary to the replica (late replication)."""
    with (
        psycopg.connect(libpq_url(primary)) as src,
        psycopg.connect(libpq_url(replica_admin)) as dst,
    ):
        for table in REPLICATED:
            with (
                src.cursor().copy(f"COPY iterflow.{table} TO STDOUT".encode()) as out,
                dst.cursor().copy(f"COPY iterflow.{table} FROM STDIN".encode()) as into,
            ):
                for block in out:
                    into.write(block)
        dst.commit()


def _count(url: str, table: str) -> int:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*) FROM iterflow.{table}".encode()).fetchone()
        assert row is not None
        return int(row[0])


def _engine(database_url: str, replica_url: str) -> Engine:
    engine = Engine(database_url, read_database_url=replica_url, pool_size=2)

    @engine.flow("replica.order", input=Order, output=int, signals={"go": Go})
    async def order(ctx: FlowContext, inp: Order) -> int:
        async def one() -> int:
            return 1

        total = sum([await ctx.step(f"s{i}", one) for i in range(inp.n)])
        await ctx.signal("go", Go)
        return total

    return engine


async def test_inspection_reads_the_read_url_and_writes_stay_on_the_primary(
    database_url: str, replica_url: str
) -> None:
    replica_admin = make_url(replica_url).set(username=make_url(database_url).username)
    admin = replica_admin.render_as_string(hide_password=False)
    async with _engine(database_url, replica_url) as engine:
        started = await engine.start("replica.order", {"n": 3})  # a write: the primary
        await engine.worker.advance(started.run_id)  # claim, 3 checkpoints, suspend
        run = await engine.store.get_run(started.run_id)  # the hot path reads the primary
        assert run is not None and run.status == "awaiting_signal"

        # not replicated yet: every inspection method reads the (empty) replica
        assert (await engine.list_runs()).runs == ()
        assert await engine.count_runs() == {}
        assert await engine.find_run("replica.order", tag=None, idempotency_key="x") is None
        with pytest.raises(RunNotFound):
            await engine.status(started.run_id)
        assert (await engine.changed_runs(0))[0] == []

        _replicate(database_url, admin)
        page = await engine.list_runs()
        assert [r.id for r in page.runs] == [started.run_id]
        assert page.runs[0].status == "awaiting_signal"
        assert await engine.count_runs() == {run.status: 1}
        detail = await engine.status(started.run_id)
        assert [s.cursor_key for s in detail.steps] == ["s0", "s1", "s2"]
        changed, _ = await engine.changed_runs(0)
        assert changed == [(started.run_id, run.status)]

        # writes after the copy reach the primary only; the replica keeps what was copied
        events_copied = _count(admin, "events")
        assert (await engine.signal(started.run_id, "go", {"by": "test"})).kind == "delivered"
        await engine.worker.advance(started.run_id)
        assert (await engine.store.get_run(started.run_id)).status == "done"  # type: ignore[union-attr]
        assert (await engine.status(started.run_id)).run.status == "awaiting_signal"  # lagging
        assert _count(admin, "signals") == 0
        assert _count(admin, "events") == events_copied
        assert _count(database_url, "signals") == 1
        assert _count(database_url, "events") > events_copied


async def test_the_read_role_cannot_write(replica_url: str) -> None:
    """The stand-in is really read-only: the inspection calls above could not have written."""
    with (
        psycopg.connect(libpq_url(replica_url), autocommit=True) as conn,
        pytest.raises(psycopg.errors.ReadOnlySqlTransaction),
    ):
        conn.execute(b"DELETE FROM iterflow.runs")


@pytest.mark.parametrize("bad", ["mysql://x@y/z", "not a url \x00", "postgresql://h:notaport/d"])
async def test_a_bad_read_url_is_refused_before_anything_opens(database_url: str, bad: str) -> None:
    engine = Engine(database_url, read_database_url=bad)
    with pytest.raises(ConfigInvalid, match="read_database_url"):
        await engine.open()
    assert engine._backend is None  # no pool was left open
