"""``flowctl``: the synchronous, operator-facing surface. The only place that reads env vars."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigInvalid, FlowError

__all__ = ["main"]


def _env_url() -> str | None:
    return os.environ.get("ITERFLOW_DATABASE_URL") or os.environ.get("DATABASE_URL")


def _load_engine(target: str, url: str | None) -> Any:
    from .engine import Engine

    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigInvalid(f"expected module:attribute, got {target!r}")
    sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    engine = getattr(module, attr, None)
    if not isinstance(engine, Engine):
        raise ConfigInvalid(f"{target} is not an iterflow Engine")
    if url is not None and engine.settings.database_url is None:
        engine.settings = engine.settings.model_copy(update={"database_url": url})
    return engine


async def _migrate(url: str | None, schema: str) -> None:
    from .engine import Engine

    async with Engine(url, db_schema=schema) as engine:
        await engine.migrate()
        print(f"migrated schema {schema!r} on {engine.database_url.split('@')[-1]}")


async def _worker(target: str, url: str | None, concurrency: int) -> None:
    engine = _load_engine(target, url)
    async with engine:
        names = ", ".join(f.key for f in engine.registry.all()) or "none"
        logging.getLogger("iterflow").info("worker started; flows: %s", names)
        await engine.run_worker(concurrency=concurrency)


async def _show(url: str | None, schema: str, run_id: str) -> None:
    from .engine import Engine
    from .timeline import render_timeline

    async with Engine(url, db_schema=schema) as engine:
        detail = await engine.status(run_id)
        print(render_timeline(detail))


async def _retry(url: str | None, schema: str, run_id: str) -> None:
    from .engine import Engine

    async with Engine(url, db_schema=schema) as engine:
        result = await engine.retry(run_id)
        print(result.kind)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowctl", description="Operate iterflow: migrate, run workers, inspect runs."
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="PostgreSQL URL (default: $ITERFLOW_DATABASE_URL, $DATABASE_URL, else embedded)",
    )
    parser.add_argument("--schema", default="iterflow", help="schema of the iterflow tables")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="install or upgrade iterflow's tables (alembic)")

    gen = sub.add_parser(
        "generate-schema", help="write a SQLAlchemy module (or SQL) of iterflow's tables"
    )
    gen.add_argument("--out", type=Path, default=None, help="output path ('-' for stdout)")
    gen.add_argument("--sql", action="store_true", help="write DDL instead of a Python module")
    gen.add_argument("--force", action="store_true", help="overwrite an existing file")

    wrk = sub.add_parser("worker", help="run a worker for the engine at module:attribute")
    wrk.add_argument("engine", help="import path of an Engine, e.g. myapp.flows:engine")
    wrk.add_argument("--concurrency", type=int, default=4)

    show = sub.add_parser("show", help="print a run's state and timeline")
    show.add_argument("run_id")

    retry = sub.add_parser("retry", help="replay a failed run from its failed step")
    retry.add_argument("run_id")

    demo = sub.add_parser("demo", help="run the order demo on embedded PostgreSQL")
    demo.add_argument("--sleep", type=float, default=2.0, help="durable sleep in seconds")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flowctl`` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("procrastinate").setLevel(logging.WARNING)
    url = args.database_url or _env_url()
    try:
        if args.command == "migrate":
            asyncio.run(_migrate(url, args.schema))
        elif args.command == "generate-schema":
            from .schemagen import write_schema

            try:
                written = write_schema(args.out, schema=args.schema, sql=args.sql, force=args.force)
            except FileExistsError as exc:
                print(f"flowctl: {exc}", file=sys.stderr)
                return 1
            if written is not None:
                print(f"wrote {written}")
        elif args.command == "worker":
            asyncio.run(_worker(args.engine, url, args.concurrency))
        elif args.command == "show":
            asyncio.run(_show(url, args.schema, args.run_id))
        elif args.command == "retry":
            asyncio.run(_retry(url, args.schema, args.run_id))
        elif args.command == "demo":
            from .demo import run_demo

            asyncio.run(run_demo(url, sleep_seconds=args.sleep))
    except FlowError as exc:
        print(f"flowctl: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
