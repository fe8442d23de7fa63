"""``flowctl``: the synchronous, operator-facing surface. The only place that reads env vars."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
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
    # SIGTERM (docker stop, systemd, Kubernetes) stops the worker gracefully, like Ctrl-C:
    # procrastinate stops fetching, lets running attempts finish (up to its graceful timeout)
    # and unregisters the worker. Python's default for SIGTERM would kill it on the spot.
    main = asyncio.current_task()
    if main is not None and hasattr(signal, "SIGTERM"):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    async with engine:
        names = ", ".join(f.key for f in engine.registry.all()) or "none"
        logging.getLogger("iterflow").info("worker started; flows: %s", names)
        try:
            await engine.run_worker(concurrency=concurrency)
        except asyncio.CancelledError:
            logging.getLogger("iterflow").info("worker stopped")


async def _show(url: str | None, schema: str, run_id: str) -> None:
    from .engine import Engine
    from .timeline import render_timeline

    async with Engine(url, db_schema=schema) as engine:
        detail = await engine.status(run_id)
        print(render_timeline(detail))


async def _list(url: str | None, schema: str, args: argparse.Namespace) -> None:
    from .engine import Engine

    async with Engine(url, db_schema=schema) as engine:
        page = await engine.list_runs(
            name=args.flow,
            status=args.status or None,
            tag=args.tag,
            limit=args.limit,
            cursor=args.cursor,
        )
        print(f"{'run id':36}  {'flow':24}  {'status':16}  created")
        for run in page.runs:
            flow = f"{run.name}@{run.version}"
            created = f"{run.created_at:%Y-%m-%d %H:%M:%S}"
            print(f"{run.id!s:36}  {flow:24}  {run.status.value:16}  {created}")
        if page.next_cursor is not None:
            print(f"more: flowctl list --cursor {page.next_cursor}")


async def _cancel(url: str | None, schema: str, run_id: str, reason: str | None) -> None:
    from .engine import Engine

    async with Engine(url, db_schema=schema) as engine:
        print((await engine.cancel(run_id, reason=reason)).kind)


async def _signal(
    target: str, url: str | None, run_id: str, name: str, payload: str, key: str | None
) -> None:
    engine = _load_engine(target, url)
    async with engine:
        result = await engine.signal(run_id, name, json.loads(payload), idempotency_key=key)
        print(result.kind)


async def _graph(target: str | None, url: str | None, schema: str, args: Any) -> None:
    from .describe import graph_of
    from .engine import Engine
    from .graph import render
    from .progress import graph_from_history, overlay

    module, _, rest = (target or "").partition(":")
    attr, _, flow_name = rest.partition(":")
    engine = _load_engine(f"{module}:{attr}", url) if target else Engine(url, db_schema=schema)
    if args.run is None:  # the flow's graph: static for built flows, else a dry run
        if not flow_name:
            raise ConfigInvalid("expected module:engine:flow_name, or --run RUN_ID")
        registry = engine.registry
        flow = registry.get(flow_name, args.version) if args.version else registry.latest(flow_name)
        if flow is None:
            known = ", ".join(f.key for f in engine.registry.all()) or "none"
            raise ConfigInvalid(f"flow {flow_name!r} is not registered (registered: {known})")
        sample = json.loads(args.input) if args.input else None
        print(render(await graph_of(flow, sample), args.format), end="")
        return
    async with engine:  # a run's progress over its flow's graph (or the graph it walked)
        detail = await engine.status(args.run)
        flow = engine.registry.get(detail.run.name, detail.run.version)
        static = getattr(flow, "graph", None)
        graph = static if static is not None else graph_from_history(detail)
        print(render(graph, args.format, overlay(graph, detail)), end="")


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
    # --schema is accepted before or after the subcommand.
    schema_opt = argparse.ArgumentParser(add_help=False)
    schema_opt.add_argument(
        "--schema", default=argparse.SUPPRESS, help="schema of the iterflow tables"
    )

    sub.add_parser(
        "migrate", parents=[schema_opt], help="install or upgrade iterflow's tables (alembic)"
    )

    gen = sub.add_parser(
        "generate-schema",
        parents=[schema_opt],
        help="write a SQLAlchemy module (or SQL) of iterflow's tables",
    )
    gen.add_argument("--out", type=Path, default=None, help="output path ('-' for stdout)")
    gen.add_argument("--sql", action="store_true", help="write DDL instead of a Python module")
    gen.add_argument("--force", action="store_true", help="overwrite an existing file")

    wrk = sub.add_parser("worker", help="run a worker for the engine at module:attribute")
    wrk.add_argument("engine", help="import path of an Engine, e.g. myapp.flows:engine")
    wrk.add_argument("--concurrency", type=int, default=4)

    show = sub.add_parser("show", parents=[schema_opt], help="print a run's state and timeline")
    show.add_argument("run_id")

    retry = sub.add_parser(
        "retry", parents=[schema_opt], help="replay a failed run from its failed step"
    )
    retry.add_argument("run_id")

    lst = sub.add_parser("list", parents=[schema_opt], help="list runs, newest first")
    lst.add_argument("--flow", default=None, help="only runs of this flow name")
    lst.add_argument("--status", action="append", help="only this status (repeatable)")
    lst.add_argument("--tag", default=None, help="only runs with this tag")
    lst.add_argument("--limit", type=int, default=50)
    lst.add_argument("--cursor", type=int, default=None, help="continue after a previous page")

    cancel = sub.add_parser(
        "cancel", parents=[schema_opt], help="cancel a live run (and its non-detached children)"
    )
    cancel.add_argument("run_id")
    cancel.add_argument("--reason", default=None)

    sig = sub.add_parser("signal", help="deliver a signal (validated by the flow's model)")
    sig.add_argument("engine", help="import path of the Engine that registers the flow")
    sig.add_argument("run_id")
    sig.add_argument("name")
    sig.add_argument("payload", help="JSON payload")
    sig.add_argument("--idempotency-key", default=None)

    graph = sub.add_parser(
        "graph", parents=[schema_opt], help="print a flow's step graph, or a run's progress on it"
    )
    graph.add_argument(
        "target", nargs="?", help="module:engine:flow_name (module:engine with --run)"
    )
    graph.add_argument("--version", type=int, default=None, help="flow version (default: newest)")
    graph.add_argument("--format", choices=["mermaid", "json"], default="mermaid")
    graph.add_argument("--input", default=None, help="sample input (JSON) for a raw body's dry run")
    graph.add_argument(
        "--run", default=None, help="overlay this run's progress (done/waiting/failed)"
    )

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
    if not args.verbose:
        for noisy in ("procrastinate", "alembic", "pgserver"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
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
        elif args.command == "list":
            asyncio.run(_list(url, args.schema, args))
        elif args.command == "cancel":
            asyncio.run(_cancel(url, args.schema, args.run_id, args.reason))
        elif args.command == "signal":
            asyncio.run(
                _signal(
                    args.engine, url, args.run_id, args.name, args.payload, args.idempotency_key
                )
            )
        elif args.command == "retry":
            asyncio.run(_retry(url, args.schema, args.run_id))
        elif args.command == "graph":
            asyncio.run(_graph(args.target, url, args.schema, args))
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
