"""Database URLs: which one to use, and its three driver spellings.

:func:`resolve_database_url` is the one rule shared by ``Engine.open()`` and ``flowctl``, so an
application and its ``flowctl`` never silently look at different databases: an explicit URL,
else ``$ITERFLOW_DATABASE_URL``, else ``$DATABASE_URL``, else None (the embedded server). These
two variables are the only environment the library reads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from sqlalchemy.engine import URL, make_url

from iterflow.core.errors import ConfigInvalid

__all__ = [
    "URL_ENV_VARS",
    "asyncpg_url",
    "bad_env_url",
    "libpq_url",
    "psycopg_url",
    "redacted",
    "resolve_database_url",
    "resolve_database_url_source",
]

URL_ENV_VARS = ("ITERFLOW_DATABASE_URL", "DATABASE_URL")
"""Environment variables naming the database, in order of precedence."""


def resolve_database_url_source(
    explicit: str | None, environ: Mapping[str, str] | None = None
) -> tuple[str | None, str]:
    """:func:`resolve_database_url` and where the URL came from (``"argument"``, the
    variable's ``"$NAME"``, or ``"embedded"``). Empty values count as unset."""
    if explicit:
        return explicit, "argument"
    env = os.environ if environ is None else environ
    for name in URL_ENV_VARS:
        value = env.get(name)
        if value:
            return value, f"${name}"
    return None, "embedded"


def bad_env_url(exc: ConfigInvalid, source: str, *, argument: str) -> ConfigInvalid:
    """``exc`` (a URL that is not PostgreSQL's) for a URL that came from the variable
    ``source`` (``"$NAME"``), naming it and how to fix it; ``argument`` is how the caller passes
    a URL instead (``--database-url``, ``database_url=``). Only a URL in a variable of lower
    precedence can be overridden by setting the other one."""
    fix = f"fix or unset {source}, or pass {argument}"
    if source != f"${URL_ENV_VARS[0]}":
        fix += f" (or set ${URL_ENV_VARS[0]}, which takes precedence over {source})"
    return ConfigInvalid(f"{exc.message} (the URL in {source}); {fix}")


def resolve_database_url(
    explicit: str | None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The database URL to use: ``explicit``, else ``$ITERFLOW_DATABASE_URL``, else
    ``$DATABASE_URL``, else None, meaning the embedded PostgreSQL in ``Settings.data_dir``."""
    return resolve_database_url_source(explicit, environ)[0]


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigInvalid(f"cannot parse database URL {url!r}: {exc}") from exc
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise ConfigInvalid(f"iterflow needs PostgreSQL, got {parsed.get_backend_name()!r}")
    return parsed


def redacted(url: str) -> str:
    """``url`` without its password, for logs and messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable database URL>"


def asyncpg_url(url: str) -> URL:
    """SQLAlchemy URL on asyncpg (the engine's driver)."""
    return _parse(url).set(drivername="postgresql+asyncpg")


def psycopg_url(url: str) -> URL:
    """SQLAlchemy URL on psycopg 3 (alembic migrations)."""
    return _parse(url).set(drivername="postgresql+psycopg")


def libpq_url(url: str) -> str:
    """A plain ``postgresql://`` conninfo for psycopg (procrastinate's worker)."""
    return _parse(url).set(drivername="postgresql").render_as_string(hide_password=False)
