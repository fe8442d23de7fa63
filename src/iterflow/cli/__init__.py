"""``flowctl``: the synchronous, operator-facing surface.

The database URL resolves as in the library (:func:`iterflow.store.urls.resolve_database_url`):
``--database-url``, else ``$ITERFLOW_DATABASE_URL``, else ``$DATABASE_URL``, else embedded (in
``--data-dir``; commands other than ``migrate`` never create an empty embedded cluster).

Bad input never prints a traceback: every :class:`~iterflow.core.errors.FlowError` reaching
:func:`main` becomes one line on stderr, ``flowctl: error [CODE]: message``, and the exit status
of :data:`EXIT_CODES` (``-v`` adds the traceback; with ``--json`` stdout also gets
``{"error": {"code", "message"}, "exit": N}``). A result that changed nothing (``not_found``,
``not_failed``, ``already_terminal``) has its own exit status too. Anything else is a bug and
keeps its traceback.

This module is the top-level parser, its global options and the exit statuses. Each command group
is a module (:mod:`~iterflow.cli.schema`, :mod:`~iterflow.cli.worker`, :mod:`~iterflow.cli.runs`,
:mod:`~iterflow.cli.show`, :mod:`~iterflow.cli.schedules`, :mod:`~iterflow.cli.graph`,
:mod:`~iterflow.cli.demo`) whose ``register(subparsers)`` adds its subcommands with
``set_defaults(func=...)``; :func:`main` calls ``args.func(args)``. Every subcommand's parser is a
:class:`~iterflow.cli.common.CommandParser`, which takes ``--json`` after the command name. Text
output goes through :func:`~iterflow.cli.common.echo` (and log lines through a formatter doing the
same), which escapes control characters that values from the data may carry.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
import traceback
from collections.abc import Sequence
from typing import Any

from iterflow.cli import demo, export, gc, graph, runs, schedules, schema, show, ui, worker
from iterflow.cli.common import (
    EXIT_ALREADY_TERMINAL,
    EXIT_NOT_FAILED,
    EXIT_NOT_FOUND,
    Command,
    CommandParser,
    escape_controls,
    json_text,
)
from iterflow.core.errors import (
    ConfigInvalid,
    DatabaseUnavailable,
    DurationInvalid,
    FlowError,
    FlowUnknown,
    InputInvalid,
    PayloadInvalid,
    PayloadTooLarge,
    RunNotFound,
    ScheduleNotFound,
    SchemaConflict,
    SchemaMissing,
    SignalPayloadInvalid,
    SignalUnknown,
)

__all__ = [
    "EXIT_ALREADY_TERMINAL",
    "EXIT_CODES",
    "EXIT_DATABASE",
    "EXIT_ERROR",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FAILED",
    "EXIT_NOT_FOUND",
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
    EXIT_ERROR: (
        "the command failed with an iterflow error (e.g. FORK_STEP_UNKNOWN, DATA_REJECTED)"
    ),
    EXIT_USAGE: (
        "invalid arguments or input: a usage error, invalid JSON, an unknown or unimportable "
        "module:engine, invalid settings, an unknown flow or signal, an invalid payload "
        "(CONFIG_INVALID, INPUT_INVALID, SIGNAL_PAYLOAD_INVALID, FLOW_UNKNOWN, ...)"
    ),
    EXIT_DATABASE: (
        "the database is unavailable or not ready "
        "(DATABASE_UNAVAILABLE, SCHEMA_MISSING, SCHEMA_CONFLICT; no embedded database in "
        "--data-dir)"
    ),
    EXIT_NOT_FOUND: (
        "not_found: no such run or schedule (RUN_NOT_FOUND, SCHEDULE_NOT_FOUND, or the "
        "not_found result of retry, cancel, signal, fork)"
    ),
    EXIT_NOT_FAILED: (
        "not_failed: retry of a run that is not failed, compensation_failed or parked (nor "
        "canceled, with --resume); nothing changed"
    ),
    EXIT_ALREADY_TERMINAL: (
        "already_terminal: cancel of a finished run, or a signal to one (closed); nothing changed"
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
_NOT_FOUND_ERRORS: tuple[type[FlowError], ...] = (RunNotFound, ScheduleNotFound)


def exit_code(error: FlowError) -> int:
    """The exit status for ``error`` (see :data:`EXIT_CODES`)."""
    if isinstance(error, _DATABASE_ERRORS):
        return EXIT_DATABASE
    if isinstance(error, _USAGE_ERRORS):
        return EXIT_USAGE
    if isinstance(error, _NOT_FOUND_ERRORS):
        return EXIT_NOT_FOUND
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
        "embedded PostgreSQL in --data-dir (./.iterflow); Engine() resolves it the same way.",
        "Only migrate creates an embedded cluster; other commands say where they looked.",
        "",
        "--json (before or after the command) prints one JSON document; shapes are in",
        "docs/operations.md.",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# entry point

# Only the pure core at import time: each command imports the store and the runtime
# (SQLAlchemy, asyncpg, procrastinate), and asyncio, when it runs, so `flowctl --help` and usage
# errors stay fast. The groups add their subcommands in this order (the order of --help).
_COMMAND_GROUPS = (schema, worker, runs, show, export, gc, schedules, graph, ui, demo)


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
        "--data-dir",
        default=None,
        help="directory of the embedded PostgreSQL when no URL is set (default: ./.iterflow)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print JSON (also accepted after the command)"
    )
    parser.add_argument("--version", action=_VersionAction, help="print flowctl's version and exit")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log at DEBUG and print errors' tracebacks"
    )
    # every subcommand's parser (nested ones too) is a CommandParser: it takes --json after its name
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)
    for group in _COMMAND_GROUPS:  # each adds its subcommands, with set_defaults(func=...)
        group.register(subparsers)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("iterflow")
    except PackageNotFoundError:  # pragma: no cover - a source tree that is not installed
        return "unknown"


class _VersionAction(argparse.Action):
    """``--version``: the package's version, read only when asked (it costs an import)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        print(f"flowctl {_version()}")
        parser.exit()


def _run(args: argparse.Namespace) -> int | None:
    command: Command = args.func
    pending = command(args)
    if pending is None or isinstance(pending, int):
        return pending
    import asyncio  # an async command: its coroutine, run to completion

    return asyncio.run(pending)


class _TextLogFormatter(logging.Formatter):
    """A log record's line with its control characters escaped (a message may carry data: a
    tag, an error message; its newline shows as ``\\n``), then its traceback with every line's
    control characters escaped alike but its line breaks kept (an exception's message is data
    too: it cannot drive the terminal, though a newline in it still breaks the traceback's line)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return _escape_lines(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _escape_lines(super().formatStack(stack_info))


def _escape_lines(text: str) -> str:
    return "\n".join(escape_controls(line) for line in text.split("\n"))


class _JsonLogFormatter(logging.Formatter):
    """A log record as ``{"at", "level", "logger", "message"}`` (+ ``"traceback"``)."""

    def format(self, record: logging.LogRecord) -> str:
        from datetime import UTC, datetime

        data = {
            "at": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        return json_text(data, indent=None)


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flowctl`` console script; returns an exit status of
    :data:`EXIT_CODES`."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    handler = logging.StreamHandler()
    if args.json:  # one JSON object per log line (flowctl --json worker ...)
        handler.setFormatter(_JsonLogFormatter())
    else:
        handler.setFormatter(_TextLogFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    if not args.verbose:
        for noisy in ("procrastinate", "alembic", "pgserver"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        status = _run(args)
    except FlowError as exc:
        if args.verbose:
            traceback.print_exception(exc)
        message = _one_line(exc.message)
        print(f"flowctl: error [{exc.error_code}]: {escape_controls(message)}", file=sys.stderr)
        if getattr(args, "json", False):
            error = {"code": exc.error_code, "message": message}
            print(json_text({"error": error, "exit": exit_code(exc)}))
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
    return EXIT_OK if status is None else status
