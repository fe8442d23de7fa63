"""Issue 4: the database fails under load.

* Every connection to the test database is terminated with ``pg_terminate_backend`` while 50
  runs are in flight on 2 workers (their procrastinate pool and LISTEN connection, their
  SQLAlchemy pool, their terminal-notification listener, and this process's own).
* A dedicated embedded PostgreSQL is stopped and started again mid-load.

All runs still complete, no step body ran after its checkpoint, nothing is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from iterflow import Engine
from iterflow.store.embedded import EmbeddedPostgres
from iterflow.store.urls import libpq_url
from tests.conftest import with_database
from tests.e2e.chaos_app import LoadJob, expected_load, load
from tests.e2e.harness import (
    WorkerPool,
    check_checkpoints,
    check_quiescent,
    drained,
    read_executions,
    undrained,
    until,
)
from tests.integration.flows import sql

RUNS = 50
KILL_ALL = (
    "SELECT query, pg_terminate_backend(pid) FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


def kind_of(last_query: str) -> str:
    """What a backend served, guessed from its last statement."""
    q = last_query.strip()
    if q.startswith("LISTEN") and "procrastinate" in q:
        return "procrastinate LISTEN"
    if q.startswith("LISTEN") or q == "SELECT 1":
        return "iterflow terminal listener"
    if "procrastinate" in q or q == "COMMIT":  # psycopg's pool commits after each query
        return "procrastinate pool"
    if "iterflow." in q:
        return "SQLAlchemy pool"
    return "other"


def in_flight(database_url: str) -> tuple[int, int]:
    """(step checkpoints written, runs finished)."""
    row = sql(
        database_url,
        "SELECT (SELECT count(*) FROM iterflow.steps WHERE kind = 'step'), "
        "(SELECT count(*) FROM iterflow.runs WHERE status = 'done')",
    )
    return row[0][0], row[0][1]


async def start_load(client: Engine, counter: Path) -> list[str]:
    handle = client.register(load.definition)
    ids = []
    for n in range(RUNS):
        res = await handle.start(
            LoadJob(counter_file=str(counter), n=n, work_ms=40 + n % 5 * 30, sleep_ms=300)
        )
        ids.append(str(res.run_id))
    return ids


async def wait_all(client: Engine, ids: list[str], timeout: float) -> list[int]:
    handle = client.register(load.definition)
    return list(await asyncio.gather(*(handle.result(i, timeout=timeout) for i in ids)))


async def supervise(pool: WorkerPool, stop: asyncio.Event, restarted: list[int]) -> None:
    """Restart workers that exit on their own, like a process supervisor."""
    while not stop.is_set():
        restarted.extend(await asyncio.to_thread(pool.supervise))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_all_connections_terminated_mid_load(database_url: str, tmp_path: Path) -> None:
    counter = tmp_path / "executions.txt"
    counter.touch()
    pool = WorkerPool(database_url, tmp_path / "logs", 2, concurrency=4)
    restarted: list[int] = []
    stop = asyncio.Event()
    async with Engine(database_url, pool_size=4) as client:
        pool.start_all()
        guard = asyncio.create_task(supervise(pool, stop, restarted))
        try:
            ids = await start_load(client, counter)
            waiter = asyncio.create_task(wait_all(client, ids, timeout=120))

            def mid_load() -> bool:
                steps, done = in_flight(database_url)
                return steps >= 30 and done <= RUNS - 20

            await until(mid_load, timeout=60, every=0.05, what="load in flight")
            steps, done = in_flight(database_url)
            rounds = []
            for round_ in range(2):
                rows = sql(database_url, KILL_ALL)
                rounds.append(Counter(kind_of(q) for q, ok in rows if ok))
                if round_ == 0:
                    await asyncio.sleep(1.0)
            print(
                f"\ninjected: pg_terminate_backend on every other connection of the database, "
                f"twice 1s apart, with {steps} step checkpoints written and {done}/{RUNS} "
                f"runs done: {sum(rounds[0].values())} backends {dict(rounds[0])}, then "
                f"{sum(rounds[1].values())} {dict(rounds[1])}"
            )
            results = await waiter
            await until(
                lambda: drained(database_url),
                timeout=30,
                what="jobs to drain",
                explain=lambda: undrained(database_url),
            )
        finally:
            stop.set()
            await guard
            pool.stop_all()
    assert results == [expected_load(n) for n in range(RUNS)]
    stats = check_checkpoints(database_url, read_executions(counter))
    repairs = check_quiescent(database_url)
    print(
        f"verified: all {RUNS} runs completed with the right output via result() in this "
        f"process (its own connections were killed too); {stats['checkpoints']} checkpoints, "
        f"executions per (run, key) {stats['distribution']}, none after its checkpoint; "
        f"nothing live or stuck; reconciler events {repairs}"
    )
    print(
        f"verified: workers that exited and were restarted by the supervisor: "
        f"{restarted or 'none'} ({'; '.join(pool.exit_reasons()) or 'no crash'})"
    )


# -- PostgreSQL stopped and started again ---------------------------------------------------------


class RestartableServer:
    """A dedicated embedded server that can be stopped and started in place (same socket)."""

    def __init__(self, data_dir: Path) -> None:
        self.embedded = EmbeddedPostgres(data_dir)
        self.url = self.embedded.start()
        self._pg = self.embedded._server  # pgserver.PostgresServer
        self.socket_dir = self._pg.get_postmaster_info().socket_dir

    def _ctl(self, args: list[str]) -> None:
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

        pg_ctl(args, pgdata=self._pg.pgdata, user=self._pg.system_user, timeout=60)

    def stop(self) -> None:
        self._ctl(["-w", "-m", "fast", "stop"])

    def start(self) -> None:
        from pgserver.utils import PostmasterInfo

        args = ["-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self._pg.log)]
        self._ctl([*args, "start"])
        # so that the handle's cleanup stops this new postmaster
        self._pg._postmaster_info = PostmasterInfo.read_from_pgdata(self._pg.pgdata)

    def close(self) -> None:
        """pgserver's cleanup stops the running postmaster (skipped if it is down)."""
        self.embedded.stop()


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[tuple[RestartableServer, str]]:
    """A migrated database on a server of its own (the session server stays untouched)."""
    server = RestartableServer(tmp_path / "pg" / "data")
    try:
        with psycopg.connect(libpq_url(server.url), autocommit=True) as conn:
            conn.execute("CREATE DATABASE restart_test")
        url = with_database(server.url, "restart_test")
        from iterflow.store.migrate import run_migrations

        run_migrations(url)
        yield server, url
    finally:
        server.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_postgres_restart_mid_load(
    own_server: tuple[RestartableServer, str], tmp_path: Path
) -> None:
    server, url = own_server
    counter = tmp_path / "executions.txt"
    counter.touch()
    pool = WorkerPool(url, tmp_path / "logs", 2, concurrency=4)
    restarted: list[int] = []
    stop = asyncio.Event()
    async with Engine(url, pool_size=4) as client:
        pool.start_all()
        guard = asyncio.create_task(supervise(pool, stop, restarted))
        try:
            ids = await start_load(client, counter)
            waiter = asyncio.create_task(wait_all(client, ids, timeout=150))

            def mid_load() -> bool:
                steps, done = in_flight(url)
                return steps >= 30 and done <= RUNS - 20

            await until(mid_load, timeout=60, every=0.05, what="load in flight")
            steps, done = in_flight(url)
            down = time.monotonic()
            await asyncio.to_thread(server.stop)
            print(
                f"\ninjected: PostgreSQL stopped (pg_ctl stop -m fast) with {steps} step "
                f"checkpoints written and {done}/{RUNS} runs done"
            )
            await asyncio.sleep(2.0)
            await asyncio.to_thread(server.start)
            print(
                f"injected: PostgreSQL started again at the same socket after "
                f"{time.monotonic() - down:.1f}s down"
            )
            results = await waiter
            await until(
                lambda: drained(url),
                timeout=30,
                what="jobs to drain",
                explain=lambda: undrained(url),
            )
        finally:
            stop.set()
            await guard
            pool.stop_all()
    assert results == [expected_load(n) for n in range(RUNS)]
    stats = check_checkpoints(url, read_executions(counter))
    repairs = check_quiescent(url)
    print(
        f"verified: all {RUNS} runs completed with the right output via result(); "
        f"{stats['checkpoints']} checkpoints, executions per (run, key) "
        f"{stats['distribution']}, none after its checkpoint; nothing live or stuck; "
        f"reconciler events {repairs}"
    )
    print(
        f"verified: workers that exited when the database went away and were restarted by "
        f"the supervisor: {restarted or 'none'} ({'; '.join(pool.exit_reasons()) or 'none'})"
    )
