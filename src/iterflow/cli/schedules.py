"""``flowctl schedules list | show | pause | resume | trigger | backfill | delete``.

``trigger`` and ``backfill`` start runs, so they load the application's engine (``module:engine``,
as ``flowctl signal`` does) to encode the runs' input with the flow's model; the others only read
or change the schedule rows. Next ticks are printed in the schedule's zone and in UTC; ``--json``
prints JSON instead.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from iterflow.cli.common import (
    Progress,
    Subparsers,
    echo,
    load_engine,
    open_engine,
    schema_option,
    wants_json,
)
from iterflow.core.errors import ConfigInvalid

if TYPE_CHECKING:
    from iterflow.core.scheduling import ScheduleEvent, ScheduleRecord

__all__ = ["register"]


def register(subparsers: Subparsers) -> None:
    """Add ``schedules`` and its subcommands."""
    group = subparsers.add_parser("schedules", help="list and act on cron schedules")
    commands = group.add_subparsers(dest="schedules_command", required=True, metavar="COMMAND")
    schema_opt = schema_option()

    commands.add_parser(
        "list", parents=[schema_opt], help="every schedule with its next tick"
    ).set_defaults(func=_list)
    show = commands.add_parser(
        "show", parents=[schema_opt], help="a schedule and its recent decisions"
    )
    show.add_argument("schedule_id")
    show.add_argument("--events", type=int, default=20, help="how many recent events")
    show.set_defaults(func=_show)
    for name, text in (
        ("pause", "stop starting runs (runs in progress go on)"),
        ("resume", "start again from the next tick (missed ticks are not caught up)"),
        ("delete", "delete the schedule and its events (its runs stay)"),
    ):
        cmd = commands.add_parser(name, parents=[schema_opt], help=text)
        cmd.add_argument("schedule_id")
        cmd.set_defaults(func=_act, action=name)

    trigger = commands.add_parser("trigger", help="start one run now, as if a tick fell now")
    trigger.add_argument("engine", help="import path of the Engine that registers the flow")
    trigger.add_argument("schedule_id")
    trigger.set_defaults(func=_trigger)
    backfill = commands.add_parser(
        "backfill",
        help="start every tick in [START, END] (ticks that already ran start nothing)",
    )
    backfill.add_argument("engine", help="import path of the Engine that registers the flow")
    backfill.add_argument("schedule_id")
    backfill.add_argument("start", help="ISO date-time with offset, e.g. 2030-01-01T00:00Z")
    backfill.add_argument("end", help="ISO date-time with offset")
    backfill.set_defaults(func=_backfill)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _local(value: datetime | None, tz: str) -> str:
    if value is None:
        return "-"
    local = value.astimezone(ZoneInfo(tz))
    return f"{local:%Y-%m-%d %H:%M %Z} ({value.astimezone(UTC):%Y-%m-%d %H:%M} UTC)"


def _data(record: ScheduleRecord) -> dict[str, Any]:
    spec = record.spec
    nxt = record.next_tick
    return {
        "id": spec.id,
        "flow": spec.flow,
        "version": spec.version,
        "cron": spec.cron,
        "tz": spec.tz,
        "input": spec.input,
        "overlap": spec.overlap,
        "catchup_seconds": spec.catchup_seconds,
        "jitter_seconds": spec.jitter_seconds,
        "start_at": _iso(spec.start_at),
        "end_at": _iso(spec.end_at),
        "source": spec.source,
        "paused": record.paused,
        "next_tick": _iso(nxt),
        "next_tick_local": None if nxt is None else nxt.astimezone(ZoneInfo(spec.tz)).isoformat(),
        "last_tick": _iso(record.last_tick),
        "buffered_tick": _iso(record.buffered_tick),
        "last_run_id": None if record.last_run_id is None else str(record.last_run_id),
    }


def _event(event: ScheduleEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.type,
        "tick": _iso(event.tick),
        "run_id": None if event.run_id is None else str(event.run_id),
        "data": event.data,
        "at": _iso(event.at),
    }


def _line(record: ScheduleRecord) -> str:
    spec = record.spec
    state = "paused" if record.paused else "active"
    return (
        f"{spec.id:24}  {spec.flow:20}  {spec.cron + ' ' + spec.tz:32}  {state:6}  "
        f"next {_local(record.next_tick, spec.tz)}"
    )


async def _list(args: argparse.Namespace) -> None:
    async with open_engine(args) as engine:
        records = await engine.list_schedules()
    if wants_json(args):
        print(json.dumps([_data(r) for r in records], indent=2))
        return
    echo(
        f"{'schedule':24}  {'flow':20}  {'cron and zone':32}  {'state':6}  next tick",
        *(_line(record) for record in records),
    )


async def _show(args: argparse.Namespace) -> None:
    async with open_engine(args) as engine:
        record = await engine.get_schedule(args.schedule_id)
        events = await engine.schedule_events(args.schedule_id, limit=args.events)
    if wants_json(args):
        print(json.dumps({**_data(record), "events": [_event(e) for e in events]}, indent=2))
        return
    spec = record.spec
    lines = [
        _line(record),
        f"  overlap {spec.overlap}, catch-up {spec.catchup_seconds or 'none'} s, "
        f"jitter {spec.jitter_seconds} s, source {spec.source}",
        f"  last tick {_local(record.last_tick, spec.tz)}, last run {record.last_run_id or '-'}",
    ]
    for event in events:
        tick = f" tick {_iso(event.tick)}" if event.tick else ""
        run = f" run {event.run_id}" if event.run_id else ""
        lines.append(f"  {_iso(event.at)}  {event.type}{tick}{run}  {json.dumps(event.data)}")
    echo(*lines)


async def _act(args: argparse.Namespace) -> None:
    async with open_engine(args) as engine:
        if args.action == "delete":
            await engine.delete_schedule(args.schedule_id)
            result: dict[str, Any] = {"id": args.schedule_id, "deleted": True}
        elif args.action == "pause":
            result = _data(await engine.pause(args.schedule_id))
        else:
            result = _data(await engine.resume(args.schedule_id))
    if wants_json(args):
        print(json.dumps(result, indent=2))
    else:
        echo(f"{args.action}d {args.schedule_id}")


async def _trigger(args: argparse.Namespace) -> None:
    async with load_engine(args.engine, args.database_url) as engine:
        result = await engine.trigger(args.schedule_id)
    if wants_json(args):
        print(json.dumps({"run_id": str(result.run_id), "created": result.created}))
    else:
        echo(f"started run {result.run_id}")


def _when(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigInvalid(f"{text!r} is not an ISO date-time") from None
    if value.utcoffset() is None:
        raise ConfigInvalid(f"{text!r} has no UTC offset; add one, e.g. {text}+00:00")
    return value


async def _backfill(args: argparse.Namespace) -> None:
    start, end = _when(args.start), _when(args.end)
    progress = Progress("backfill ticks")
    try:
        async with load_engine(args.engine, args.database_url) as engine:
            results = await engine.backfill(args.schedule_id, start, end, progress=progress)
    finally:
        progress.close()
    created = sum(r.created for r in results)
    if wants_json(args):
        runs = [{"run_id": str(r.run_id), "created": r.created} for r in results]
        print(json.dumps({"ticks": len(results), "created": created, "runs": runs}))
    else:
        echo(f"{len(results)} tick(s): {created} run(s) started, {len(results) - created} existed")
