"""What flowctl's command modules share: the ``--schema`` option after a subcommand, the
database URL and an engine on it, a ``module:engine`` loaded by import path, JSON arguments.

Like every cli module, this one is imported to build the parser (``flowctl --help``), so the
store and the runtime (SQLAlchemy, asyncpg, procrastinate) are imported only inside functions.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeAlias

from iterflow.core.errors import ConfigInvalid, FlowError

if TYPE_CHECKING:
    from iterflow.runtime.engine import Engine

__all__ = [
    "Command",
    "Subparsers",
    "database_url",
    "load_engine",
    "open_engine",
    "parse_json",
    "schema_option",
]

Command: TypeAlias = Callable[[argparse.Namespace], Coroutine[Any, Any, None] | None]
"""A subcommand's ``func`` (``set_defaults(func=...)``): given the parsed arguments, it does the
work, or returns the coroutine that does it for :func:`iterflow.cli.main` to run."""

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What each command module's ``register(subparsers)`` adds its subcommands to."""


def schema_option() -> argparse.ArgumentParser:
    """A parent parser accepting ``--schema`` after the subcommand too (as well as before it)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--schema", default=argparse.SUPPRESS, help="schema of the iterflow tables")
    return parent


def database_url(args: argparse.Namespace) -> str | None:
    """``--database-url``, else ``$ITERFLOW_DATABASE_URL``, else ``$DATABASE_URL``, else None
    (the embedded PostgreSQL)."""
    from iterflow.store.urls import resolve_database_url

    return resolve_database_url(args.database_url)


def open_engine(args: argparse.Namespace) -> Engine:
    """An engine on :func:`database_url` and ``--schema``, with no flows: for commands that
    need only the tables. Use it as ``async with open_engine(args) as engine: ...``."""
    from iterflow.runtime.engine import Engine

    return Engine(database_url(args), db_schema=args.schema)


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
