"""The PostgreSQL server a benchmark runs on, and one fresh, migrated database per measurement.

``--database-url`` / ``DATABASE_URL`` selects an existing server (the role needs CREATEDB);
otherwise an embedded PostgreSQL (the ``pgserver`` wheel) is started in a temporary directory
with its **default durability settings** (``fsync`` and ``synchronous_commit`` on), and removed
afterwards. Each measurement gets its own database cloned from a migrated template, so
``pg_stat_database`` counters belong to that measurement alone.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from iterflow.store.migrate import run_migrations
from iterflow.store.urls import libpq_url

__all__ = ["BenchServer", "server_settings", "with_database"]

TEMPLATE = "iterflow_bench_template"

#: Server settings printed with every report (they decide what a commit costs).
SHOWN_SETTINGS = (
    "server_version",
    "fsync",
    "synchronous_commit",
    "wal_sync_method",
    "full_page_writes",
    "commit_delay",
    "shared_buffers",
    "max_connections",
    "wal_level",
    "track_counts",
)


def with_database(url: str, name: str) -> str:
    """``url`` pointed at database ``name``."""
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def admin_exec(url: str, *statements: str) -> None:
    """Run statements in autocommit on ``url`` (CREATE/DROP DATABASE cannot run in a block)."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.encode())


def server_settings(url: str) -> dict[str, str]:
    """The durability-relevant settings of the server behind ``url``."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        out: dict[str, str] = {}
        for name in SHOWN_SETTINGS:
            row = conn.execute(f"SHOW {name}".encode()).fetchone()
            out[name] = str(row[0]) if row else "?"
        return out


@dataclass
class BenchServer:
    """A PostgreSQL server: embedded in a temporary directory, or the one at ``url``."""

    url: str | None = None
    keep_data: bool = False
    embedded: bool = field(init=False, default=False)
    data_dir: Path | None = field(init=False, default=None)
    _server: Any = field(init=False, default=None)
    _databases: list[str] = field(init=False, default_factory=list)

    def start(self) -> str:
        """Start the embedded server if no URL was given; create the migrated template."""
        if self.url is None:
            from iterflow.store.embedded import EmbeddedPostgres

            self.data_dir = Path(tempfile.mkdtemp(prefix="iterflow-bench-"))
            self._server = EmbeddedPostgres(self.data_dir / "pgdata")
            self.url = self._server.start()
            self.embedded = True
        admin_exec(
            self.url,
            f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)",
            f"CREATE DATABASE {TEMPLATE}",
        )
        run_migrations(with_database(self.url, TEMPLATE))
        return self.url

    @property
    def admin_url(self) -> str:
        """URL of the server's maintenance database (where the template was created from)."""
        if self.url is None:
            raise RuntimeError("server not started")
        return self.url

    def create_database(self, label: str) -> str:
        """A fresh database cloned from the migrated template; returns its URL."""
        name = f"bench_{label}_{uuid.uuid4().hex[:8]}"
        admin_exec(self.admin_url, f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        self._databases.append(name)
        return with_database(self.admin_url, name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by :meth:`create_database`."""
        name = make_url(url).database
        if name is None or name not in self._databases:
            return
        admin_exec(self.admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self._databases.remove(name)

    @contextlib.contextmanager
    def database(self, label: str) -> Iterator[str]:
        """A fresh database for one measurement, dropped afterwards."""
        url = self.create_database(label)
        try:
            yield url
        finally:
            with contextlib.suppress(psycopg.Error):
                self.drop_database(url)

    def postmaster_pid(self) -> int | None:
        """The embedded server's postmaster pid (to account PostgreSQL's CPU time)."""
        if self.data_dir is None:
            return None
        pid_file = self.data_dir / "pgdata" / "postmaster.pid"
        try:
            return int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def log_path(self) -> Path | None:
        """The embedded server's log file (None for a server at a URL)."""
        return None if self.data_dir is None else self.data_dir / "pgdata" / "log"

    def stop(self) -> None:
        """Drop leftover databases and the template; stop and remove the embedded server."""
        if self.url is not None:
            with contextlib.suppress(psycopg.Error):
                for name in list(self._databases):
                    admin_exec(self.url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                admin_exec(self.url, f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self.data_dir is not None and not self.keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def describe(self) -> dict[str, Any]:
        """Where the benchmark ran and with which settings, for the report."""
        settings = server_settings(self.admin_url)
        versions = {}
        for pkg in ("sqlalchemy", "asyncpg", "procrastinate", "psycopg", "pydantic", "pgserver"):
            with contextlib.suppress(metadata.PackageNotFoundError):
                versions[pkg] = metadata.version(pkg)
        return {
            "server": "embedded pgserver (temporary data directory)"
            if self.embedded
            else "external (DATABASE_URL / --database-url)",
            "data_dir": str(self.data_dir) if self.data_dir else None,
            "settings": settings,
            "python": platform.python_version(),
            "packages": versions,
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        }
