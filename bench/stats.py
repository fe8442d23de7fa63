"""What a workload cost the database: transactions, rows, WAL, fsyncs, statements, CPU.

* ``pg_stat_database`` (commits, tuples) and ``pg_stat_user_tables`` (per-table tuples) come from
  the cumulative statistics system, which backends flush lazily (at most once a second, and when
  they exit). :func:`snapshot` therefore waits until the counters stop moving, and workloads
  close their pools and stop their workers before the "after" snapshot.
* **Write transactions** are counted exactly as the advance of the next transaction id
  (``pg_snapshot_xmax(pg_current_snapshot())``): PostgreSQL assigns an xid only to transactions
  that write (or lock rows), and reading it assigns none. ``xact_commit`` minus that is the number
  of read-only transactions. xids are cluster-wide: on a shared server other databases' writes
  count too (the embedded server has no other users).
* ``pg_stat_wal`` gives WAL records, bytes and ``wal_sync`` (fsyncs of the WAL), cluster-wide.
* :class:`StatementCounter` counts the SQLAlchemy statements an in-process engine issues, by the
  store's statement name, which shows how many queries each attempt makes.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]
import psycopg
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from iterflow.store.urls import libpq_url

__all__ = ["DbDelta", "DbSnapshot", "PgCpu", "StatementCounter", "snapshot", "store_statements"]

_DB_SQL = b"""
SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted
FROM pg_stat_database WHERE datname = %s"""
_CLUSTER_SQL = b"""
SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint,
       pg_current_wal_lsn() - '0/0'::pg_lsn,
       wal_records, wal_fpi, wal_bytes, wal_write, wal_sync
FROM pg_stat_wal"""
_TABLES_SQL = b"""
SELECT schemaname || '.' || relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del
FROM pg_stat_user_tables"""


@dataclass(frozen=True)
class DbSnapshot:
    """Cumulative counters of one database (and the cluster's WAL) at one moment."""

    at: float
    xact_commit: int
    xact_rollback: int
    tup_inserted: int
    tup_updated: int
    tup_deleted: int
    next_xid: int
    wal_lsn: int
    wal_records: int
    wal_fpi: int
    wal_bytes: int
    wal_write: int
    wal_sync: int
    tables: dict[str, tuple[int, int, int, int]]

    def __sub__(self, before: DbSnapshot) -> DbDelta:
        tables: dict[str, dict[str, int]] = {}
        for name, now in self.tables.items():
            then = before.tables.get(name, (0, 0, 0, 0))
            diff = [a - b for a, b in zip(now, then, strict=True)]
            if any(diff):
                tables[name] = dict(zip(("ins", "upd", "hot_upd", "del"), diff, strict=True))
        return DbDelta(
            seconds=self.at - before.at,
            commits=self.xact_commit - before.xact_commit,
            rollbacks=self.xact_rollback - before.xact_rollback,
            write_xacts=self.next_xid - before.next_xid,
            rows_inserted=self.tup_inserted - before.tup_inserted,
            rows_updated=self.tup_updated - before.tup_updated,
            rows_deleted=self.tup_deleted - before.tup_deleted,
            wal_bytes=self.wal_lsn - before.wal_lsn,
            wal_records=self.wal_records - before.wal_records,
            wal_fpi=self.wal_fpi - before.wal_fpi,
            wal_syncs=self.wal_sync - before.wal_sync,
            tables=tables,
        )


@dataclass(frozen=True)
class DbDelta:
    """What happened between two snapshots."""

    seconds: float
    commits: int
    rollbacks: int
    write_xacts: int
    rows_inserted: int
    rows_updated: int
    rows_deleted: int
    wal_bytes: int
    wal_records: int
    wal_fpi: int
    wal_syncs: int
    tables: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def read_only_xacts(self) -> int:
        """Committed transactions that wrote nothing."""
        return self.commits - self.write_xacts

    def minus(self, baseline: DbDelta) -> DbDelta:
        """This delta with an idle baseline's counters subtracted (floored at zero)."""

        def sub(a: int, b: int) -> int:
            return max(a - b, 0)

        return DbDelta(
            seconds=self.seconds,
            commits=sub(self.commits, baseline.commits),
            rollbacks=sub(self.rollbacks, baseline.rollbacks),
            write_xacts=sub(self.write_xacts, baseline.write_xacts),
            rows_inserted=sub(self.rows_inserted, baseline.rows_inserted),
            rows_updated=sub(self.rows_updated, baseline.rows_updated),
            rows_deleted=sub(self.rows_deleted, baseline.rows_deleted),
            wal_bytes=sub(self.wal_bytes, baseline.wal_bytes),
            wal_records=sub(self.wal_records, baseline.wal_records),
            wal_fpi=sub(self.wal_fpi, baseline.wal_fpi),
            wal_syncs=sub(self.wal_syncs, baseline.wal_syncs),
            tables=self.tables,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "seconds": round(self.seconds, 3),
            "commits": self.commits,
            "write_xacts": self.write_xacts,
            "read_only_xacts": self.read_only_xacts,
            "rollbacks": self.rollbacks,
            "rows_inserted": self.rows_inserted,
            "rows_updated": self.rows_updated,
            "rows_deleted": self.rows_deleted,
            "wal_bytes": self.wal_bytes,
            "wal_records": self.wal_records,
            "wal_fpi": self.wal_fpi,
            "wal_syncs": self.wal_syncs,
            "tables": self.tables,
        }


def _read(maint: psycopg.Connection[Any], dbname: str) -> tuple[int, ...]:
    maint.execute(b"SELECT pg_stat_clear_snapshot()")
    db = maint.execute(_DB_SQL, (dbname,)).fetchone()
    cluster = maint.execute(_CLUSTER_SQL).fetchone()
    if db is None or cluster is None:
        raise RuntimeError(f"no statistics for database {dbname!r}")
    return tuple(int(v or 0) for v in (*db, *cluster))


def snapshot(database_url: str, maintenance_url: str, *, settle: float = 20.0) -> DbSnapshot:
    """Counters of the database at ``database_url``, once they have stopped moving.

    Database-level and WAL counters are read from ``maintenance_url`` (another database), so
    reading them adds nothing to the measured database. Table counters need a connection to the
    measured database itself: that read is one read-only transaction, counted in the next delta
    (and in the idle baseline, which is what subtracting a baseline is for).
    """
    dbname = make_url(database_url).database or ""
    with psycopg.connect(libpq_url(maintenance_url), autocommit=True) as maint:
        previous = _read(maint, dbname)
        stable = 0
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            time.sleep(0.25)
            current = _read(maint, dbname)
            stable = stable + 1 if current == previous else 0
            previous = current
            if stable >= 2:
                break
        at = time.monotonic()
    with psycopg.connect(libpq_url(database_url)) as conn:
        rows = conn.execute(_TABLES_SQL).fetchall()
        conn.commit()
    tables = {str(r[0]): (int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows}
    (commit, rollback, ins, upd, dele, xid, lsn, recs, fpi, wbytes, wwrite, wsync) = previous
    return DbSnapshot(
        at=at,
        xact_commit=commit,
        xact_rollback=rollback,
        tup_inserted=ins,
        tup_updated=upd,
        tup_deleted=dele,
        next_xid=xid,
        wal_lsn=lsn,
        wal_records=recs,
        wal_fpi=fpi,
        wal_bytes=wbytes,
        wal_write=wwrite,
        wal_sync=wsync,
        tables=tables,
    )


def store_statements(store: object) -> dict[str, sa.TextClause]:
    """The store's prepared ``sqlalchemy.text`` statements by name.

    They live either on the store itself (``_sql_<name>`` attributes) or on one object it holds
    (e.g. ``store._q.checkpoint``); both layouts are searched, so the benchmark follows the
    store's refactorings without depending on one of them.
    """
    found: dict[str, sa.TextClause] = {}
    for attr, value in vars(store).items():
        if isinstance(value, sa.TextClause):
            found[attr.removeprefix("_sql_")] = value
        elif not isinstance(value, type) and hasattr(value, "__dict__"):
            for name, inner in vars(value).items():
                if isinstance(inner, sa.TextClause):
                    found.setdefault(name.removeprefix("_sql_"), inner)
    return found


class StatementCounter:
    """Counts statements the store executes, named after the store's statements.

    Two paths are counted: SQLAlchemy executions (``before_execute``) and the store's one-statement
    hot path (``_one``, which runs on the pooled asyncpg connection without SQLAlchemy's execution
    layer). Identity of the statement maps it back to its name (see :func:`store_statements`);
    anything else is counted as ``other``.
    """

    def __init__(self, engine: AsyncEngine, store: object) -> None:
        self._engine = engine.sync_engine
        self._store = store
        self.names = {id(stmt): name for name, stmt in store_statements(store).items()}
        self.counts: Counter[str] = Counter()
        self._on = False
        self._one: Any = None

    def _before(self, conn: Any, clause: Any, *args: Any) -> None:
        self.counts[self.names.get(id(clause), "other")] += 1

    def __enter__(self) -> StatementCounter:
        event.listen(self._engine, "before_execute", self._before)
        original = getattr(self._store, "_one", None)
        if original is not None:
            self._one = original

            async def counted(stmt: Any, params: Any) -> Any:
                self.counts[self.names.get(id(stmt), "other")] += 1
                return await original(stmt, params)

            self._store._one = counted  # type: ignore[attr-defined]
        self._on = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._on:
            event.remove(self._engine, "before_execute", self._before)
            if self._one is not None:
                del self._store._one  # type: ignore[attr-defined]
                self._one = None
            self._on = False


class PgCpu:
    """CPU seconds used by an embedded PostgreSQL (postmaster + live and exited backends)."""

    def __init__(self, postmaster_pid: int | None) -> None:
        self._pid = postmaster_pid

    def seconds(self) -> float | None:
        """Total CPU so far, or None when the server is not local."""
        if self._pid is None:
            return None
        try:
            pm = psutil.Process(self._pid)
            t = pm.cpu_times()
            total = float(t.user + t.system + t.children_user + t.children_system)
            for child in pm.children():
                with contextlib.suppress(psutil.Error):
                    c = child.cpu_times()
                    total += float(c.user + c.system)
            return total
        except psutil.Error:
            return None
