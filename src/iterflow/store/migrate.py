"""Install or upgrade iterflow's tables (and procrastinate's) with alembic.

The alembic revisions ship with the package (``migrations/`` in the repository, force-included
as ``iterflow/_migrations`` in the wheel), so ``flowctl migrate`` and ``engine.migrate()`` work
from an installed wheel. They keep their own version table, ``<schema>.iterflow_alembic_version``,
so they never collide with the host application's alembic history.

Applications whose own alembic creates iterflow's tables (from ``flowctl generate-schema``) adopt
them with :func:`stamp` (``flowctl migrate --stamp``): it checks the tables against this version's
and records them as installed, so a later ``flowctl migrate`` is a no-op instead of failing with
``SCHEMA_CONFLICT`` ("relation already exists").

The helpers below (:func:`configured_schema`, :func:`include_object_for`, ...) are shared by
``migrations/env.py``, the revisions and the tests, so all three agree on the schema name and on
which database objects belong to iterflow.
"""

from __future__ import annotations

import importlib.resources
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from iterflow.core.errors import DatabaseUnavailable, SchemaConflict, SchemaMissing
from iterflow.store import outbox
from iterflow.store.schema import DEFAULT_SCHEMA, VERSION_TABLE, validate_schema_name
from iterflow.store.urls import psycopg_url

# VERSION_TABLE and validate_schema_name live in schema.py (schemagen needs them too, and
# migrate imports schemagen); re-exported here for migrations/ and existing callers.
__all__ = [
    "CONNECTION_ATTRIBUTE",
    "DROP_PROCRASTINATE_ATTRIBUTE",
    "MIGRATION_LOCK_KEY",
    "PROGRESS_ATTRIBUTE",
    "SCHEMA_ATTRIBUTE",
    "URL_ATTRIBUTE",
    "VERSION_TABLE",
    "StampResult",
    "configured_schema",
    "configured_url",
    "downgrade",
    "drop_procrastinate_requested",
    "ensure_queue_objects",
    "head_revision",
    "include_name_for",
    "include_object_for",
    "install_procrastinate",
    "make_config",
    "progress_callbacks",
    "revision_schema",
    "run_migrations",
    "script_location",
    "stamp",
    "table_differences",
    "validate_schema_name",
]

MIGRATION_LOCK_KEY = 0x1F10_F10E_0A1E_3B1C
"""Advisory lock serialising every migrate/stamp of every iterflow process on one database."""

SCHEMA_ATTRIBUTE = "iterflow_schema"
"""``Config.attributes`` key holding the schema that receives the iterflow tables."""

URL_ATTRIBUTE = "database_url"
"""``Config.attributes`` key holding the database URL (used when no connection is given)."""

CONNECTION_ATTRIBUTE = "connection"
"""``Config.attributes`` key holding an open connection for env.py to use (alembic cookbook)."""

DROP_PROCRASTINATE_ATTRIBUTE = "iterflow_drop_procrastinate"
"""``Config.attributes`` key: when true, downgrading to base also drops procrastinate's objects."""

PROGRESS_ATTRIBUTE = "iterflow_progress"
"""``Config.attributes`` key: ``progress(done, total)`` told as each revision is applied."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_INSUFFICIENT_PRIVILEGE = "42501"
#: SQLSTATEs of "already exists": duplicate_table (also indexes, sequences), duplicate_object
#: (constraints, types), duplicate_function, duplicate_schema.
_ALREADY_EXISTS = frozenset({"42P07", "42710", "42723", "42P06"})
_STAMP_HINT = (
    "`flowctl migrate --stamp` (iterflow.store.migrate.stamp()) checks them against this iterflow "
    "version's tables and records them as installed"
)

# alembic's `context` and `op` are module-level proxies: one command at a time per process.
# Other processes are serialised by the advisory lock that env.py takes.
_ALEMBIC_LOCK = threading.Lock()

IncludeObject = Callable[[Any, str | None, str, bool, Any], bool]
IncludeName = Callable[[str | None, str, Mapping[str, str | None]], bool]


def script_location() -> Path:
    """The directory holding ``env.py`` and ``versions/``.

    An installed wheel has it as ``iterflow/_migrations``; an editable install (a checkout) uses
    the repository's top-level ``migrations/``.
    """
    packaged = importlib.resources.files("iterflow") / "_migrations"
    if isinstance(packaged, Path) and (packaged / "env.py").is_file():
        return packaged
    # src/iterflow/store/migrate.py -> the checkout (not `import iterflow`: the root facade
    # names the runtime, and the store must not depend on it)
    checkout = Path(__file__).resolve().parents[3] / "migrations"
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
    database_url: str,
    *,
    schema: str = DEFAULT_SCHEMA,
    revision: str = "head",
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Upgrade the iterflow tables in ``schema`` (and procrastinate's, once per database).

    Creates the schema if it is missing. Safe to call repeatedly, from several threads (one
    alembic command at a time per process) and from several processes at once (env.py takes a
    database-wide advisory lock). Raises ``DatabaseUnavailable`` if
    PostgreSQL cannot be reached or refuses the migration; nothing is changed in that case.
    ``progress(done, total)`` is told once the revisions to apply are known (``0, total``) and
    after each (in this thread; they all commit together at the end).
    """
    config = make_config(database_url, schema=schema)
    if progress is not None:
        config.attributes[PROGRESS_ATTRIBUTE] = progress
    with _ALEMBIC_LOCK, _connection(database_url, schema, "upgrade") as connection:
        config.attributes[CONNECTION_ATTRIBUTE] = connection
        command.upgrade(config, revision)


def progress_callbacks(
    config: Config, connection: Connection, schema: str, destination: Any
) -> tuple[Callable[..., None], ...]:
    """alembic ``on_version_apply`` callbacks telling ``config``'s progress callable (if any)
    ``(done, total)`` for an upgrade of ``schema`` to revision ``destination`` (env.py calls
    it once it holds the migration lock, so ``total`` counts what this command applies)."""
    report = config.attributes.get(PROGRESS_ATTRIBUTE)
    if report is None or not isinstance(destination, str):
        return ()
    recorded = MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE, "version_table_schema": schema}
    )
    current = recorded.get_current_revision() or "base"
    script = ScriptDirectory.from_config(config)
    total = sum(1 for _ in script.iterate_revisions(destination, current))
    done = 0
    report(done, total)

    def applied(**_: Any) -> None:
        nonlocal done
        done += 1
        report(done, max(done, total))

    return (applied,)


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
        if getattr(exc.orig, "sqlstate", None) in _ALREADY_EXISTS:
            raise SchemaConflict(
                f"could not {action} iterflow schema {schema!r} at {where}: "
                f"{_first_line(exc)}, but iterflow's migrations did not record creating it. If "
                "your own migrations created iterflow's tables (from `flowctl generate-schema`), "
                f"{_STAMP_HINT}. Nothing was changed"
            ) from exc
        hint = ""
        if getattr(exc.orig, "sqlstate", None) == _INSUFFICIENT_PRIVILEGE:
            hint = "; the role needs CREATE on the database (or an existing schema it owns)"
        raise DatabaseUnavailable(
            f"could not {action} iterflow schema {schema!r} at {where}: PostgreSQL refused it "
            f"({_first_line(exc)}){hint}. Nothing was changed"
        ) from exc
    finally:
        engine.dispose()


@dataclass(frozen=True)
class StampResult:
    """What :func:`stamp` found and did."""

    schema: str
    revision: str
    """The revision now recorded (head)."""
    previous: str | None
    """The revision recorded before (None: iterflow's migrations had never run here)."""
    installed_procrastinate: bool
    """Whether procrastinate's schema was missing and has been installed."""


def head_revision() -> str:
    """The newest revision of iterflow's migrations (what ``flowctl migrate`` upgrades to)."""
    head = ScriptDirectory.from_config(make_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise FileNotFoundError(f"no alembic revisions in {script_location()}")
    return head


def stamp(database_url: str, *, schema: str = DEFAULT_SCHEMA) -> StampResult:
    """Adopt iterflow's tables created by the application's own migrations.

    For tables made from ``flowctl generate-schema`` output (SQL or the SQLAlchemy module) by
    your alembic or your DBA, instead of ``run_migrations``: in one transaction, under the
    migration lock, it checks that the tables in ``schema`` are exactly this iterflow version's
    (:func:`table_differences`), installs procrastinate's schema if the database has none (the
    generated output does not contain it) and iterflow's objects on it
    (:func:`ensure_queue_objects`), and records the head revision in
    ``<schema>.iterflow_alembic_version`` without running iterflow's DDL. ``flowctl migrate``
    (``run_migrations``) is then a no-op. Run it again after each iterflow upgrade, once your
    migrations have applied the regenerated tables.

    Raises ``SCHEMA_MISSING`` if the schema holds none of iterflow's tables and
    ``SCHEMA_CONFLICT`` if they differ or the recorded revision is unknown to this version;
    nothing is changed then.
    """
    config = make_config(database_url, schema=schema)
    script = ScriptDirectory.from_config(config)
    head = head_revision()
    with _ALEMBIC_LOCK, _connection(database_url, schema, "stamp") as connection:
        connection.execute(
            sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
        )
        previous = _recorded_revision(connection, schema)
        if previous is not None and previous != head:
            try:
                known = script.get_revision(previous) is not None
            except Exception:
                known = False
            if not known:
                raise SchemaConflict(
                    f"schema {schema!r} is recorded at iterflow revision {previous!r}, which this "
                    f"iterflow version does not know (its newest is {head!r}); upgrade iterflow "
                    "instead of stamping. Nothing was changed"
                )
        present = _present_tables(connection, schema)
        if not present:
            raise SchemaMissing(
                f"schema {schema!r} holds none of iterflow's tables, so there is nothing to "
                "stamp: create them with `flowctl migrate` (without --stamp), or apply "
                "`flowctl generate-schema`'s output with your own migrations first. Nothing was "
                "changed"
            )
        differences = table_differences(connection, schema)
        if differences:
            shown = "; ".join(differences[:10])
            more = f" (+{len(differences) - 10} more)" if len(differences) > 10 else ""
            raise SchemaConflict(
                f"the iterflow tables in schema {schema!r} differ from this iterflow version's "
                f"(revision {head}): {shown}{more}. Regenerate them with `flowctl "
                "generate-schema`, apply that with your migrations, then run `flowctl migrate "
                "--stamp` again. Nothing was changed"
            )
        installed = install_procrastinate(connection)
        if not installed:  # installed before (by an earlier iterflow version, perhaps)
            ensure_queue_objects(connection)
        if previous != head:
            config.attributes[CONNECTION_ATTRIBUTE] = connection
            command.stamp(config, "head")
    return StampResult(schema, head, previous, installed)


def _recorded_revision(connection: Connection, schema: str) -> str | None:
    context = MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE, "version_table_schema": schema}
    )
    heads = context.get_current_heads()
    return heads[0] if heads else None


def _present_tables(connection: Connection, schema: str) -> set[str]:
    from iterflow.store.schemagen import metadata_for

    names = set(sa.inspect(connection).get_table_names(schema=schema))
    return names & {table.name for table in metadata_for(schema).sorted_tables}


_CATALOG = {
    "column": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
            || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
            || coalesce(' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid), '')
            || CASE a.attidentity WHEN 'a' THEN ' GENERATED ALWAYS AS IDENTITY'
                                  WHEN 'd' THEN ' GENERATED BY DEFAULT AS IDENTITY' ELSE '' END
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = :ns AND c.relname = ANY(:tables) AND a.attnum > 0
          AND NOT a.attisdropped""",
    "constraint": """
        SELECT c.relname, k.conname, pg_get_constraintdef(k.oid)
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        WHERE c.relnamespace = :ns AND c.relname = ANY(:tables)""",
    "index": """
        SELECT t.relname, i.relname, pg_get_indexdef(x.indexrelid)
        FROM pg_index x
        JOIN pg_class i ON i.oid = x.indexrelid
        JOIN pg_class t ON t.oid = x.indrelid
        WHERE t.relnamespace = :ns AND t.relname = ANY(:tables)""",
}


def table_differences(connection: Connection, schema: str = DEFAULT_SCHEMA) -> list[str]:
    """How the iterflow tables in ``schema`` differ from this version's (empty: identical).

    Compares what PostgreSQL reports (``format_type``, defaults and identity, every constraint's
    ``pg_get_constraintdef``, every index's ``pg_get_indexdef``: partial predicates and methods
    included) with the same tables made by ``metadata.create_all`` as temporary tables in a
    savepoint that is rolled back, so nothing is left behind. Each difference names the table and
    the column, constraint or index, e.g. ``column runs.meta is missing``.
    """
    from iterflow.store.schemagen import metadata_for

    validate_schema_name(schema)
    tables = [table.name for table in metadata_for(schema).sorted_tables]
    namespace = connection.execute(
        sa.text("SELECT oid FROM pg_namespace WHERE nspname = :schema"), {"schema": schema}
    ).scalar()
    present: set[str] = set()
    if namespace is not None:
        present = set(
            connection.execute(
                sa.text("SELECT relname FROM pg_class WHERE relnamespace = :ns AND relkind = 'r'"),
                {"ns": namespace},
            ).scalars()
        )
    found = [f"table {name} is missing" for name in tables if name not in present]
    kept = [name for name in tables if name in present]
    if not kept:
        return found
    actual = _catalog(connection, namespace, (f'"{schema}".', f"{schema}."), kept)
    savepoint = connection.begin_nested()
    try:
        metadata_for("pg_temp").create_all(connection, checkfirst=False)
        temp = connection.execute(
            sa.text("SELECT oid, nspname FROM pg_namespace WHERE oid = pg_my_temp_schema()")
        ).one()
        expected = _catalog(connection, temp[0], (f"{temp[1]}.", "pg_temp."), kept)
    finally:
        savepoint.rollback()
    for key in sorted(expected.keys() | actual.keys()):
        kind, table, name = key
        if key not in actual:
            found.append(f"{kind} {table}.{name} is missing")
        elif key not in expected:
            found.append(f"{kind} {table}.{name} is not iterflow's")
        elif actual[key] != expected[key]:
            found.append(f"{kind} {table}.{name} is `{actual[key]}`, expected `{expected[key]}`")
    return found


def _catalog(
    connection: Connection, namespace: Any, prefixes: tuple[str, ...], tables: list[str]
) -> dict[tuple[str, str, str], str]:
    """Definitions of the columns, constraints and indexes of ``tables`` in ``namespace``,
    made schema-neutral by removing ``prefixes`` (the schema's qualifications)."""
    result: dict[tuple[str, str, str], str] = {}
    for kind, query in _CATALOG.items():
        rows = connection.execute(sa.text(query), {"ns": namespace, "tables": tables})
        for table, name, definition in rows:
            text = str(definition)
            for prefix in prefixes:
                text = text.replace(prefix, "")
            result[(kind, str(table), str(name))] = text
    return result


def install_procrastinate(connection: Connection) -> bool:
    """Install procrastinate's schema (at the pinned version) if the database has none.

    The same steps as revision 0001's: procrastinate's tables, types and functions in the
    connection's default schema, plus iterflow's objects on it (:func:`ensure_queue_objects`:
    the wake-up fetch's indexes, the NOTIFY of due jobs only). Returns whether it
    installed anything. A later revision that upgrades procrastinate must update this too.
    """
    if connection.execute(sa.text(outbox.INSTALLED_SQL)).scalar():
        return False
    from procrastinate.schema import SchemaManager

    # sa.text() on psycopg: SQLAlchemy doubles the % of the RAISE messages and psycopg turns
    # them back into single ones (exec_driver_sql would send them raw and fail).
    connection.execute(sa.text(SchemaManager.get_schema()))
    ensure_queue_objects(connection)
    return True


def ensure_queue_objects(connection: Connection) -> None:
    """iterflow's objects on procrastinate's queue as the head revision has them: the indexes
    on its jobs table (the wake-up fetch's, ``outbox.JOB_INDEXES_SQL``; those of earlier
    revisions they supersede dropped) and its insert NOTIFY for jobs due now only
    (``outbox.NOTIFY_DUE_ONLY_SQL``). Idempotent: :func:`stamp` runs it, since it runs no
    revision."""
    for index in outbox.JOB_INDEXES_SQL:
        connection.execute(sa.text(index))
    for superseded in outbox.SUPERSEDED_INDEXES_SQL:
        connection.execute(sa.text(superseded))
    connection.execute(sa.text(outbox.NOTIFY_DUE_ONLY_SQL))


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
        return not (name or "").startswith(outbox.TABLE_PREFIX)

    return include_name


def include_object_for(schema: str) -> IncludeObject:
    """An alembic ``include_object`` hook: only iterflow's objects in ``schema`` are compared.

    Ignores everything named ``procrastinate_*``, alembic's version table, and any table outside
    ``schema``.
    """

    def include_object(
        obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
    ) -> bool:
        if name is not None and (name.startswith(outbox.TABLE_PREFIX) or name == VERSION_TABLE):
            return False
        if type_ == "table":
            return bool(getattr(obj, "schema", None) == schema)
        return True

    return include_object
