"""What flowctl's command modules share: the parser of every subcommand (which takes ``--json``
after the command name) and the ``--schema`` option, the database URL and an engine on it (never
creating an empty embedded cluster for a command that only reads), a ``module:engine`` loaded by
import path, JSON arguments and output, human output with its control characters escaped, times
with their zone, and progress reporting for long commands.

Like every cli module, this one is imported to build the parser (``flowctl --help``), so the
store and the runtime (SQLAlchemy, asyncpg, procrastinate) are imported only inside functions.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeAlias

from iterflow.core.errors import ConfigInvalid, DatabaseUnavailable, FlowError

if TYPE_CHECKING:
    from iterflow.runtime.engine import Engine

__all__ = [
    "EXIT_ALREADY_TERMINAL",
    "EXIT_NOT_FAILED",
    "EXIT_NOT_FOUND",
    "RESULT_EXIT",
    "Command",
    "CommandParser",
    "Progress",
    "Subparsers",
    "data_dir",
    "database_url",
    "echo",
    "embedded_data_dir",
    "escape_controls",
    "iso",
    "json_text",
    "load_app_engine",
    "load_engine",
    "open_engine",
    "parse_json",
    "parse_when",
    "print_json",
    "schema_option",
    "wants_json",
]

Command: TypeAlias = Callable[[argparse.Namespace], Coroutine[Any, Any, int | None] | int | None]
"""A subcommand's ``func`` (``set_defaults(func=...)``): given the parsed arguments, it does the
work, or returns the coroutine that does it for :func:`iterflow.cli.main` to run. Its result, if
an ``int``, is the exit status (a result such as ``not_found``, see ``iterflow.cli.EXIT_CODES``);
None is success."""

#: Exit statuses of results that changed nothing (``iterflow.cli.EXIT_CODES`` documents them).
EXIT_NOT_FOUND = 4
EXIT_NOT_FAILED = 5
EXIT_ALREADY_TERMINAL = 6

#: The exit status of each result kind that changed nothing (others exit 0).
RESULT_EXIT: dict[str, int] = {
    "not_found": EXIT_NOT_FOUND,
    "missing": EXIT_NOT_FOUND,
    "not_failed": EXIT_NOT_FAILED,
    "already_terminal": EXIT_ALREADY_TERMINAL,
    "closed": EXIT_ALREADY_TERMINAL,
}

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What each command module's ``register(subparsers)`` adds its subcommands to."""


def schema_option() -> argparse.ArgumentParser:
    """A parent parser accepting ``--schema`` after the subcommand too (as well as before it)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--schema", default=argparse.SUPPRESS, help="schema of the iterflow tables")
    return parent


class CommandParser(argparse.ArgumentParser):
    """The parser of every subcommand (:mod:`iterflow.cli` makes it the ``parser_class`` of its
    subparsers, and nested groups such as ``schedules`` inherit it): it adds ``--json`` itself,
    so every command takes it after its name too (as well as before it) and none can forget it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--json",
            action="store_true",
            default=argparse.SUPPRESS,
            help="print one JSON document (its shape per command is in docs/operations.md)",
        )


def wants_json(args: argparse.Namespace) -> bool:
    """Whether ``--json`` was given (before or after the subcommand)."""
    return bool(getattr(args, "json", False))


#: Control characters: C0 (newline and tab included), DEL and C1.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """``text`` with every control character (C0, DEL, C1) shown as a visible escape (``\\n``,
    ``\\r``, ``\\t``, else ``\\x1b``...): a value from the data (a tag, a key, an error
    message) can then neither drive the terminal (escape sequences) nor forge a line."""
    return _CONTROL.sub(lambda m: _NAMED_ESCAPES.get(m[0], f"\\x{ord(m[0]):02x}"), text)


def echo(*lines: str, file: IO[str] | None = None) -> None:
    """Human-readable output: each argument is one line, printed with :func:`escape_controls`
    (so a newline inside one is shown as ``\\n``, never starts a line). Every command prints its
    text output through it; ``--json`` prints the exact values."""
    print("\n".join(escape_controls(line) for line in lines), file=file)


def json_text(data: Any, *, indent: int | None = 2) -> str:
    """``data`` as JSON text, safe on a terminal: ``json`` escapes C0 characters in strings,
    and DEL and C1 are escaped too (``\\u009b``); it parses back to the exact values."""
    text = json.dumps(data, indent=indent, ensure_ascii=False, default=str)
    return re.sub("[\x7f-\x9f]", lambda m: f"\\u{ord(m[0]):04x}", text)


def print_json(data: Any) -> None:
    """``data`` as one indented JSON document (:func:`json_text`) on stdout."""
    print(json_text(data))


def iso(value: datetime | None) -> str | None:
    """A time as ISO 8601 in UTC with its offset (``2030-01-01T09:00:00.123456+00:00``)."""
    return None if value is None else value.astimezone(UTC).isoformat()


def parse_when(text: str, *, what: str, now: datetime) -> datetime:
    """A time bound: an ISO date-time with an offset (``2030-01-01T09:00Z``) or a duration
    before ``now`` (``90m``, ``2d``); ``CONFIG_INVALID`` otherwise (a time without its zone is
    ambiguous)."""
    from iterflow.core.durations import parse_duration
    from iterflow.core.errors import DurationInvalid

    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        try:
            return now - parse_duration(text)
        except DurationInvalid:
            raise ConfigInvalid(
                f"{what} {text!r} is neither an ISO date-time with an offset "
                "(2030-01-01T09:00+00:00) nor a duration before now (90m, 2d)"
            ) from None
    if value.utcoffset() is None:
        raise ConfigInvalid(
            f"{what} {text!r} has no UTC offset (ambiguous); add one, e.g. {text}+00:00"
        )
    return value


class Progress:
    """``done / total`` and the rate of a long command, on stderr: one line rewritten in place
    on a terminal (at most 10 times a second), plain lines otherwise (one per ``every`` seconds,
    and the last). Call it as ``progress(done, total)``; :meth:`close` writes the final line."""

    def __init__(
        self,
        label: str,
        *,
        stream: IO[str] | None = None,
        every: float = 5.0,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty() if tty is None else tty
        self._every = 0.1 if self._tty else every
        self._clock = clock
        self._start = clock()
        self._last_write: float | None = None
        self._state: tuple[int, int] | None = None
        self._written: tuple[int, int] | None = None

    def line(self) -> str:
        """The current ``label: done/total (rate/s)`` text."""
        done, total = self._state or (0, 0)
        elapsed = max(self._clock() - self._start, 1e-9)
        return f"{self.label}: {done}/{total} ({done / elapsed:.1f}/s)"

    def __call__(self, done: int, total: int) -> None:
        self._state = (done, total)
        now = self._clock()
        if self._last_write is not None and now - self._last_write < self._every:
            return
        self._write()

    def _write(self) -> None:
        self._last_write = self._clock()
        self._written = self._state
        if self._tty:
            self._stream.write("\r\x1b[K" + self.line())
        else:
            self._stream.write(self.line() + "\n")
        self._stream.flush()

    def close(self) -> None:
        """Write the final count (and end the terminal line)."""
        if self._state is not None and self._written != self._state:
            self._write()
        if self._tty and self._written is not None:
            self._stream.write("\n")
            self._stream.flush()


def database_url(args: argparse.Namespace) -> str | None:
    """``--database-url``, else ``$ITERFLOW_DATABASE_URL``, else ``$DATABASE_URL``, else None
    (the embedded PostgreSQL). A URL from a variable that is not a PostgreSQL URL is
    ``CONFIG_INVALID`` naming that variable (the engine would not: it gets the URL as an
    argument)."""
    from iterflow.store.urls import asyncpg_url, bad_env_url, resolve_database_url_source

    url, source = resolve_database_url_source(args.database_url)
    if url is None or source == "argument":
        return url
    try:
        asyncpg_url(url)
    except ConfigInvalid as exc:
        raise bad_env_url(exc, source, argument="--database-url") from exc
    return url


def data_dir(args: argparse.Namespace) -> Path | None:
    """``--data-dir``, or None (the settings' default)."""
    value = getattr(args, "data_dir", None)
    return None if value is None else Path(value)


def embedded_data_dir(args: argparse.Namespace) -> Path:
    """Where the embedded PostgreSQL's cluster is (or would be) for these arguments."""
    from iterflow.core.settings import Settings

    base = data_dir(args) or Settings().data_dir
    return (base / "pgdata").expanduser().resolve()


def open_engine(args: argparse.Namespace, *, create_embedded: bool = False) -> Engine:
    """An engine on :func:`database_url`, ``--schema`` and ``--data-dir``, with no flows: for
    commands that need only the tables. Use it as ``async with open_engine(args) as engine:``.

    With no URL anywhere the embedded PostgreSQL is used, but only if its cluster exists
    (``DATABASE_UNAVAILABLE`` names the directory looked in): a command that reads or acts on
    existing runs never creates an empty cluster. ``create_embedded=True`` (``flowctl migrate``)
    creates it."""
    from iterflow.runtime.engine import Engine

    url = database_url(args)
    if url is None and not create_embedded:
        pgdata = embedded_data_dir(args)
        if not (pgdata / "PG_VERSION").is_file():
            raise DatabaseUnavailable(
                f"no embedded database in {pgdata}: no --database-url, $ITERFLOW_DATABASE_URL "
                "or $DATABASE_URL is set, so flowctl looked for the embedded PostgreSQL there, "
                "and it never creates an empty one for this command. Pass --database-url, "
                "point --data-dir at an existing directory, or run `flowctl migrate` to create it"
            )
    options: dict[str, Any] = {"db_schema": args.schema}
    if (directory := data_dir(args)) is not None:
        options["data_dir"] = directory
    return Engine(url, **options)


def parse_json(text: str, what: str, error: type[FlowError]) -> Any:
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


def load_engine(target: str, url: str | None) -> Engine:
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


def load_app_engine(args: argparse.Namespace) -> Engine:
    """:func:`load_engine` for ``args.engine`` with the global ``--database-url`` and
    ``--data-dir`` applied."""
    engine = load_engine(args.engine, args.database_url)
    if (directory := data_dir(args)) is not None:
        engine.configure(data_dir=directory)
    return engine
