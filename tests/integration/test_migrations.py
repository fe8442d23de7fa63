"""The alembic migrations agree with ``iterflow.store.schema`` and behave as shipped artifacts.

Two independent checks of "migrations == table metadata": alembic's own ``compare_metadata``,
and a catalog fingerprint (every column, default, identity, constraint and index definition as
PostgreSQL prints it) compared with the same tables made by ``metadata.create_all``. The second
also covers what autogenerate does not compare (CHECK constraints, partial index predicates,
index methods, ON DELETE actions).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from iterflow.core.errors import ConfigInvalid, DatabaseUnavailable, SchemaConflict, SchemaMissing
from iterflow.store import outbox
from iterflow.store.migrate import (
    VERSION_TABLE,
    StampResult,
    downgrade,
    head_revision,
    include_name_for,
    include_object_for,
    run_migrations,
    stamp,
    table_differences,
)
from iterflow.store.schema import metadata, translate_map
from iterflow.store.schemagen import metadata_for, render_sql
from iterflow.store.urls import libpq_url, psycopg_url

REPO_ROOT = Path(__file__).resolve().parents[2]
TABLES = {
    "runs",
    "steps",
    "signals",
    "timers",
    "events",
    "schedules",
    "schedule_events",
    "workers",
    "rate_windows",
}
PROCRASTINATE_TABLES = {
    "procrastinate_jobs",
    "procrastinate_workers",
    "procrastinate_events",
    "procrastinate_periodic_defers",
}

#: The newest revision shipped (what a fresh migrate records).
HEAD = head_revision()


# ------------------------------------------------------------------------------------------
# helpers (also used by test_schemagen.py)


@contextmanager
def connect(url: str) -> Iterator[Connection]:
    """A sync SQLAlchemy connection (psycopg) inside a transaction."""
    engine = sa.create_engine(psycopg_url(url), poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def schema_diff(url: str, schema: str) -> list[Any]:
    """alembic autogenerate's differences between the database and iterflow's tables."""
    with connect(url) as conn:
        conn.execution_options(schema_translate_map=translate_map(schema))
        context = MigrationContext.configure(
            conn,
            opts={
                "include_schemas": True,
                "include_name": include_name_for(schema),
                "include_object": include_object_for(schema),
                "compare_server_default": True,
                "compare_type": True,
            },
        )
        target = metadata if schema == "iterflow" else metadata_for(schema)
        return list(compare_metadata(context, target))


_COLUMNS = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid), a.attidentity
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = :schema AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
  AND c.relname <> :version_table
ORDER BY c.relname, a.attnum
"""
_CONSTRAINTS = """
SELECT c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid)
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = :schema AND c.relname <> :version_table
ORDER BY 1, 2
"""
_INDEXES = """
SELECT t.relname, i.relname, pg_get_indexdef(x.indexrelid)
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = :schema AND t.relname <> :version_table
ORDER BY 1, 2
"""


def catalog_fingerprint(conn: Connection, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything PostgreSQL knows about the iterflow tables in ``schema``, schema-neutral."""
    params = {"schema": schema, "version_table": VERSION_TABLE}

    def neutral(row: sa.Row[Any]) -> tuple[Any, ...]:
        return tuple(v.replace(f"{schema}.", "<schema>.") if isinstance(v, str) else v for v in row)

    return {
        name: [neutral(row) for row in conn.execute(sa.text(query), params)]
        for name, query in (
            ("columns", _COLUMNS),
            ("constraints", _CONSTRAINTS),
            ("indexes", _INDEXES),
        )
    }


def reference_fingerprint(conn: Connection, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """The fingerprint of ``metadata.create_all`` in a scratch schema (rolled back)."""
    savepoint = conn.begin_nested()
    try:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
        metadata_for(schema).create_all(conn)
        return catalog_fingerprint(conn, schema)
    finally:
        savepoint.rollback()


def assert_matches_metadata(url: str, schema: str) -> None:
    """The iterflow tables in ``schema`` are exactly ``iterflow.store.schema``'s."""
    assert schema_diff(url, schema) == []
    with connect(url) as conn:
        actual = catalog_fingerprint(conn, schema)
        expected = reference_fingerprint(conn, "zz_reference")
    assert {row[0] for row in actual["columns"]} == TABLES
    assert actual == expected


def _scalar(url: str, query: str, **params: Any) -> Any:
    with connect(url) as conn:
        return conn.execute(sa.text(query), params).scalar()


def _tables(url: str, schema: str) -> set[str]:
    with connect(url) as conn:
        return set(sa.inspect(conn).get_table_names(schema=schema))


def _version(url: str, schema: str) -> list[str]:
    with connect(url) as conn:
        rows = conn.execute(sa.text(f"SELECT version_num FROM {schema}.{VERSION_TABLE}"))
        return [row[0] for row in rows]


# ------------------------------------------------------------------------------------------
# migrations == metadata


@pytest.mark.parametrize("schema", ["iterflow", "acme_flows"])
def test_migrations_match_table_metadata(empty_database_url: str, schema: str) -> None:
    run_migrations(empty_database_url, schema=schema)

    assert_matches_metadata(empty_database_url, schema)


def test_version_table_lives_in_the_iterflow_schema(empty_database_url: str) -> None:
    run_migrations(empty_database_url, schema="acme_flows")

    assert _version(empty_database_url, "acme_flows") == [HEAD]
    assert VERSION_TABLE in _tables(empty_database_url, "acme_flows")
    public = _tables(empty_database_url, "public")
    assert "alembic_version" not in public
    assert VERSION_TABLE not in public


def test_upgrade_twice_is_a_no_op(empty_database_url: str) -> None:
    run_migrations(empty_database_url)
    with connect(empty_database_url) as conn:
        conn.execute(
            sa.text(
                "INSERT INTO iterflow.runs (id, name, version, input) "
                "VALUES (gen_random_uuid(), 'kept', 1, '{}')"
            )
        )

    run_migrations(empty_database_url)

    assert _version(empty_database_url, "iterflow") == [HEAD]
    assert _scalar(empty_database_url, "SELECT count(*) FROM iterflow.runs") == 1


def test_upgrade_downgrade_upgrade(empty_database_url: str) -> None:
    url = empty_database_url
    run_migrations(url)

    downgrade(url)
    assert _tables(url, "iterflow") == set()  # tables and version table gone
    assert _tables(url, "public") >= PROCRASTINATE_TABLES  # kept unless asked

    run_migrations(url)
    assert _version(url, "iterflow") == [HEAD]
    assert schema_diff(url, "iterflow") == []


def _index(url: str, name: str) -> bool:
    return _scalar(url, f"SELECT to_regclass('public.{name}')") is not None


FETCH_INDEXES = ("procrastinate_jobs_todo_now_idx", "procrastinate_jobs_todo_queue_due_idx")
#: Revision 0011's index of due jobs across queues, superseded by revision 0012's per queue.
DUE_ORDER_INDEX = "procrastinate_jobs_todo_due_idx"


def test_revision_0010_adds_the_due_index_to_an_installed_procrastinate(
    empty_database_url: str,
) -> None:
    """A database migrated before 0010 (procrastinate installed without the index) gets it."""
    url = empty_database_url
    run_migrations(url, revision="0009")
    with connect(url) as conn:
        conn.execute(sa.text("DROP INDEX IF EXISTS public.procrastinate_jobs_todo_scheduled_idx"))
    run_migrations(url, revision="0010")
    assert _index(url, "procrastinate_jobs_todo_scheduled_idx")


def test_revision_0011_replaces_the_due_index_with_the_fetchs_two(
    empty_database_url: str,
) -> None:
    """A database at 0010 (installed with 0010's index, without the fetch's) gets the fetch's
    two indexes of revision 0011 and loses the one they supersede; a downgrade to 0010 brings
    it back."""
    url = empty_database_url
    run_migrations(url, revision="0009")
    with connect(url) as conn:
        for name in FETCH_INDEXES:
            conn.execute(sa.text(f"DROP INDEX public.{name}"))
        conn.execute(sa.text(outbox.DUE_INDEX_SQL))
    run_migrations(url, revision="0010")
    assert not any(_index(url, name) for name in FETCH_INDEXES)
    run_migrations(url, revision="0011")
    assert _index(url, "procrastinate_jobs_todo_now_idx") and _index(url, DUE_ORDER_INDEX)
    assert not _index(url, "procrastinate_jobs_todo_scheduled_idx")
    downgrade(url, revision="0010")
    assert _index(url, "procrastinate_jobs_todo_scheduled_idx")


def test_revision_0012_gives_the_due_index_per_queue(empty_database_url: str) -> None:
    """A database at 0011 (its index of due jobs across queues) gets the per-queue one and
    loses the one it supersedes; a downgrade to 0011 brings that back."""
    url = empty_database_url
    run_migrations(url, revision="0011")
    with connect(url) as conn:
        conn.execute(sa.text(f"DROP INDEX public.{FETCH_INDEXES[1]}"))
        conn.execute(sa.text(outbox.DUE_ORDER_INDEX_SQL))
    run_migrations(url)
    assert all(_index(url, name) for name in FETCH_INDEXES)
    assert not _index(url, DUE_ORDER_INDEX)
    downgrade(url, revision="0011")
    assert _index(url, DUE_ORDER_INDEX)


def _notifies_due_only(url: str) -> bool:
    """Whether procrastinate's insert NOTIFY is revision 0013's (jobs due now only)."""
    function = "public.procrastinate_notify_queue_job_inserted_v1"
    body = _scalar(url, f"SELECT pg_get_functiondef('{function}'::regproc)")
    return "NEW.scheduled_at > now()" in body


def test_revision_0013_notifies_the_workers_of_due_jobs_only(empty_database_url: str) -> None:
    """A database at 0012 (procrastinate's NOTIFY of every inserted job) gets the NOTIFY of
    jobs due now only; a downgrade to 0012 restores procrastinate's."""
    url = empty_database_url
    run_migrations(url, revision="0012")
    with connect(url) as conn:
        conn.execute(sa.text(outbox.NOTIFY_ALWAYS_SQL))
    assert not _notifies_due_only(url)
    run_migrations(url)
    assert _notifies_due_only(url)
    downgrade(url, revision="0012")
    assert not _notifies_due_only(url)


def test_procrastinate_schema_installed_in_public(empty_database_url: str) -> None:
    url = empty_database_url
    run_migrations(url)

    assert _tables(url, "public") >= PROCRASTINATE_TABLES
    assert _scalar(url, "SELECT to_regproc('public.procrastinate_defer_jobs_v1')") is not None
    assert _index(url, "procrastinate_jobs_lock_priority_idx")
    assert all(_index(url, name) for name in FETCH_INDEXES)
    assert not _index(url, "procrastinate_jobs_todo_scheduled_idx")  # superseded
    assert not _index(url, DUE_ORDER_INDEX)  # superseded
    assert _notifies_due_only(url)
    # The % of the RAISE messages reached PostgreSQL single, not doubled by the driver layer.
    body = _scalar(url, "SELECT pg_get_functiondef('public.procrastinate_finish_job_v1'::regproc)")
    assert "(job id: %)" in body
    assert "%%" not in body


def test_second_schema_shares_procrastinate(empty_database_url: str) -> None:
    url = empty_database_url
    run_migrations(url, schema="iterflow")
    run_migrations(url, schema="acme_flows")
    assert _tables(url, "acme_flows") == TABLES | {VERSION_TABLE}

    downgrade(url, schema="acme_flows")
    assert _tables(url, "acme_flows") == set()
    assert _tables(url, "iterflow") == TABLES | {VERSION_TABLE}
    assert _tables(url, "public") >= PROCRASTINATE_TABLES

    downgrade(url, schema="iterflow", drop_procrastinate=True)
    leftovers = _scalar(
        url,
        "SELECT (SELECT count(*) FROM pg_class WHERE starts_with(relname, 'procrastinate'))"
        " + (SELECT count(*) FROM pg_proc WHERE starts_with(proname, 'procrastinate'))"
        " + (SELECT count(*) FROM pg_type WHERE starts_with(typname, 'procrastinate'))",
    )
    assert leftovers == 0


def test_concurrent_migrations_in_threads(empty_database_url: str) -> None:
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            run_migrations(empty_database_url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert _version(empty_database_url, "iterflow") == [HEAD]


def test_concurrent_migrations_in_processes(empty_database_url: str) -> None:
    code = (
        "import sys; from iterflow.store.migrate import run_migrations; run_migrations(sys.argv[1])"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, empty_database_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [(proc.wait(timeout=60), proc.communicate()[1]) for proc in procs]

    assert [rc for rc, _ in results] == [0, 0, 0], [err for _, err in results]
    assert _version(empty_database_url, "iterflow") == [HEAD]
    assert schema_diff(empty_database_url, "iterflow") == []


def test_alembic_command_line_from_repo_root(empty_database_url: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "alembic",
            "-x",
            f"url={empty_database_url}",
            "-x",
            "schema=cli_flows",
            "upgrade",
            "head",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "Running upgrade  -> 0001" in result.stderr
    assert "Running upgrade 0001 -> 0002" in result.stderr
    assert _version(empty_database_url, "cli_flows") == [HEAD]
    assert schema_diff(empty_database_url, "cli_flows") == []


# ------------------------------------------------------------------------------------------
# errors


def test_unreachable_database_raises_database_unavailable() -> None:
    url = "postgresql://someone:s3cret@127.0.0.1:1/nowhere"

    with pytest.raises(DatabaseUnavailable) as caught:
        run_migrations(url)

    message = str(caught.value)
    assert "not reachable" in message
    assert "127.0.0.1:1/nowhere" in message
    assert "s3cret" not in message
    assert caught.value.__cause__ is not None


def test_refused_operation_raises_database_unavailable(empty_database_url: str) -> None:
    role = f"iterflow_weak_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(libpq_url(empty_database_url), autocommit=True) as conn:
        # No CREATE on the database: CREATE SCHEMA is refused.
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'weak'")  # type: ignore[arg-type]
    weak = sa.make_url(empty_database_url).set(username=role, password="weak")
    try:
        with pytest.raises(DatabaseUnavailable, match="refused") as caught:
            run_migrations(weak.render_as_string(hide_password=False))
        assert "permission denied" in str(caught.value)
    finally:
        with psycopg.connect(libpq_url(empty_database_url), autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")  # type: ignore[arg-type]


def test_invalid_schema_name_is_rejected(empty_database_url: str) -> None:
    with pytest.raises(ConfigInvalid, match="lowercase SQL identifier"):
        run_migrations(empty_database_url, schema='bad"; DROP TABLE x; --')


# ------------------------------------------------------------------------------------------
# adopting tables made by the application's own migrations: stamp


_PROCRASTINATE_OBJECTS = """
SELECT 'function', p.oid::regprocedure::text, md5(pg_get_functiondef(p.oid)) FROM pg_proc p
WHERE starts_with(p.proname, 'procrastinate')
UNION ALL
SELECT 'relation', c.relname, c.relkind::text FROM pg_class c
WHERE starts_with(c.relname, 'procrastinate')
UNION ALL
SELECT 'index', i.indexname, i.indexdef FROM pg_indexes i
WHERE starts_with(i.tablename, 'procrastinate')
UNION ALL
SELECT 'trigger', t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t
WHERE starts_with(t.tgname, 'procrastinate')
UNION ALL
SELECT 'type', t.typname, t.typtype::text FROM pg_type t
WHERE starts_with(t.typname, 'procrastinate')
ORDER BY 1, 2
"""


def _apply_generated_sql(url: str, schema: str) -> None:
    with psycopg.connect(libpq_url(url)) as conn:
        conn.execute(render_sql(schema))  # type: ignore[arg-type]  # as psql would run it


@pytest.mark.parametrize("schema", ["iterflow", "acme_flows"])
def test_stamp_adopts_generated_tables(
    empty_database_url: str, database_url: str, schema: str
) -> None:
    url = empty_database_url
    _apply_generated_sql(url, schema)

    result = stamp(url, schema=schema)

    assert result == StampResult(schema, head_revision(), None, True)
    assert _version(url, schema) == [HEAD]
    run_migrations(url, schema=schema)  # a no-op now
    assert _version(url, schema) == [HEAD]
    assert_matches_metadata(url, schema)
    # procrastinate's schema is exactly what the migrations install (database_url is migrated)
    with connect(url) as conn, connect(database_url) as reference:
        installed = conn.execute(sa.text(_PROCRASTINATE_OBJECTS)).all()
        assert installed == reference.execute(sa.text(_PROCRASTINATE_OBJECTS)).all()
        assert len(installed) > 20


def test_stamp_of_a_migrated_schema_is_a_check_only(database_url: str) -> None:
    assert stamp(database_url) == StampResult("iterflow", HEAD, HEAD, False)
    assert _version(database_url, "iterflow") == [HEAD]


def test_stamp_brings_the_fetch_indexes_to_an_installed_procrastinate(
    empty_database_url: str,
) -> None:
    """procrastinate installed by an earlier iterflow version (0010's and 0011's indexes, not
    the fetch's two of now; procrastinate's NOTIFY of every job): a stamp runs no revision, so
    it brings them itself, drops the indexes they supersede and NOTIFYs due jobs only."""
    url = empty_database_url
    run_migrations(url)
    with connect(url) as conn:
        for name in FETCH_INDEXES:
            conn.execute(sa.text(f"DROP INDEX public.{name}"))
        conn.execute(sa.text(outbox.DUE_INDEX_SQL))
        conn.execute(sa.text(outbox.DUE_ORDER_INDEX_SQL))
        conn.execute(sa.text(outbox.NOTIFY_ALWAYS_SQL))
    assert stamp(url) == StampResult("iterflow", HEAD, HEAD, False)
    assert all(_index(url, name) for name in FETCH_INDEXES)
    assert not _index(url, "procrastinate_jobs_todo_scheduled_idx")
    assert not _index(url, DUE_ORDER_INDEX)
    assert _notifies_due_only(url)


def test_migrate_over_existing_tables_is_a_schema_conflict(empty_database_url: str) -> None:
    _apply_generated_sql(empty_database_url, "iterflow")

    with pytest.raises(SchemaConflict) as caught:
        run_migrations(empty_database_url)

    message = caught.value.message
    assert caught.value.error_code == "SCHEMA_CONFLICT"
    assert 'relation "runs" already exists' in message
    assert "flowctl migrate --stamp" in message and "Nothing was changed" in message
    assert caught.value.__cause__ is not None
    assert VERSION_TABLE not in _tables(empty_database_url, "iterflow")
    assert "procrastinate_jobs" not in _tables(empty_database_url, "public")


@pytest.mark.parametrize(
    ("change", "difference"),
    [
        ("ALTER TABLE {s}.runs DROP COLUMN output", "column runs.output is missing"),
        ("ALTER TABLE {s}.runs ADD COLUMN extra int", "column runs.extra is not iterflow's"),
        ("ALTER TABLE {s}.runs ALTER COLUMN priority SET DEFAULT 5", "column runs.priority is"),
        ("ALTER TABLE {s}.runs ALTER COLUMN seq DROP IDENTITY", "column runs.seq is"),
        ("ALTER TABLE {s}.runs ALTER COLUMN name TYPE varchar(20)", "column runs.name is"),
        ("DROP INDEX {s}.ix_timers_due", "index timers.ix_timers_due is missing"),
        (
            "DROP INDEX {s}.ix_timers_due; "
            "CREATE INDEX ix_timers_due ON {s}.timers (fire_at) WHERE fired_at IS NOT NULL",
            "WHERE (fired_at IS NOT NULL)`, expected",
        ),
        (
            "DROP INDEX {s}.ix_runs_tags; CREATE INDEX ix_runs_tags ON {s}.runs (tags)",
            "index runs.ix_runs_tags is",
        ),
        (
            "ALTER TABLE {s}.steps DROP CONSTRAINT fk_steps_run_id_runs; "
            "ALTER TABLE {s}.steps ADD CONSTRAINT fk_steps_run_id_runs "
            "FOREIGN KEY (run_id) REFERENCES {s}.runs (id)",
            "expected `FOREIGN KEY (run_id) REFERENCES runs(id) ON DELETE CASCADE`",
        ),
        (
            "ALTER TABLE {s}.steps DROP CONSTRAINT ck_steps_status; "
            "ALTER TABLE {s}.steps ADD CONSTRAINT ck_steps_status CHECK (status = 'ok')",
            "constraint steps.ck_steps_status is",
        ),
        ("DROP TABLE {s}.events", "table events is missing"),
    ],
)
def test_stamp_finds_every_kind_of_difference(
    empty_database_url: str, change: str, difference: str
) -> None:
    url = empty_database_url
    _apply_generated_sql(url, "acme_flows")
    with connect(url) as conn:
        assert table_differences(conn, "acme_flows") == []
        for statement in change.format(s="acme_flows").split("; "):
            conn.execute(sa.text(statement))
        found = table_differences(conn, "acme_flows")
    assert len(found) == 1 and difference in found[0], found

    with pytest.raises(SchemaConflict, match="differ from this iterflow version's") as caught:
        stamp(url, schema="acme_flows")
    assert difference in caught.value.message
    assert "flowctl migrate --stamp" in caught.value.message
    assert VERSION_TABLE not in _tables(url, "acme_flows")  # nothing was changed
    assert "procrastinate_jobs" not in _tables(url, "public")
    # the comparison's temporary tables left nothing behind
    assert _tables(url, "acme_flows") == TABLES - ({"events"} if "events" in change else set())


def test_stamp_needs_tables_and_a_known_revision(empty_database_url: str) -> None:
    url = empty_database_url
    with pytest.raises(SchemaMissing, match="nothing to stamp"):
        stamp(url)

    run_migrations(url)
    with connect(url) as conn:
        conn.execute(sa.text(f"UPDATE iterflow.{VERSION_TABLE} SET version_num = '9999'"))
    with pytest.raises(SchemaConflict, match="does not know"):
        stamp(url)
    assert _version(url, "iterflow") == ["9999"]


async def test_engine_migrate_stamp_adopts_generated_tables(empty_database_url: str) -> None:
    from iterflow import Engine

    _apply_generated_sql(empty_database_url, "iterflow")
    async with Engine(empty_database_url, pool_size=2) as engine:
        await engine.migrate(stamp=True)
        await engine.migrate()  # a no-op now
        assert await engine.list_runs() is not None
    assert _version(empty_database_url, "iterflow") == [HEAD]
