"""A worker SIGKILLed in the middle of a saga's compensations, with a second worker process
running: the compensation that had finished (checkpointed) never runs again, the one that was
cut off runs again to its end on the other worker, the last one runs once, and the run ends with
its original error and the full compensation record — whether the saga compensates a failure or
a ``cancel(compensate=True)`` sent from another process."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from iterflow import Engine
from iterflow.core.models import RunStatus
from tests.e2e.saga_app import Trip, held_trip, trip
from tests.e2e.workers import kill, start_worker, stop
from tests.integration.flows import eventually, sql

UNDONE = ["compensate:car", "compensate:hotel", "compensate:flight"]


def _lines(log: Path) -> list[tuple[str, str]]:
    """``(what, pid)`` of every booking and compensation, in the order they started."""
    return [(what, pid) for what, pid in (line.split() for line in log.read_text().splitlines())]


@pytest.mark.parametrize(
    ("flow", "ends", "code"),
    [("trip", RunStatus.FAILED, "STEP_FAILED"), ("held-trip", RunStatus.CANCELED, "RUN_CANCELED")],
)
async def test_sigkill_during_compensation_neither_loses_nor_repeats_one(
    database_url: str, tmp_path: Path, flow: str, ends: RunStatus, code: str
) -> None:
    log = tmp_path / "saga.log"
    release = tmp_path / "release"
    log.touch()
    workers = {
        w.pid: w
        for w in (
            start_worker("saga_app:engine", database_url, tmp_path / f"w{i}.log") for i in (1, 2)
        )
    }
    killed = 0
    try:
        async with Engine(database_url, pool_size=2) as client:
            client.register(trip.definition)
            client.register(held_trip.definition)
            run_id = (await client.start(flow, Trip(log=str(log), release=str(release)))).run_id
            if flow == "held-trip":

                async def waiting() -> bool:
                    status = (await client.status(run_id)).run.status
                    return status is RunStatus.AWAITING_SIGNAL

                await eventually(waiting, timeout=60, what="the bookings to be made")
                assert (await client.cancel(run_id, compensate=True)).kind == "canceling"

            async def undoing_hotel() -> bool:
                return any(what == "undo:hotel" for what, _ in _lines(log))

            await eventually(undoing_hotel, timeout=60, what="the hotel's compensation to start")
            checkpointed = sql(
                database_url,
                "SELECT cursor_key FROM iterflow.steps WHERE run_id = %s AND kind = 'compensate'",
                run_id,
            )
            assert checkpointed == [("compensate:car",)]
            killed = int(dict(_lines(log))["undo:hotel"])
            kill(workers.pop(killed))  # SIGKILL: no cleanup, lease left to expire
            print(f"injected: SIGKILL worker pid {killed} during compensate:hotel of {run_id}")
            release.touch()

            async def ended() -> bool:
                return (await client.status(run_id)).run.is_terminal

            await eventually(ended, timeout=90, what=f"run {run_id} to end")
            detail = await client.status(run_id)
    finally:
        for worker in workers.values():
            stop(worker)

    run = detail.run
    assert run.status is ends and run.error is not None and run.error["code"] == code
    assert run.error["details"]["compensation"] == {"status": "compensated", "steps": UNDONE}
    compensations = [s.cursor_key for s in detail.steps if s.kind == "compensate"]
    assert compensations == UNDONE  # one memo row each
    lines = _lines(log)
    runs = Counter(what for what, _ in lines)
    once = {"book:flight": 1, "book:hotel": 1, "book:car": 1, "undo:car": 1, "undo:flight": 1}
    assert runs == Counter({**once, "undo:hotel": 2}), runs  # cut off before its checkpoint
    survivor = {pid for what, pid in lines if what == "undo:flight"}
    assert survivor and str(killed) not in survivor  # the other process finished the saga
    assert "recovered" in [e.type for e in detail.events]
    print(f"verified: executions {dict(runs)}; compensate:car not re-run after its checkpoint")
