"""Group commit across runs: the checkpoints of concurrent runs share one statement and one
commit (a step's memo; an attempt's first also renews its lease; those that consume a signal or
fire a timer, and a retried step's, stay alone).

A checkpoint that finds none in flight runs at once, as before (no added latency when the
worker is quiet). Checkpoints that arrive while one is in flight wait and go together in the
next statement: one ``INSERT ... SELECT FROM unnest(...)`` whose rows are each fenced by their
own run's lease (a share lock on the run row, or the row lock of the lease's renewal, as
alone), committed once. Every caller
still waits for the commit that holds its own row, so a step's memo is durable before the next
``ctx`` call returns. Under load the batches grow by themselves; per row, PostgreSQL's CPU falls
2-3x and the client's 4x at 10 rows (docs/performance.md, section 5).

One run must not hold up the others: the batch skips a row whose run row is locked (a signal
being delivered, a cancel, a sweep, a frozen process's transaction) instead of waiting for it.
A row the batch did not write (skipped, or its lease lost), and every row of a batch
PostgreSQL refused as a whole with nothing committed (one row's data, a deadlock), is then
committed alone by its own caller, who gets the answer it would have got alone. Any other
failure (the connection lost, maybe after the commit) is every caller's, exactly as alone:
nothing is retried whose commit is in doubt.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from iterflow.core.errors import FlowError
from iterflow.store.connections import sqlstate

__all__ = ["RETRY_ALONE", "CheckpointBatcher", "Key"]

#: A checkpoint's identity in its batch's answer: ``(run_id, position)``.
Key = tuple[uuid.UUID, int]
#: SQLSTATE classes of a batch refused as a whole, with nothing committed, whose rows are then
#: tried alone: data exception, integrity violation, transaction rollback (deadlock).
RETRY_ALONE = frozenset({"22", "23", "40"})

Params = dict[str, Any]
_Waiter = tuple[Params, "asyncio.Future[bool]"]


class CheckpointBatcher:
    """Runs checkpoints at once when the store is quiet and together when it is not.

    ``together(list of params)`` commits checkpoints in one statement, skipping the rows whose
    run row is locked, and returns the keys (``(run_id, position)``) it wrote; ``alone(params)``
    commits one, waiting for its run row if need be, and says whether its lease held. At most
    ``max_in_flight`` ``together`` statements run at once; ``alone`` runs outside them, so a run
    waiting for its row never holds up the others.
    """

    def __init__(
        self,
        alone: Callable[[Params], Awaitable[bool]],
        together: Callable[[Sequence[Params]], Awaitable[set[Key]]],
        *,
        max_in_flight: int = 1,
        max_batch: int = 64,
        max_bytes: int = 1 << 20,
    ) -> None:
        self._alone = alone
        self._together = together
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._max_bytes = max_bytes
        self._in_flight = 0
        self._waiting: list[_Waiter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def checkpoint(self, params: Params) -> bool:
        """Commit one checkpoint (with others, if some are waiting too): whether its lease
        held. Raises what committing it raised."""
        if self._in_flight < self._max_in_flight and not self._waiting:
            self._in_flight += 1  # quiet: at once, in the caller's task
            try:
                written = _key(params) in await self._together([params])
            except FlowError as exc:
                if not _refused(exc):
                    raise
                written = False
            finally:
                self._done()
        else:
            future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._waiting.append((params, future))
            if self._in_flight < self._max_in_flight:
                self._launch()
            written = await future
        # not written (its run row locked, its lease lost, or the batch refused): alone
        return written or await self._alone(params)

    async def close(self, patience: float = 5.0) -> None:
        """Let the batches in flight end (their callers wait for them); those still running
        after ``patience`` seconds (PostgreSQL not answering) are cancelled, and their callers
        get the cancellation."""
        if not self._tasks:
            return
        _, stuck = await asyncio.wait(set(self._tasks), timeout=patience)
        for task in stuck:
            task.cancel()
        if stuck:
            await asyncio.wait(stuck)

    def _done(self) -> None:
        self._in_flight -= 1
        if self._waiting and self._in_flight < self._max_in_flight:
            self._launch()

    def _launch(self) -> None:
        size, taken = 0, 0
        for params, _ in self._waiting[: self._max_batch]:
            size += len(params.get("output") or "") + len(params.get("error") or "")
            taken += 1
            if size >= self._max_bytes:
                break
        batch = self._waiting[:taken]
        del self._waiting[:taken]
        self._in_flight += 1
        task = asyncio.get_running_loop().create_task(self._flush(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, batch: list[_Waiter]) -> None:
        try:
            try:
                written = await self._together([params for params, _ in batch])
            except FlowError as exc:
                if not _refused(exc):
                    for _, future in batch:
                        _fail(future, exc)
                    return
                written = set()  # refused as a whole, nothing committed: each alone
            for params, future in batch:
                if not future.done():
                    future.set_result(_key(params) in written)
        except BaseException as exc:  # cancelled (the store closing), or a bug: nobody waits
            for _, future in batch:  # for good, and each caller gets what happened
                _fail(future, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._done()


def _key(params: Params) -> Key:
    return params["run_id"], params["position"]


def _refused(exc: FlowError) -> bool:
    """Whether PostgreSQL refused the statement as a whole, so that nothing was committed."""
    return sqlstate(exc.__cause__ or exc)[:2] in RETRY_ALONE


def _fail(future: asyncio.Future[bool], exc: BaseException) -> None:
    if future.done():
        return
    if isinstance(exc, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(exc)
