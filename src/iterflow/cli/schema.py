"""``flowctl migrate`` and ``flowctl generate-schema``: iterflow's tables."""

from __future__ import annotations

import argparse
from pathlib import Path

from iterflow.cli.common import (
    Progress,
    Subparsers,
    echo,
    open_engine,
    print_json,
    schema_option,
    wants_json,
)
from iterflow.core.errors import ConfigInvalid

__all__ = ["register"]


def register(subparsers: Subparsers) -> None:
    """Add ``migrate`` and ``generate-schema``."""
    schema_opt = schema_option()
    mig = subparsers.add_parser(
        "migrate", parents=[schema_opt], help="install or upgrade iterflow's tables (alembic)"
    )
    mig.add_argument(
        "--stamp",
        action="store_true",
        help="adopt tables your own migrations created from generate-schema: check them against "
        "this iterflow version, install procrastinate's schema if missing, and record them as "
        "installed without running iterflow's DDL",
    )
    mig.set_defaults(func=_migrate)

    gen = subparsers.add_parser(
        "generate-schema",
        parents=[schema_opt],
        help="write a SQLAlchemy module (or SQL) of iterflow's tables",
    )
    gen.add_argument("--out", type=Path, default=None, help="output path ('-' for stdout)")
    gen.add_argument("--sql", action="store_true", help="write DDL instead of a Python module")
    gen.add_argument("--force", action="store_true", help="overwrite an existing file")
    gen.set_defaults(func=_generate_schema)


async def _migrate(args: argparse.Namespace) -> None:
    import asyncio

    from iterflow.store.migrate import stamp
    from iterflow.store.urls import redacted

    schema = args.schema
    async with open_engine(args, create_embedded=True) as engine:
        where = redacted(engine.database_url)
        if not args.stamp:
            progress = Progress("migrate revisions")
            try:
                await engine.migrate(progress=progress)
            finally:
                progress.close()
            if wants_json(args):
                print_json({"schema": schema, "database": where, "stamped": False})
            else:
                echo(f"migrated schema {schema!r} on {where}")
            return
        result = await asyncio.to_thread(stamp, engine.database_url, schema=schema)
        before = result.previous or "none"
        extra = "; installed procrastinate's schema" if result.installed_procrastinate else ""
        if wants_json(args):
            print_json(
                {
                    "schema": schema,
                    "database": where,
                    "stamped": True,
                    "revision": result.revision,
                    "previous": result.previous,
                    "installed_procrastinate": result.installed_procrastinate,
                }
            )
            return
        echo(
            f"stamped schema {schema!r} on {where} at revision {result.revision} "
            f"(was {before}); tables verified{extra}"
        )


def _generate_schema(args: argparse.Namespace) -> None:
    from iterflow.store.schemagen import write_schema

    try:
        written = write_schema(args.out, schema=args.schema, sql=args.sql, force=args.force)
    except FileExistsError as exc:
        raise ConfigInvalid(str(exc)) from exc
    except OSError as exc:
        raise ConfigInvalid(f"cannot write {args.out}: {exc.strerror or exc}") from exc
    if wants_json(args):
        print_json({"written": None if written is None else str(written)})
    elif written is not None:
        echo(f"wrote {written}")
