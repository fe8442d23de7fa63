"""``flowctl export RUN_ID``: a run's recorded history as JSON on stdout.

The document (format ``iterflow.run/1``, :mod:`iterflow.core.export`, documented in
``docs/testing.md``) holds the run row, its memo rows, signals, timers and events, and the
iterflow version; ``iterflow.testing.replay(flow, "run.json")`` replays it against the current
code without a database. ``-o FILE`` writes a new file instead (an existing one is refused).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from iterflow.cli.common import Subparsers, open_engine, schema_option
from iterflow.core.errors import ConfigInvalid

__all__ = ["register"]


def register(subparsers: Subparsers) -> None:
    """Add ``export``."""
    export = subparsers.add_parser(
        "export",
        parents=[schema_option()],
        help="print a run's recorded history as JSON (replay it with iterflow.testing.replay)",
    )
    export.add_argument("run_id")
    export.add_argument(
        "-o", "--output", default=None, help="write to this new file instead of stdout"
    )
    export.set_defaults(func=_export)


async def _export(args: argparse.Namespace) -> None:
    import importlib.metadata

    from iterflow.core.export import export_run

    async with open_engine(args) as engine:
        detail = await engine.status(args.run_id)
    text = json.dumps(
        export_run(detail, iterflow_version=importlib.metadata.version("iterflow")), indent=2
    )
    if args.output is None:
        sys.stdout.write(text + "\n")
    else:
        _write_new(Path(args.output), text + "\n")


def _write_new(path: Path, text: str) -> None:
    try:
        with path.open("x", encoding="utf-8") as f:
            f.write(text)
    except FileExistsError:
        raise ConfigInvalid(f"{path} exists; export to a new file") from None
    except OSError as exc:
        raise ConfigInvalid(f"cannot write {path}: {exc.strerror}") from None
