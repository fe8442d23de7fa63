"""Dump a real run's history from a database into a replay-corpus case.

    python -m tests.replay.record --database-url URL --flow tests.replay.flows:ORDER \\
        RUN_ID tests/replay/cases/order_at_sleep.json --description "..." [--now ISO]

The case's ``expected`` outcome is what current code does when it replays the run at ``now``
(default: the run's last update, so a waiting run is still waiting); review it before adding the
file. Existing cases are never overwritten.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from iterflow import Engine
from iterflow.core.export import step_data
from tests.replay.corpus import FORMAT, expected_of, replay_case


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


async def record_case(
    engine: Engine,
    run_id: uuid.UUID | str,
    flow_ref: str,
    description: str,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The case of ``run_id`` as stored now, with its expected outcome under current code."""
    detail = await engine.status(run_id)
    run = detail.run
    case: dict[str, Any] = {
        "format": FORMAT,
        "description": description,
        "flow": flow_ref,
        "name": run.name,
        "version": run.version,
        "recorded_status": run.status.value,
        "input": run.input,
        "now": _iso(now or run.updated_at),
        "steps": [step_data(s) for s in detail.steps],
        "timers": [
            {"cursor_key": t.cursor_key, "fire_at": _iso(t.fire_at)}
            for t in detail.timers
            if t.fired_at is None
        ],
        "inbox": [
            {
                "id": m.id,
                "name": m.name,
                "payload": m.payload,
                "idempotency_key": m.idempotency_key,
                "received_at": _iso(m.received_at),
            }
            for m in detail.signals
            if m.consumed_at is None
        ],
    }
    case["expected"] = expected_of(await replay_case(case))
    return case


def write_case(case: dict[str, Any], path: Path) -> None:
    """Write a new case file (refuses to replace an existing one)."""
    with path.open("x") as f:
        json.dump(case, f, indent=2)
        f.write("\n")


async def _main(args: argparse.Namespace) -> None:
    now = datetime.fromisoformat(args.now) if args.now else None
    async with Engine(args.database_url, db_schema=args.schema) as engine:
        case = await record_case(engine, args.run_id, args.flow, args.description, now)
    write_case(case, Path(args.out))
    print(json.dumps(case["expected"], indent=2))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--schema", default="iterflow")
    parser.add_argument("--flow", required=True, help="module:attribute of the flow definition")
    parser.add_argument("--description", required=True)
    parser.add_argument("--now", default=None, help="replay time (ISO 8601)")
    parser.add_argument("run_id")
    parser.add_argument("out")
    asyncio.run(_main(parser.parse_args()))
