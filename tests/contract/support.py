"""Helpers shared by the contract tests (both stores)."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from iterflow.core.models import NewRun, StepKind, StepRecord, StepStatus
from iterflow.store.base import Lease, Store
from iterflow.store.memory import MemoryStore
from iterflow.store.postgres import PostgresStore

LEASE = 30.0

Event = tuple[str, str | None, Any]


def new_run(**kw: Any) -> NewRun:
    fields: dict[str, Any] = {"id": uuid.uuid4(), "name": "f", "version": 1, "input": {"n": 1}}
    fields.update(kw)
    return NewRun(**fields)


def memo(position: int, key: str, status: StepStatus = StepStatus.OK, **kw: Any) -> StepRecord:
    return StepRecord(position, key, StepKind.STEP, key, status, **kw)


async def started_and_claimed(store: Store, **kw: Any) -> Lease:
    run = new_run(**kw)
    await store.create_run(run)
    claim = await store.claim(run.id, "w1", LEASE)
    assert claim is not None
    return claim.lease


class Timeline:
    """Reads a run's events a batch at a time: what each operation wrote."""

    def __init__(self, store: Store, run_id: uuid.UUID) -> None:
        self.store = store
        self.run_id = run_id
        self.seen = 0

    async def new(self) -> list[Event]:
        """``(type, cursor_key, data)`` of the events written since the last call."""
        detail = await self.store.detail(self.run_id)
        assert detail is not None
        ids = [e.id for e in detail.events]
        assert ids == sorted(set(ids)), "event ids are unique and increasing"
        fresh = detail.events[self.seen :]
        self.seen = len(detail.events)
        return [(e.type, e.cursor_key, e.data) for e in fresh]


async def lose_wakes(store: Store) -> None:
    """Drop every queued wake-up (a ``todo`` job), as if each had been lost: the queue side,
    which the Store Protocol does not cover."""
    if isinstance(store, MemoryStore):
        store._wakes.clear()
        return
    assert isinstance(store, PostgresStore)
    async with store._engine.begin() as conn:
        await conn.execute(sa.text("DELETE FROM procrastinate_jobs WHERE status = 'todo'"))
