"""``flowctl gc``: delete finished runs older than an age (``engine.purge``), or count them.

``flowctl gc --older-than 30d [--status done ...] [--flow NAME] [--dry-run]`` deletes the
finished top-level runs that ended more than 30 days ago (all terminal statuses unless
``--status`` narrows them), each with its children and every row of theirs, in small batches
that never lock live runs, with progress on stderr (counted first, like ``--dry-run``, which
only counts). The workers apply ``Settings(retention=...)``
on their own; this is the one-off, operator-run version.
"""

from __future__ import annotations

import argparse

from iterflow.cli.common import (
    Progress,
    Subparsers,
    echo,
    open_engine,
    print_json,
    schema_option,
    wants_json,
)
from iterflow.core.states import TERMINAL_STATUSES, ordered

__all__ = ["register"]


def register(subparsers: Subparsers) -> None:
    """Add ``gc``."""
    gc = subparsers.add_parser(
        "gc",
        parents=[schema_option()],
        help="delete finished runs older than an age, with their children (--dry-run counts)",
    )
    gc.add_argument(
        "--older-than",
        required=True,
        help="age since the run ended: 30d, 12h, 90m... (runs that ended earlier are deleted)",
    )
    gc.add_argument(
        "--status",
        action="append",
        choices=[s.value for s in ordered(TERMINAL_STATUSES)],
        default=None,
        help="only runs that ended with this status (repeatable; default: all of them)",
    )
    gc.add_argument("--flow", default=None, help="only runs of this flow")
    gc.add_argument("--dry-run", action="store_true", help="count what would go; delete nothing")
    gc.set_defaults(func=_gc)


async def _gc(args: argparse.Namespace) -> None:
    async with open_engine(args) as engine:
        report = await engine.purge(
            older_than=args.older_than, status=args.status, flow=args.flow, dry_run=True
        )
        if not args.dry_run and report.runs:
            progress, total = Progress("gc"), report.runs
            report = await engine.purge(
                older_than=args.older_than,
                status=args.status,
                flow=args.flow,
                progress=lambda done: progress(done, max(done, total)),
            )
            progress.close()
    by_status = {status.value: n for status, n in report.by_status.items()}
    if wants_json(args):
        print_json({"dry_run": report.dry_run, "runs": report.runs, "top_level": by_status})
        return
    verb = "would delete" if report.dry_run else "deleted"
    detail = ", ".join(f"{status} {n}" for status, n in by_status.items()) or "none"
    children = report.runs - report.top_level
    echo(f"{verb} {report.runs} run(s): top-level {detail}; {children} child run(s)")
