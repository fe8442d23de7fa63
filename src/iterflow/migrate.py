"""Install or upgrade iterflow's tables (and procrastinate's) with alembic.

The alembic revisions ship with the package (``migrations/`` in the repository, force-included
as ``iterflow/_migrations`` in the wheel), so ``flowctl migrate`` and ``engine.migrate()`` work
from an installed wheel. They keep their own version table, ``<schema>.iterflow_alembic_version``,
so they never collide with the host application's alembic history.

The helpers below (:func:`configured_schema`, :func:`include_object_for`, ...) are shared by
``migrations/env.py``, the revisions and the tests, so all three agree on the schema name and on
which database objects belong to iterflow.
"""

from __future__ import annotations

import importlib.resources
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from .errors import ConfigInvalid, DatabaseUnavailable
from .store.schema import DEFAULT_SCHEMA
from .urls import psycopg_url

__all__ = [
    "CONNECTION_ATTRIBUTE",
    "DROP_PROCRASTINATE_ATTRIBUTE",
    "SCHEMA_ATTRIBUTE",
    "URL_ATTRIBUTE",
    "VERSION_TABLE",
    "configured_schema",
    "configured_url",
    "downgrade",
    "drop_procrastinate_requested",
    "include_name_for",
    "include_object_for",
    "make_config",
    "revision_schema",
    "run_migrations",
    "script_location",
    "validate_schema_name",
]

VERSION_TABLE = "iterflow_alembic_version"
"""Name of alembic's version table; it lives in the iterflow schema itself."""

SCHEMA_ATTRIBUTE = "iterflow_schema"
"""``Config.attributes`` key holding the schema that receives the iterflow tables."""

URL_ATTRIBUTE = "database_url"
"""``Config.attributes`` key holding the database URL (used when no connection is given)."""

CONNECTION_ATTRIBUTE = "connection"
"""``Config.attributes`` key holding an open connection for env.py to use (alembic cookbook)."""

DROP_PROCRASTINATE_ATTRIBUTE = "iterflow_drop_procrastinate"
"""``Config.attributes`` key: when true, downgrading to base also drops procrastinate's objects."""

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_TRUE = frozenset({"1", "true", "yes", "on"})
_INSUFFICIENT_PRIVILEGE = "42501"

# alembic's `context` and `op` are module-level proxies: one command at a time per process.
# Other processes are serialised by the advisory lock that env.py takes.
_ALEMBIC_LOCK = threading.Lock()

IncludeObject = Callable[[Any, str | None, str, bool, Any], bool]
IncludeName = Callable[[str | None, str, Mapping[str, str | None]], bool]


def validate_schema_name(schema: str) -> str:
    """Return ``schema`` if it is a lowercase SQL identifier, else raise ``ConfigInvalid``."""
    if not _IDENT.match(schema):
        raise ConfigInvalid(
            f"schema name {schema!r} is not a lowercase SQL identifier "
            "(letters, digits and underscores, at most 63 characters), e.g. 'iterflow'"
        )
    return schema


def script_location() -> Path:
    """The directory holding ``env.py`` and ``versions/``.

    An installed wheel has it as ``iterflow/_migrations``; an editable install (a checkout) uses
    the repository's top-level ``migrations/``.
    """
    packaged = importlib.resources.files("iterflow") / "_migrations"
    if isinstance(packaged, Path) and (packaged / "env.py").is_file():
        return packaged
    import iterflow

    checkout = Path(iterflow.__file__).resolve().parents[2] / "migrations"
    if (checkout / "env.py").is_file():
        return checkout
    raise FileNotFoundError(
        f"iterflow's alembic migrations are missing: looked in {packaged} and {checkout}; "
        "reinstall the iterflow package"
    )


def make_config(
    database_url: str | None = None,
    *,
    schema: str = DEFAULT_SCHEMA,
    drop_procrastinate: bool = False,
) -> Config:
    """A programmatic alembic ``Config`` (no ini file) for iterflow's migrations."""
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    config.set_main_option("path_separator", "os")
    config.attributes[SCHEMA_ATTRIBUTE] = validate_schema_name(schema)
    config.attributes[DROP_PROCRASTINATE_ATTRIBUTE] = drop_procrastinate
    if database_url is not None:
        config.attributes[URL_ATTRIBUTE] = database_url
    return config


def run_migrations(
    database_url: str, *, schema: str = DEFAULT_SCHEMA, revision: str = "head"
) -> None:
    """Upgrade the iterflow tables in ``schema`` (and procrastinate's, once per database).

    Creates the schema if it is missing. Safe to call repeatedly, from several threads (one
    alembic command at a time per process) and from several processes at once (env.py takes a
    database-wide advisory lock). Raises ``DatabaseUnavailable`` if
    PostgreSQL cannot be reached or refuses the migration; nothing is changed in that case.
    """
    config = make_config(database_url, schema=schema)
    with _ALEMBIC_LOCK, _connection(database_url, schema, "upgrade") as connection:
        config.attributes[CONNECTION_ATTRIBUTE] = connection
        command.upgrade(config, revision)


def downgrade(
    database_url: str,
    *,
    schema: str = DEFAULT_SCHEMA,
    revision: str = "base",
    drop_procrastinate: bool = False,
) -> None:
    """Downgrade the iterflow tables in ``schema`` to ``revision`` (default: remove them all).

    Downgrading to ``base`` drops the tables and the schema's version table, but leaves the
    schema itself and procrastinate's objects (other iterflow schemas in the same database may
    share them) unless ``drop_procrastinate`` is true.
    """
    config = make_config(database_url, schema=schema, drop_procrastinate=drop_procrastinate)
    with _ALEMBIC_LOCK, _connection(database_url, schema, "downgrade") as connection:
        config.attributes[CONNECTION_ATTRIBUTE] = connection
        command.downgrade(config, revision)


@contextmanager
def _connection(database_url: str, schema: str, action: str) -> Iterator[Connection]:
    """One transaction for the whole alembic command, with driver errors mapped."""
    validate_schema_name(schema)
    url = psycopg_url(database_url)
    engine = sa.create_engine(url, poolclass=sa.NullPool, connect_args={"connect_timeout": 10})
    where = url.render_as_string(hide_password=True)
    try:
        with engine.begin() as connection:
            yield connection
    except sa.exc.OperationalError as exc:
        raise DatabaseUnavailable(
            f"could not {action} iterflow schema {schema!r}: PostgreSQL at {where} is not "
            f"reachable ({_first_line(exc)}); check that the server is running and that the "
            "URL, user and password are right"
        ) from exc
    except sa.exc.DBAPIError as exc:
        hint = ""
        if getattr(exc.orig, "sqlstate", None) == _INSUFFICIENT_PRIVILEGE:
            hint = "; the role needs CREATE on the database (or an existing schema it owns)"
        raise DatabaseUnavailable(
            f"could not {action} iterflow schema {schema!r} at {where}: PostgreSQL refused it "
            f"({_first_line(exc)}){hint}. Nothing was changed"
        ) from exc
    finally:
        engine.dispose()


def _first_line(exc: sa.exc.DBAPIError) -> str:
    text = str(exc.orig) if exc.orig is not None else str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc.orig).__name__


def _x_arguments(config: Config) -> dict[str, str]:
    """``-x key=value`` arguments given to the alembic command line, if any."""
    raw: list[str] = list(getattr(config.cmd_opts, "x", None) or [])
    result: dict[str, str] = {}
    for item in raw:
        key, sep, value = item.partition("=")
        if sep:
            result[key.strip()] = value.strip()
    return result


def configured_schema(config: Config | None) -> str:
    """The schema for the iterflow tables: ``attributes``, then ``-x schema=``, then default."""
    if config is None:
        return DEFAULT_SCHEMA
    value = config.attributes.get(SCHEMA_ATTRIBUTE)
    if value is None:
        value = _x_arguments(config).get("schema", DEFAULT_SCHEMA)
    return validate_schema_name(str(value))


def configured_url(config: Config) -> str | None:
    """The database URL: ``attributes``, then ``-x url=``, then ``sqlalchemy.url`` in the ini."""
    value = config.attributes.get(URL_ATTRIBUTE)
    if value is None:
        value = _x_arguments(config).get("url") or config.get_main_option("sqlalchemy.url")
    return str(value) if value else None


def drop_procrastinate_requested(config: Config | None) -> bool:
    """Whether a downgrade to base should drop procrastinate's objects too.

    Set with ``Config.attributes["iterflow_drop_procrastinate"] = True`` or, on the alembic
    command line, ``-x drop_procrastinate=true``.
    """
    if config is None:
        return False
    value = config.attributes.get(DROP_PROCRASTINATE_ATTRIBUTE)
    if value is None:
        value = _x_arguments(config).get("drop_procrastinate", "")
    if isinstance(value, str):
        return value.strip().lower() in _TRUE
    return bool(value)


def revision_schema(context: MigrationContext) -> str:
    """For a revision: the schema of the running alembic command (``op.get_context()``)."""
    return configured_schema(context.config)


def include_name_for(schema: str) -> IncludeName:
    """An alembic ``include_name`` hook that reflects only ``schema`` (not the whole database)."""

    def include_name(name: str | None, type_: str, parent_names: Mapping[str, str | None]) -> bool:
        if type_ == "schema":
            return name == schema
        return not (name or "").startswith("procrastinate_")

    return include_name


def include_object_for(schema: str) -> IncludeObject:
    """An alembic ``include_object`` hook: only iterflow's objects in ``schema`` are compared.

    Ignores everything named ``procrastinate_*``, alembic's version table, and any table outside
    ``schema``.
    """

    def include_object(
        obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        if name is not None and (name.startswith("procrastinate_") or name == VERSION_TABLE):
            return False
        if type_ == "table":
            return bool(getattr(obj, "schema", None) == schema)
        return True

    return include_object
