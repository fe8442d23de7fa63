"""The PostgreSQL store's plumbing: hot-connection reuse and driver-error mapping.

* :class:`HotConnections` runs one statement as its own transaction (or a few in one
  transaction) on a pooled asyncpg connection, without SQLAlchemy's execution layer, and keeps a
  few connections checked out between statements (``HOT_IDLE``).
* :func:`map_error` turns a driver or pool failure into the stable error of the store boundary:
  data PostgreSQL refuses (SQLSTATE class 22/23) into
  :class:`~iterflow.core.errors.DataRejected`, missing tables into
  :class:`~iterflow.core.errors.SchemaMissing`, everything else into
  :class:`~iterflow.core.errors.DatabaseUnavailable`.
* :func:`guarded` opens a SQLAlchemy connection or transaction under that mapping;
  :func:`execute_on` runs a statement on a caller's connection (``conn=``) under it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn

from iterflow.core.errors import (
    ConfigInvalid,
    DatabaseUnavailable,
    DataRejected,
    FlowError,
    SchemaMissing,
)

__all__ = [
    "DATA_REFUSED",
    "HOT_IDLE",
    "SESSION_SAFE",
    "Fetch",
    "HotConnections",
    "Row",
    "execute_on",
    "guarded",
    "map_error",
    "sqlstate",
]

Row = Mapping[Any, Any]
#: Runs one statement in a :meth:`HotConnections.transaction` and returns its first row.
Fetch = Callable[[sa.TextClause, dict[str, Any]], Awaitable[Row | None]]

#: Idle hot-path connections a store keeps out of the pool (see :class:`HotConnections`). The
#: pool must have this much headroom beyond what everything else needs (``Engine`` adds it to
#: ``max_overflow``): a statement waiting in the pool is never handed a hot connection.
HOT_IDLE = 4
#: SQLSTATE classes after which a connection is still usable: data exception, integrity
#: violation, transaction rollback (serialization, deadlock), syntax error or access rule.
SESSION_SAFE = frozenset({"22", "23", "40", "42"})
#: SQLSTATE classes meaning "PostgreSQL refused this data": a data exception (22: bad value,
#: out of range, untranslatable character) or an integrity violation (23). Never an outage.
DATA_REFUSED = frozenset({"22", "23"})


class HotConnections:
    """One-statement transactions on pooled asyncpg connections, a few kept checked out."""

    def __init__(self, engine: AsyncEngine, *, idle_seconds: float | None = None) -> None:
        self._engine = engine
        #: The statement that makes PostgreSQL end a transaction left idle ``idle_seconds`` (its
        #: process frozen: SIGSTOP, a VM stall), and its locks with it: ``SET LOCAL
        #: idle_in_transaction_session_timeout``, the first of each of :meth:`transaction` and of
        #: the store's own SQLAlchemy transactions; None: never.
        self.idle_sql = (
            None
            if idle_seconds is None
            else "SET LOCAL idle_in_transaction_session_timeout = "
            f"{max(1, round(idle_seconds * 1000))}"
        )
        self._compiled: dict[int, tuple[str, tuple[str, ...]]] = {}
        #: Idle connections kept checked out of SQLAlchemy's pool between statements.
        self.idle: list[PoolProxiedConnection] = []
        self._closed = False

    async def close(self) -> None:
        """Give the idle connections back to the pool (before it is disposed)."""
        self._closed = True
        await self.drop()

    async def drop(self, exc: BaseException | None = None) -> None:
        """Close every idle connection; with ``exc``, invalidate them (they may be broken)."""
        hot, self.idle = self.idle, []
        for raw in hot:
            if exc is not None:
                raw.invalidate(exc)
            with contextlib.suppress(Exception):
                await greenlet_spawn(raw.close)

    async def fetchrow(self, stmt: sa.TextClause, params: dict[str, Any]) -> Row | None:
        """Run one statement in autocommit (it is its own transaction): the hot path.

        It skips SQLAlchemy's per-execution machinery (Connection, autobegin, isolation switch,
        result wrapping; ~0.3 ms a statement): the statement is compiled once for asyncpg and run
        with ``fetchrow`` on a connection of the same pool, where asyncpg keeps it prepared.
        SQLAlchemy's codecs on pooled connections still decode ``json``/``jsonb``.

        A few connections stay checked out between statements (``HOT_IDLE``), so consecutive
        statements skip the pool's checkout and check-in too (two greenlet switches and the
        reset, ~0.05 ms a statement); each is used by one statement at a time.
        """
        sql, args = self._bind(stmt, params)
        async with self._hot() as conn:
            row: Row | None = await conn.fetchrow(sql, *args)
        return row

    async def fetch(self, stmt: sa.TextClause, params: dict[str, Any]) -> list[Row]:
        """:meth:`fetchrow`, returning every row."""
        sql, args = self._bind(stmt, params)
        async with self._hot() as conn:
            rows: list[Row] = await conn.fetch(sql, *args)
        return rows

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Fetch]:
        """Several statements in one transaction on a hot connection, as :meth:`fetchrow` runs
        one: the block gets a ``fetchrow(stmt, params)``; the transaction commits when the block
        ends and rolls back if it raises.

        Its locks (the flow-control ones are per flow and key, for every worker) must not
        outlive a frozen process: with ``idle_seconds``, PostgreSQL ends the transaction, and
        the session, once it has been idle that long between statements."""
        async with self._hot() as conn, conn.transaction():
            if self.idle_sql is not None:
                await conn.execute(self.idle_sql)

            async def fetchrow(stmt: sa.TextClause, params: dict[str, Any]) -> Row | None:
                sql, args = self._bind(stmt, params)
                row: Row | None = await conn.fetchrow(sql, *args)
                return row

            yield fetchrow

    def _bind(self, stmt: sa.TextClause, params: dict[str, Any]) -> tuple[str, list[Any]]:
        """``stmt`` compiled for asyncpg (once) and ``params`` in its order."""
        compiled = self._compiled.get(id(stmt))
        if compiled is None:
            c = stmt.compile(dialect=self._engine.dialect)
            compiled = self._compiled[id(stmt)] = (c.string, tuple(c.positiontup or ()))
        sql, names = compiled
        return sql, [params[n] for n in names]

    @asynccontextmanager
    async def _hot(self) -> AsyncIterator[Any]:
        """An asyncpg connection for the block: an idle hot one, else one from the pool."""
        if self.idle:
            raw = self.idle.pop()
        else:
            try:
                raw = await self._engine.raw_connection()
            except Exception as exc:  # the pool raises the driver's errors unwrapped
                raise map_error(exc) from exc
        try:
            yield raw.driver_connection
        except FlowError:  # raised by the block's own code: the session is as it was
            await self._release(raw)
            raise
        except BaseException as exc:
            # Only a plain statement error (bad data, constraint, missing table, serialization)
            # leaves the session usable; anything else (terminated backend, lost socket,
            # cancellation mid-protocol) may leave it broken: it must not go back to the pool,
            # and the idle hot connections, opened before the same failure, are dropped too.
            state = str(getattr(exc, "sqlstate", None) or "")
            if not (isinstance(exc, asyncpg.PostgresError) and state[:2] in SESSION_SAFE):
                raw.invalidate(exc)
                await self.drop(exc)
            await greenlet_spawn(raw.close)
            if isinstance(exc, Exception):
                raise map_error(exc) from exc
            raise
        await self._release(raw)

    async def _release(self, raw: PoolProxiedConnection) -> None:
        """Keep ``raw`` idle for the next statement, or give it back to the pool."""
        if self._closed or len(self.idle) >= HOT_IDLE:
            await greenlet_spawn(raw.close)
        else:
            self.idle.append(raw)


async def execute_on(conn: Any, stmt: sa.TextClause, params: dict[str, Any]) -> Row | None:
    """Execute on a caller's SQLAlchemy ``AsyncConnection`` (their transaction)."""
    if not isinstance(conn, AsyncConnection):
        raise ConfigInvalid(
            "conn= must be a sqlalchemy.ext.asyncio.AsyncConnection inside a transaction"
        )
    try:
        result = await conn.execute(stmt, params)
    except Exception as exc:
        raise map_error(exc) from exc
    return result.mappings().first()


def sqlstate(exc: BaseException) -> str:
    """The SQLSTATE of a driver error, raw or wrapped by SQLAlchemy ('' if none)."""
    for candidate in (exc, getattr(exc, "orig", None), getattr(exc, "__cause__", None)):
        state = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(state, str) and state:
            return state
    orig = getattr(exc, "orig", None)
    cause = getattr(orig, "__cause__", None)
    state = getattr(cause, "sqlstate", None)
    return state if isinstance(state, str) else ""


def map_error(exc: Exception) -> Exception:
    """The stable error for a driver/pool failure at the store boundary."""
    state = sqlstate(exc)
    if state[:2] in DATA_REFUSED:
        text = str(getattr(exc, "orig", None) or exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        return DataRejected(
            f"PostgreSQL refused the data (SQLSTATE {state}: {first}); nothing was written. "
            "Retrying the same data fails the same way: fix the value",
            details={"sqlstate": state},
        )
    if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.InvalidSchemaNameError):
        return SchemaMissing(
            f"iterflow tables are missing ({str(exc).strip().splitlines()[0]}); run "
            "`flowctl migrate` or `await engine.migrate()`"
        )
    if isinstance(exc, asyncpg.PostgresError):
        text = str(exc).strip()
        return DatabaseUnavailable(
            f"PostgreSQL error: {text.splitlines()[0] if text else type(exc).__name__}"
        )
    if isinstance(exc, DBAPIError):
        text = str(exc.orig) if exc.orig is not None else str(exc)
        if isinstance(exc, ProgrammingError) and "does not exist" in text:
            return SchemaMissing(
                f"iterflow tables are missing ({text.splitlines()[0]}); run `flowctl migrate` "
                "or `await engine.migrate()`"
            )
        first = text.splitlines()[0] if text else type(exc).__name__
        return DatabaseUnavailable(f"PostgreSQL error: {first}")
    if isinstance(exc, OSError):
        return DatabaseUnavailable(f"cannot reach PostgreSQL: {exc}")
    return DatabaseUnavailable(f"PostgreSQL connection failed: {type(exc).__name__}: {exc}")


@asynccontextmanager
async def guarded(opening: Any) -> AsyncIterator[AsyncConnection]:
    """Enter ``opening`` (``engine.begin()`` or ``.connect()``) and map every failure that is not
    ours to a stable error. A connection that failed with something other than a database error
    (e.g. asyncpg's ``InternalClientError`` after the server killed the backend mid-statement)
    is in an unknown state and is invalidated rather than returned to the pool; SQLAlchemy
    invalidates disconnects itself."""
    try:
        async with opening as conn:
            try:
                yield conn
            except (DBAPIError, FlowError):
                raise
            except Exception:
                with contextlib.suppress(Exception):
                    await conn.invalidate()
                raise
    except FlowError:
        raise
    except Exception as exc:
        raise map_error(exc) from exc
