"""``flowctl list | retry | cancel | fork | signal``: find runs and act on them.

``list`` filters by flow and version, status(es), tags (all of them), idempotency key, parent,
schedule, run id prefix, and created/finished time windows; its "more" hint repeats the filters
(relative times resolved) with the next ``--cursor``. ``retry`` and ``cancel`` act on one run, or,
given filters instead of a run id, on every run they select (``Engine.bulk``; ``--dry-run`` says
what would be done), with progress on stderr. A result that changed nothing exits with its own
status (``not_found`` 4, ``not_failed`` 5, ``already_terminal`` 6).
"""

from __future__ import annotations

import argparse
import shlex
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from iterflow.cli.common import (
    RESULT_EXIT,
    Progress,
    Subparsers,
    echo,
    load_app_engine,
    open_engine,
    parse_json,
    parse_when,
    print_json,
    schema_option,
    wants_json,
)
from iterflow.cli.show import run_summary
from iterflow.core.errors import ConfigInvalid, SignalPayloadInvalid

if TYPE_CHECKING:
    from iterflow.core.models import BulkResult, RunQuery

__all__ = ["register"]


def register(subparsers: Subparsers) -> None:
    """Add ``list``, ``retry``, ``cancel``, ``fork`` and ``signal``."""
    parents = [schema_option()]
    lst = subparsers.add_parser(
        "list", parents=parents, help="list runs, newest first, by flow, status, tag, time..."
    )
    _add_filters(lst)
    lst.add_argument("--limit", type=int, default=50)
    lst.add_argument("--cursor", type=int, default=None, help="continue after a previous page")
    lst.add_argument("--oldest-first", action="store_true", help="list oldest first")
    lst.set_defaults(func=_list)

    retry = subparsers.add_parser(
        "retry",
        parents=parents,
        help="replay a failed run from its failed step (or every run the filters select)",
    )
    retry.add_argument("run_id", nargs="?", help="the run (or give filters instead)")
    retry.add_argument(
        "--resume", action="store_true", help="also resume canceled runs where they stopped"
    )
    _add_bulk(retry)
    retry.set_defaults(func=_retry)

    cancel = subparsers.add_parser(
        "cancel",
        parents=parents,
        help="cancel a live run and its non-detached children (or every run the filters select)",
    )
    cancel.add_argument("run_id", nargs="?", help="the run (or give filters instead)")
    cancel.add_argument("--reason", default=None)
    cancel.add_argument(
        "--compensate",
        action="store_true",
        help="run the compensations of its completed steps first, then end it canceled",
    )
    _add_bulk(cancel)
    cancel.set_defaults(func=_cancel)

    fork = subparsers.add_parser(
        "fork",
        parents=parents,
        help="start a new run reusing a run's steps before a step, replaying from it",
    )
    fork.add_argument("run_id")
    fork.add_argument(
        "--from-step",
        default=None,
        metavar="KEY",
        help="cursor key to replay from (flowctl show --steps lists them; default: where retry "
        "would replay from)",
    )
    fork.set_defaults(func=_fork)

    sig = subparsers.add_parser("signal", help="deliver a signal (validated by the flow's model)")
    sig.add_argument("engine", help="import path of the Engine that registers the flow")
    sig.add_argument("run_id")
    sig.add_argument("name")
    sig.add_argument("payload", help="JSON payload")
    sig.add_argument("--idempotency-key", default=None)
    sig.set_defaults(func=_signal)


# --- filters -----------------------------------------------------------------------------------

#: (option, dest, repeatable) of every run filter, in the order the "more" hint spells them.
_FILTERS: tuple[tuple[str, str, bool], ...] = (
    ("--flow", "flow", False),
    ("--version", "flow_version", False),
    ("--status", "status", True),
    ("--tag", "tag", True),
    ("--idempotency-key", "idempotency_key", False),
    ("--parent", "parent", False),
    ("--schedule", "schedule", False),
    ("--id", "id_prefix", False),
    ("--since", "since", False),
    ("--until", "until", False),
    ("--finished-since", "finished_since", False),
    ("--finished-until", "finished_until", False),
)
_TIMES = {"since", "until", "finished_since", "finished_until"}


def _add_filters(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("filters (every one given narrows)")
    group.add_argument("--flow", default=None, help="flow name")
    group.add_argument("--version", dest="flow_version", type=int, default=None, help="version")
    group.add_argument("--status", action="append", help="status (repeatable: any of them)")
    group.add_argument("--tag", action="append", help="tag (repeatable: all of them)")
    group.add_argument("--idempotency-key", default=None, help="the key the run was started with")
    group.add_argument("--parent", default=None, help="children of this run")
    group.add_argument("--schedule", default=None, help="runs started by this schedule")
    group.add_argument("--id", dest="id_prefix", default=None, help="run id prefix")
    when = "ISO date-time with offset, or a duration before now (90m, 2d)"
    group.add_argument("--since", default=None, help=f"created at or after: {when}")
    group.add_argument("--until", default=None, help=f"created before: {when}")
    group.add_argument("--finished-since", default=None, help=f"finished at or after: {when}")
    group.add_argument("--finished-until", default=None, help=f"finished before: {when}")


def _add_bulk(parser: argparse.ArgumentParser) -> None:
    _add_filters(parser)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="with filters: say what would be done, change nothing",
    )


def _times(args: argparse.Namespace) -> dict[str, datetime | None]:
    now = datetime.now(UTC)
    return {
        dest: None
        if getattr(args, dest) is None
        else parse_when(getattr(args, dest), what=f"--{dest.replace('_', '-')}", now=now)
        for dest in sorted(_TIMES)
    }


def _query(args: argparse.Namespace, times: dict[str, datetime | None]) -> RunQuery:
    return {
        "name": args.flow,
        "version": args.flow_version,
        "status": args.status or None,
        "tags": tuple(args.tag or ()),
        "idempotency_key": args.idempotency_key,
        "parent": args.parent,
        "schedule": args.schedule,
        "id_prefix": args.id_prefix,
        "created_after": times["since"],
        "created_before": times["until"],
        "finished_after": times["finished_since"],
        "finished_before": times["finished_until"],
    }


def _has_filters(args: argparse.Namespace) -> bool:
    return any(getattr(args, dest) not in (None, []) for _, dest, _ in _FILTERS)


def _filter_argv(args: argparse.Namespace, times: dict[str, datetime | None]) -> list[str]:
    """The filters as flowctl options again, relative times resolved (the "more" hint)."""
    argv: list[str] = []
    for option, dest, repeatable in _FILTERS:
        value: Any = getattr(args, dest)
        if value is None:
            continue
        if dest in _TIMES:
            resolved = times[dest]
            value = None if resolved is None else resolved.isoformat()
        for item in value if repeatable else [value]:
            argv += [option, str(item)]
    return argv


# --- list --------------------------------------------------------------------------------------


async def _list(args: argparse.Namespace) -> None:
    times = _times(args)
    async with open_engine(args) as engine:
        page = await engine.list_runs(
            **_query(args, times),
            limit=args.limit,
            cursor=args.cursor,
            oldest_first=args.oldest_first,
        )
    more = None
    if page.next_cursor is not None:
        argv = ["flowctl", "list", *_filter_argv(args, times)]
        if args.schema != "iterflow":
            argv += ["--schema", args.schema]
        if args.limit != 50:
            argv += ["--limit", str(args.limit)]
        if args.oldest_first:
            argv.append("--oldest-first")
        more = shlex.join([*argv, "--cursor", str(page.next_cursor)])
    if wants_json(args):
        print_json(
            {
                "runs": [run_summary(r) for r in page.runs],
                "next_cursor": page.next_cursor,
                "more": more,
            }
        )
        return
    echo(f"{'run id':36}  {'flow':24}  {'status':16}  {'created':25}  why")
    for run in page.runs:
        flow = f"{run.name}@{run.version}"
        created = run.created_at.astimezone(UTC).isoformat(timespec="seconds")
        why = run.waiting_for or (run.error or {}).get("code") or ""
        echo(f"{run.id!s:36}  {flow:24}  {run.status.value:16}  {created:25}  {why}")
    if more is not None:
        echo(f"more: {more}")


# --- retry, cancel (one run, or bulk) ------------------------------------------------------------


def _single_or_bulk(args: argparse.Namespace, command: str) -> bool:
    """True for a bulk action (filters, no run id); refuses both or neither."""
    filtered = _has_filters(args)
    if args.run_id is not None and filtered:
        raise ConfigInvalid(f"flowctl {command} takes a run id or filters, not both")
    if args.run_id is None and not filtered:
        raise ConfigInvalid(
            f"flowctl {command} needs a run id, or filters (--flow, --status, --tag, --since...) "
            "to act on every run they select"
        )
    if args.dry_run and not filtered:
        raise ConfigInvalid("--dry-run applies to filters (a bulk action), not to one run")
    return filtered


def _bulk_output(args: argparse.Namespace, result: BulkResult) -> None:
    if wants_json(args):
        print_json(
            {
                "action": result.action,
                "dry_run": result.dry_run,
                "matched": result.matched,
                "acted": result.acted,
                "outcomes": result.outcomes,
                "run_ids": [str(r) for r in result.run_ids],
            }
        )
        return
    verb = f"would {result.action}" if result.dry_run else f"{result.action}"
    counts = ", ".join(f"{k} {v}" for k, v in sorted(result.outcomes.items())) or "none"
    echo(f"{result.matched} run(s) matched; {verb}: {result.acted} ({counts})")
    if result.dry_run:
        for run_id in result.run_ids:
            echo(f"  {run_id}")


async def _bulk(args: argparse.Namespace, action: str) -> None:
    times = _times(args)
    progress = Progress(f"{action} runs")
    try:
        async with open_engine(args) as engine:
            if action == "retry":
                result = await engine.bulk(
                    "retry",
                    dry_run=args.dry_run,
                    resume=args.resume,
                    progress=progress,
                    **_query(args, times),
                )
            else:
                result = await engine.bulk(
                    "cancel",
                    dry_run=args.dry_run,
                    reason=args.reason,
                    compensate=args.compensate,
                    progress=progress,
                    **_query(args, times),
                )
    finally:
        progress.close()
    _bulk_output(args, result)


def _result(args: argparse.Namespace, run_id: str, kind: str, status: Any) -> int | None:
    if wants_json(args):
        value = None if status is None else status.value
        print_json({"run_id": run_id, "result": kind, "status": value})
    else:
        echo(kind)
    return RESULT_EXIT.get(kind)


async def _retry(args: argparse.Namespace) -> int | None:
    if _single_or_bulk(args, "retry"):
        await _bulk(args, "retry")
        return None
    async with open_engine(args) as engine:
        result = await engine.retry(args.run_id, resume=args.resume)
    return _result(args, args.run_id, result.kind, result.status)


async def _cancel(args: argparse.Namespace) -> int | None:
    if _single_or_bulk(args, "cancel"):
        await _bulk(args, "cancel")
        return None
    async with open_engine(args) as engine:
        result = await engine.cancel(args.run_id, reason=args.reason, compensate=args.compensate)
    return _result(args, args.run_id, result.kind, result.status)


# --- fork, signal --------------------------------------------------------------------------------


async def _fork(args: argparse.Namespace) -> None:
    async with open_engine(args) as engine:
        result = await engine.fork(args.run_id, from_step=args.from_step)
    if wants_json(args):
        print_json(
            {
                "run_id": str(result.run_id),
                "source": args.run_id,
                "from_step": args.from_step,
                "status": result.status.value,
            }
        )
    else:
        echo(f"forked {args.run_id} into run {result.run_id}")


async def _signal(args: argparse.Namespace) -> int | None:
    name = args.name
    data = parse_json(args.payload, f"the payload of signal {name!r}", SignalPayloadInvalid)
    async with load_app_engine(args) as engine:
        result = await engine.signal(args.run_id, name, data, idempotency_key=args.idempotency_key)
    if wants_json(args):
        print_json(
            {
                "run_id": args.run_id,
                "signal": name,
                "result": result.kind,
                "signal_id": result.signal_id,
            }
        )
    else:
        echo(result.kind)
    return RESULT_EXIT.get(result.kind)
