"""Database URL forms: one user-facing URL, three driver spellings."""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url

from .errors import ConfigInvalid

__all__ = ["asyncpg_url", "libpq_url", "psycopg_url"]


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigInvalid(f"cannot parse database URL {url!r}: {exc}") from exc
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise ConfigInvalid(f"iterflow needs PostgreSQL, got {parsed.get_backend_name()!r}")
    return parsed


def asyncpg_url(url: str) -> URL:
    """SQLAlchemy URL on asyncpg (the engine's driver)."""
    return _parse(url).set(drivername="postgresql+asyncpg")


def psycopg_url(url: str) -> URL:
    """SQLAlchemy URL on psycopg 3 (alembic migrations)."""
    return _parse(url).set(drivername="postgresql+psycopg")


def libpq_url(url: str) -> str:
    """A plain ``postgresql://`` conninfo for psycopg (procrastinate's worker)."""
    return _parse(url).set(drivername="postgresql").render_as_string(hide_password=False)
