"""``flowctl``: the synchronous, operator-facing surface.

The database URL resolves as in the library (:func:`iterflow.store.urls.resolve_database_url`):
``--database-url``, else ``$ITERFLOW_DATABASE_URL``, else ``$DATABASE_URL``, else embedded.

Bad input never prints a traceback: every :class:`~iterflow.core.errors.FlowError` reaching
:func:`main` becomes one line on stderr, ``flowctl: error [CODE]: message``, and the exit status
of :data:`EXIT_CODES` (``-v`` adds the traceback). Anything else is a bug and keeps its traceback.

This module is the top-level parser, its global options and the exit statuses. Each command group
is a module (:mod:`~iterflow.cli.schema`, :mod:`~iterflow.cli.worker`, :mod:`~iterflow.cli.runs`,
:mod:`~iterflow.cli.schedules`, :mod:`~iterflow.cli.graph`, :mod:`~iterflow.cli.demo`) whose
``register(subparsers)`` adds its subcommands with ``set_defaults(func=...)``; :func:`main` calls
``args.func(args)``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
import traceback
from collections.abc import Sequence

from iterflow.cli import demo, graph, runs, schedules, schema, worker
from iterflow.cli.common import Command
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
# entry point

# Only the pure core at import time: each command imports the store and the runtime
# (SQLAlchemy, asyncpg, procrastinate), and asyncio, when it runs, so `flowctl --help` and usage
# errors stay fast. The groups add their subcommands in this order (the order of --help).
_COMMAND_GROUPS = (schema, worker, runs, schedules, graph, demo)


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
    subparsers = parser.add_subparsers(dest="command", required=True)
    for group in _COMMAND_GROUPS:  # each adds its subcommands, with set_defaults(func=...)
        group.register(subparsers)
    return parser


def _run(args: argparse.Namespace) -> None:
    command: Command = args.func
    pending = command(args)
    if pending is not None:  # an async command: its coroutine, run to completion
        import asyncio

        asyncio.run(pending)


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
