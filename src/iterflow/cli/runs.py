"""``flowctl show | retry | list | cancel | signal``: inspect and act on runs."""

from __future__ import annotations

import argparse

from iterflow.cli.common import Subparsers, load_engine, open_engine, parse_json, schema_option
from iterflow.core.errors import SignalPayloadInvalid

__all__ = ["register"]


def register(subparsers: Subparsers) -> None:
    """Add ``show``, ``retry``, ``list``, ``cancel`` and ``signal``."""
    schema_opt = schema_option()
    show = subparsers.add_parser(
        "show", parents=[schema_opt], help="print a run's state and timeline"
    )
    show.add_argument("run_id")
    show.set_defaults(func=_show)

    retry = subparsers.add_parser(
        "retry", parents=[schema_opt], help="replay a failed run from its failed step"
    )
    retry.add_argument("run_id")
    retry.set_defaults(func=_retry)

    lst = subparsers.add_parser("list", parents=[schema_opt], help="list runs, newest first")
    lst.add_argument("--flow", default=None, help="only runs of this flow name")
    lst.add_argument("--status", action="append", help="only this status (repeatable)")
    lst.add_argument("--tag", default=None, help="only runs with this tag")
    lst.add_argument("--limit", type=int, default=50)
    lst.add_argument("--cursor", type=int, default=None, help="continue after a previous page")
    lst.set_defaults(func=_list)

    cancel = subparsers.add_parser(
        "cancel", parents=[schema_opt], help="cancel a live run (and its non-detached children)"
    )
    cancel.add_argument("run_id")
    cancel.add_argument("--reason", default=None)
    cancel.set_defaults(func=_cancel)

    sig = subparsers.add_parser("signal", help="deliver a signal (validated by the flow's model)")
    sig.add_argument("engine", help="import path of the Engine that registers the flow")
    sig.add_argument("run_id")
    sig.add_argument("name")
    sig.add_argument("payload", help="JSON payload")
    sig.add_argument("--idempotency-key", default=None)
    sig.set_defaults(func=_signal)


async def _show(args: argparse.Namespace) -> None:
    from iterflow.core.timeline import render_timeline

    async with open_engine(args) as engine:
        detail = await engine.status(args.run_id)
        print(render_timeline(detail))


async def _retry(args: argparse.Namespace) -> None:
    async with open_engine(args) as engine:
        result = await engine.retry(args.run_id)
        print(result.kind)


async def _list(args: argparse.Namespace) -> None:
    async with open_engine(args) as engine:
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


async def _cancel(args: argparse.Namespace) -> None:
    async with open_engine(args) as engine:
        print((await engine.cancel(args.run_id, reason=args.reason)).kind)


async def _signal(args: argparse.Namespace) -> None:
    name = args.name
    data = parse_json(args.payload, f"the payload of signal {name!r}", SignalPayloadInvalid)
    engine = load_engine(args.engine, args.database_url)
    async with engine:
        result = await engine.signal(args.run_id, name, data, idempotency_key=args.idempotency_key)
        print(result.kind)
