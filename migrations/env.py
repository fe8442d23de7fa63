"""Alembic environment of iterflow's own migrations.

Two ways in:

* programmatic (``iterflow.store.migrate.run_migrations``, ``flowctl migrate``,
  ``engine.migrate()``):
  ``config.attributes`` carries ``connection`` (an open connection inside a transaction),
  ``database_url`` and ``iterflow_schema``;
* the alembic command line from the repository root, with the top-level ``alembic.ini``::

      alembic -x url=postgresql://user:pw@host/db [-x schema=acme] upgrade head
      alembic -x url=... -x drop_procrastinate=true downgrade base

The version table is ``<schema>.iterflow_alembic_version``, so it never collides with the host
application's alembic. Everything runs in one transaction under a database-wide advisory lock,
so concurrent ``migrate`` calls (several workers starting at once) are serialised.
"""

from __future__ import annotations

from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context
from alembic.util import CommandError
from sqlalchemy.engine import Connection

from iterflow.store import migrate
from iterflow.store.schema import quote_identifier, translate_map
from iterflow.store.schemagen import metadata_for
from iterflow.store.urls import psycopg_url

# Shared with iterflow.store.migrate.stamp: the same for every iterflow process.
MIGRATION_LOCK_KEY = migrate.MIGRATION_LOCK_KEY

config = context.config
if config.config_file_name is not None and migrate.CONNECTION_ATTRIBUTE not in config.attributes:
    # Only the alembic command line configures logging; the library never installs handlers.
    fileConfig(config.config_file_name, disable_existing_loggers=False)

SCHEMA = migrate.configured_schema(config)

# Reflection ignores schema_translate_map, so autogenerate needs the tables in the real schema.
target_metadata = metadata_for(SCHEMA)


def run_migrations_on(connection: Connection) -> None:
    """Run the requested alembic command on ``connection`` (already inside a transaction)."""
    connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    # Identifiers are always quoted in SQL text, validated or not.
    quoted = quote_identifier(SCHEMA)
    connection.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {quoted}"))
    # Ops written with the placeholder schema "iterflow" land in the configured schema.
    connection.execution_options(schema_translate_map=translate_map(SCHEMA))
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=migrate.VERSION_TABLE,
        version_table_schema=SCHEMA,
        include_schemas=True,
        include_name=migrate.include_name_for(SCHEMA),
        include_object=migrate.include_object_for(SCHEMA),
        compare_server_default=True,
        # run_migrations(progress=...): told (done, total) as revisions are applied.
        on_version_apply=migrate.progress_callbacks(
            config, connection, SCHEMA, context.get_revision_argument()
        ),
    )
    with context.begin_transaction():
        context.run_migrations()
        if not context.get_context().get_current_heads():
            # Downgraded to base: leave no trace of iterflow in the schema.
            version_table = f"{quoted}.{quote_identifier(migrate.VERSION_TABLE)}"
            connection.execute(sa.text(f"DROP TABLE IF EXISTS {version_table}"))


def run_migrations_online() -> None:
    """Use the caller's connection, else open one from the configured URL."""
    shared = config.attributes.get(migrate.CONNECTION_ATTRIBUTE)
    if shared is not None:
        run_migrations_on(shared)
        return
    url = migrate.configured_url(config)
    if not url:
        raise CommandError(
            "no database URL: pass `-x url=postgresql://user:password@host/dbname` "
            "(or set sqlalchemy.url in alembic.ini)"
        )
    engine = sa.create_engine(psycopg_url(url), poolclass=sa.NullPool)
    try:
        with engine.begin() as connection:
            run_migrations_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise CommandError(
        "iterflow's migrations need a live database (offline --sql mode is not supported); "
        "use `flowctl generate-schema --sql` for the DDL of iterflow's tables"
    )
run_migrations_online()
