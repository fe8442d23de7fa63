"""The group-commit coordinator on its own (``store/group_commit.py``): who runs alone, who
waits for whom, and what each caller is told when a statement is cancelled, stuck or broken.
Its SQL is tested on PostgreSQL in ``tests/integration/test_group_commit.py``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from iterflow.store.group_commit import CheckpointBatcher, Key


class Statements:
    """``alone`` and ``together`` that record their calls; ``together`` yields, as a round
    trip does, and then waits for ``gate``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.error: BaseException | None = None

    async def alone(self, params: dict[str, Any]) -> bool:
        self.calls.append(("alone", 1))
        return True

    async def together(self, batch: Sequence[dict[str, Any]]) -> set[Key]:
        self.calls.append(("together", len(batch)))
        await asyncio.sleep(0)  # a round trip: others run meanwhile
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return {(p["run_id"], p["position"]) for p in batch}


def _params() -> dict[str, Any]:
    return {"run_id": uuid.uuid4(), "position": 0, "output": "1", "error": None}


async def test_the_first_runs_at_once_and_the_others_wait_for_one_shared_statement() -> None:
    db = Statements()
    batcher = CheckpointBatcher(db.alone, db.together)
    assert await asyncio.gather(*(batcher.checkpoint(_params()) for _ in range(5))) == [True] * 5
    assert db.calls == [("together", 1), ("together", 4)]


async def test_batches_are_cut_by_rows_and_by_bytes() -> None:
    db = Statements()
    batcher = CheckpointBatcher(db.alone, db.together, max_batch=3, max_bytes=10)
    small = [_params() for _ in range(7)]
    await asyncio.gather(*(batcher.checkpoint(p) for p in small))
    assert db.calls == [("together", 1), ("together", 3), ("together", 3)]
    db.calls.clear()
    big = [{**_params(), "output": "x" * 6} for _ in range(4)]  # two fill 10 bytes
    await asyncio.gather(*(batcher.checkpoint(p) for p in big))
    assert db.calls == [("together", 1), ("together", 2), ("together", 1)]


async def _queued(db: Statements) -> tuple[asyncio.Future[bool], list[asyncio.Future[bool]]]:
    """A first checkpoint in its statement, held by ``db.gate``, and three queued behind it."""
    db.gate.clear()
    batcher = CheckpointBatcher(db.alone, db.together)
    first = asyncio.ensure_future(batcher.checkpoint(_params()))
    waiting = [asyncio.ensure_future(batcher.checkpoint(_params())) for _ in range(3)]
    await asyncio.sleep(0)
    return first, waiting


async def test_a_caller_cancelled_while_it_waits_leaves_the_others_answered() -> None:
    db = Statements()
    first, waiting = await _queued(db)
    waiting[1].cancel()
    db.gate.set()
    assert await first is True
    assert [await waiting[0], await waiting[2]] == [True, True]
    assert waiting[1].cancelled()


async def test_a_statement_that_breaks_tells_every_caller_of_it() -> None:
    db = Statements()
    first, waiting = await _queued(db)
    db.error = RuntimeError("a bug")
    db.gate.set()
    for task in (first, *waiting):
        with pytest.raises(RuntimeError, match="a bug"):
            await task
    assert ("alone", 1) not in db.calls  # nothing was tried again


async def test_close_cancels_a_statement_stuck_past_its_patience() -> None:
    db = Statements()
    stuck = asyncio.Event()  # never set: PostgreSQL does not answer the shared statement

    async def together(batch: Sequence[dict[str, Any]]) -> set[Key]:
        if len(batch) > 1:
            await stuck.wait()
        return await db.together(batch)

    batcher = CheckpointBatcher(db.alone, together)
    tasks = [asyncio.ensure_future(batcher.checkpoint(_params())) for _ in range(3)]
    assert await tasks[0] is True  # alone, in its caller
    await batcher.close(patience=0.05)
    for task in tasks[1:]:
        with pytest.raises(asyncio.CancelledError):
            await task
