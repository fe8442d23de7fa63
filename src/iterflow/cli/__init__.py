"""``flowctl``: the synchronous, operator-facing surface.

The database URL resolves as in the library (:func:`iterflow.store.urls.resolve_database_url`):
``--database-url``, else ``$ITERFLOW_DATABASE_URL``, else ``$DATABASE_URL``, else embedded.

Bad input never prints a traceback: every :class:`~iterflow.core.errors.FlowError` reaching
:func:`main` becomes one line on stderr, ``flowctl: error [CODE]: message``, and the exit status
of :data:`EXIT_CODES` (``-v`` adds the traceback). Anything else is a bug and keeps its traceback.
"""

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
import textwrap
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iterflow.core.errors import (
    ConfigInvalid,
    DatabaseUnavailable,
    DurationInvalid,
    FlowError,
    FlowUnknown,
    InputInvalid,
    PayloadInvalid,
    PayloadTooLarge,
    SchemaConflict,
    SchemaMissing,
    SignalPayloadInvalid,
    SignalUnknown,
)

# Only the pure core at import time: the store and runtime (SQLAlchemy, asyncpg, procrastinate)
# are imported by the commands that need them, so `flowctl --help` and usage errors stay fast.
if TYPE_CHECKING:
    from iterflow.runtime.engine import Engine

__all__ = [
    "EXIT_CODES",
    "EXIT_DATABASE",
    "EXIT_ERROR",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "exit_code",
    "main",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DATABASE = 3
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_ERROR: "the command failed with an iterflow error (e.g. RUN_NOT_FOUND, DATA_REJECTED)",
    EXIT_USAGE: (
        "invalid arguments or input: a usage error, invalid JSON, an unknown or unimportable "
        "module:engine, invalid settings, an unknown flow or signal, an invalid payload "
        "(CONFIG_INVALID, INPUT_INVALID, SIGNAL_PAYLOAD_INVALID, FLOW_UNKNOWN, ...)"
    ),
    EXIT_DATABASE: (
        "the database is unavailable or not ready "
        "(DATABASE_UNAVAILABLE, SCHEMA_MISSING, SCHEMA_CONFLICT)"
    ),
    EXIT_INTERNAL: "internal error: an unexpected exception (a bug); its traceback is printed",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}
"""flowctl's exit statuses. Stable: scripts and supervisors may rely on them."""

_USAGE_ERRORS: tuple[type[FlowError], ...] = (
    ConfigInvalid,
    DurationInvalid,
    FlowUnknown,
    InputInvalid,
    PayloadInvalid,
    PayloadTooLarge,
    SignalPayloadInvalid,
    SignalUnknown,
)
_DATABASE_ERRORS: tuple[type[FlowError], ...] = (DatabaseUnavailable, SchemaConflict, SchemaMissing)


def exit_code(error: FlowError) -> int:
    """The exit status for ``error`` (see :data:`EXIT_CODES`)."""
    if isinstance(error, _DATABASE_ERRORS):
        return EXIT_DATABASE
    if isinstance(error, _USAGE_ERRORS):
        return EXIT_USAGE
    return EXIT_ERROR


def _epilog() -> str:
    width = max(len(str(code)) for code in EXIT_CODES)
    indent = " " * (width + 4)
    lines = ["exit status:"]
    for code, text in EXIT_CODES.items():
        first = f"  {code:<{width}}  "
        lines.append(textwrap.fill(text, 79, initial_indent=first, subsequent_indent=indent))
    lines += [
        "",
        "errors are one line on stderr: flowctl: error [CODE]: message (-v adds the traceback)",
        "",
        "database: --database-url, else $ITERFLOW_DATABASE_URL, else $DATABASE_URL, else an",
        "embedded PostgreSQL in ./.iterflow; Engine() resolves it the same way.",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# arguments


def _json(text: str, what: str, error: type[FlowError]) -> Any:
    """``text`` parsed as JSON, or ``error`` saying where it is not."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise error(
            f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): "
            f"{shown!r}"
        ) from exc
    except RecursionError as exc:
        raise error(f"{what} is nested too deeply to parse") from exc


def _import_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            raise ConfigInvalid(
                f"cannot import module {name!r}: no module named {missing!r} (is it installed, "
                "on PYTHONPATH, or in the current directory?)"
            ) from exc
        raise ConfigInvalid(
            f"cannot import module {name!r}: it imports {missing or 'a module'!r}, which is "
            "not installed (flowctl -v shows the traceback)"
        ) from exc
    except FlowError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigInvalid(
            f"cannot import module {name!r}: it raised {type(exc).__name__}"
            f"{': ' + first if first else ''} (flowctl -v shows the traceback)"
        ) from exc


def _load_engine(target: str, url: str | None) -> Engine:
    """The ``Engine`` at ``module:attribute``; ``--database-url`` (``url``) overrides its URL."""
    from iterflow.runtime.engine import Engine

    module_name, _, attr = target.partition(":")
    if not module_name or not attr or ":" in attr:
        raise ConfigInvalid(
            f"expected the engine as module:attribute (e.g. myapp.flows:engine), got {target!r}"
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = _import_module(module_name)
    if not hasattr(module, attr):
        raise ConfigInvalid(f"module {module_name!r} has no attribute {attr!r}")
    engine = getattr(module, attr)
    if not isinstance(engine, Engine):
        raise ConfigInvalid(
            f"{target} is {type(engine).__name__!r}, not an iterflow Engine "
            "(name the Engine object, e.g. myapp.flows:engine)"
        )
    if url is not None:  # an explicit --database-url wins, even over a URL set in code
        engine.configure(database_url=url)
    return engine


# --------------------------------------------------------------------------------------------
# commands


async def _migrate(url: str | None, schema: str, stamp: bool) -> None:
    from iterflow.runtime.engine import Engine
    from iterflow.store.migrate import stamp as stamp_tables
    from iterflow.store.urls import redacted

    async with Engine(url, db_schema=schema) as engine:
        where = redacted(engine.database_url)
        if not stamp:
            await engine.migrate()
            print(f"migrated schema {schema!r} on {where}")
            return
        result = await asyncio.to_thread(stamp_tables, engine.database_url, schema=schema)
        before = result.previous or "none"
        extra = "; installed procrastinate's schema" if result.installed_procrastinate else ""
        print(
            f"stamped schema {schema!r} on {where} at revision {result.revision} "
            f"(was {before}); tables verified{extra}"
        )


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
    from iterflow.core.timeline import render_timeline
    from iterflow.runtime.engine import Engine

    async with Engine(url, db_schema=schema) as engine:
        detail = await engine.status(run_id)
        print(render_timeline(detail))


async def _list(url: str | None, schema: str, args: argparse.Namespace) -> None:
    from iterflow.runtime.engine import Engine

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
    from iterflow.runtime.engine import Engine

    async with Engine(url, db_schema=schema) as engine:
        print((await engine.cancel(run_id, reason=reason)).kind)


async def _signal(
    target: str, url: str | None, run_id: str, name: str, payload: str, key: str | None
) -> None:
    data = _json(payload, f"the payload of signal {name!r}", SignalPayloadInvalid)
    engine = _load_engine(target, url)
    async with engine:
        result = await engine.signal(run_id, name, data, idempotency_key=key)
        print(result.kind)


async def _graph(target: str | None, url: str | None, schema: str, args: Any) -> None:
    from iterflow.core.describe import graph_of
    from iterflow.core.graph import render
    from iterflow.core.progress import graph_from_history, overlay
    from iterflow.runtime.engine import Engine

    sample = _json(args.input, "--input", InputInvalid) if args.input else None
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
        print(render(await graph_of(flow, sample), args.format), end="")
        return
    async with engine:  # a run's progress over its flow's graph (or the graph it walked)
        detail = await engine.status(args.run)
        flow = engine.registry.get(detail.run.name, detail.run.version)
        static = getattr(flow, "graph", None)
        graph = static if static is not None else graph_from_history(detail)
        print(render(graph, args.format, overlay(graph, detail)), end="")


async def _retry(url: str | None, schema: str, run_id: str) -> None:
    from iterflow.runtime.engine import Engine

    async with Engine(url, db_schema=schema) as engine:
        result = await engine.retry(run_id)
        print(result.kind)


def _generate_schema(args: argparse.Namespace) -> None:
    from iterflow.store.schemagen import write_schema

    try:
        written = write_schema(args.out, schema=args.schema, sql=args.sql, force=args.force)
    except FileExistsError as exc:
        raise ConfigInvalid(str(exc)) from exc
    except OSError as exc:
        raise ConfigInvalid(f"cannot write {args.out}: {exc.strerror or exc}") from exc
    if written is not None:
        print(f"wrote {written}")


# --------------------------------------------------------------------------------------------
# entry point


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowctl",
        description="Operate iterflow: migrate, run workers, inspect runs.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="PostgreSQL URL (default: $ITERFLOW_DATABASE_URL, $DATABASE_URL, else embedded); "
        "overrides the URL of a module:engine",
    )
    parser.add_argument("--schema", default="iterflow", help="schema of the iterflow tables")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log at DEBUG and print errors' tracebacks"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    # --schema is accepted before or after the subcommand.
    schema_opt = argparse.ArgumentParser(add_help=False)
    schema_opt.add_argument(
        "--schema", default=argparse.SUPPRESS, help="schema of the iterflow tables"
    )

    mig = sub.add_parser(
        "migrate", parents=[schema_opt], help="install or upgrade iterflow's tables (alembic)"
    )
    mig.add_argument(
        "--stamp",
        action="store_true",
        help="adopt tables your own migrations created from generate-schema: check them against "
        "this iterflow version, install procrastinate's schema if missing, and record them as "
        "installed without running iterflow's DDL",
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


def _run(args: argparse.Namespace) -> None:
    from iterflow.store.urls import resolve_database_url

    url = resolve_database_url(args.database_url)
    if args.command == "migrate":
        asyncio.run(_migrate(url, args.schema, args.stamp))
    elif args.command == "generate-schema":
        _generate_schema(args)
    elif args.command == "worker":
        asyncio.run(_worker(args.engine, args.database_url, args.concurrency))
    elif args.command == "show":
        asyncio.run(_show(url, args.schema, args.run_id))
    elif args.command == "list":
        asyncio.run(_list(url, args.schema, args))
    elif args.command == "cancel":
        asyncio.run(_cancel(url, args.schema, args.run_id, args.reason))
    elif args.command == "signal":
        asyncio.run(
            _signal(
                args.engine,
                args.database_url,
                args.run_id,
                args.name,
                args.payload,
                args.idempotency_key,
            )
        )
    elif args.command == "retry":
        asyncio.run(_retry(url, args.schema, args.run_id))
    elif args.command == "graph":
        explicit = args.database_url if args.target else url
        asyncio.run(_graph(args.target, explicit, args.schema, args))
    elif args.command == "demo":
        from iterflow.cli.demo import run_demo

        asyncio.run(run_demo(url, sleep_seconds=args.sleep))


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flowctl`` console script; returns an exit status of
    :data:`EXIT_CODES`."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        for noisy in ("procrastinate", "alembic", "pgserver"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        _run(args)
    except FlowError as exc:
        if args.verbose:
            traceback.print_exception(exc)
        print(f"flowctl: error [{exc.error_code}]: {_one_line(exc.message)}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception:
        traceback.print_exc()
        print(
            "flowctl: internal error: an unexpected exception (traceback above); this is a bug, "
            "please report it",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    return EXIT_OK
