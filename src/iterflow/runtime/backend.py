"""Opening and closing what an engine runs on: the database URL, the embedded server if no URL
is given, the connection pool, the PostgreSQL store and the terminal-notification listener."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from iterflow.core.errors import ConfigInvalid
from iterflow.core.settings import Settings
from iterflow.runtime.notify import TerminalListener
from iterflow.store.postgres import HOT_IDLE, TERMINAL_CHANNEL, PostgresStore
from iterflow.store.urls import (
    asyncpg_url,
    bad_env_url,
    libpq_url,
    redacted,
    resolve_database_url_source,
)

if TYPE_CHECKING:
    from iterflow.store.embedded import EmbeddedPostgres

__all__ = ["Backend", "open_backend"]

logger = logging.getLogger("iterflow.runtime.engine")


@dataclass
class Backend:
    """An open PostgreSQL backend; :meth:`close` releases everything it holds."""

    url: str
    sa: AsyncEngine
    store: PostgresStore
    listener: TerminalListener
    embedded: EmbeddedPostgres | None = None
    #: The pool of ``Settings.read_database_url`` (read-only inspection), if set.
    read_sa: AsyncEngine | None = None

    async def close(self) -> None:
        """Close the listener, give back the hot connections, dispose the pools, stop the
        embedded server (in that order)."""
        await self.listener.close()
        await self.store.close()
        await self.sa.dispose()
        if self.read_sa is not None:
            await self.read_sa.dispose()
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)


async def open_backend(settings: Settings) -> Backend:
    """Resolve the URL (argument, ``$ITERFLOW_DATABASE_URL``, ``$DATABASE_URL``, else the
    embedded server in ``settings.data_dir``: one rule for the library and ``flowctl``) and
    open the pool, the store and the listener on it."""
    url, source = resolve_database_url_source(settings.database_url)
    embedded: EmbeddedPostgres | None = None
    if url is None:
        from iterflow.store.embedded import EmbeddedPostgres

        data_dir = (settings.data_dir / "pgdata").expanduser().resolve()
        logger.info(
            "no database URL given and $ITERFLOW_DATABASE_URL / $DATABASE_URL unset: "
            "using embedded PostgreSQL, data directory %s",
            data_dir,
        )
        embedded = EmbeddedPostgres(data_dir)
        url = await asyncio.to_thread(embedded.start)
    else:
        try:
            asyncpg_url(url)
        except ConfigInvalid as exc:
            if source == "argument":
                raise
            raise bad_env_url(exc, source, argument="database_url=") from exc
        logger.debug("database %s (from %s)", redacted(url), source)
    read_url = settings.read_database_url
    if read_url is not None:
        try:  # refused before any pool opens
            asyncpg_url(read_url)
        except ConfigInvalid as exc:
            raise ConfigInvalid(f"read_database_url: {exc.message}") from exc
        logger.debug("read-only inspection on %s", redacted(read_url))
    sa = create_async_engine(
        asyncpg_url(url),
        pool_size=settings.pool_size,
        # headroom for the store's idle hot-path connections, so they never starve others
        max_overflow=settings.pool_size + HOT_IDLE,
        pool_pre_ping=False,
    )
    # list_runs, count_runs, status and changed_runs read here (a replica), when set
    read_sa = (
        None
        if read_url is None
        else create_async_engine(
            asyncpg_url(read_url), pool_size=settings.pool_size, pool_pre_ping=False
        )
    )
    store = PostgresStore(
        sa,
        schema=settings.db_schema,
        queue=settings.queue_name,
        read_engine=read_sa,
        # a frozen process's transactions end with its lease, never sooner than 5 s: a
        # long garbage-collector pause must not end a live one
        transaction_idle_seconds=max(settings.lease_seconds, 5.0),
        group_commit=settings.group_commit,
    )
    dsn = libpq_url(url)

    async def connect() -> Any:
        import asyncpg

        return await asyncpg.connect(dsn)

    return Backend(
        url, sa, store, TerminalListener(connect, TERMINAL_CHANNEL), embedded, read_sa=read_sa
    )
