"""Attempts a worker process makes at once on the runs it starts itself.

A start in a process whose worker is running (``engine.listen()``, ``flowctl worker``), serves
the run's flow version and has a free slot, is written already claimed
(:meth:`Store.start_claimed <iterflow.store.base.Store.start_claimed>`: run row, lease and a
``doing`` wake-up job in the start's one commit) and its first attempt starts here at once,
instead of going through the queue (commit, NOTIFY, procrastinate's fetch, claim). The job
holds the run's job lock as a fetched one does: a wake-up queued meanwhile (a signal, a child's
end) is fetched once the attempt has ended, not refused by the claim and lost. Nothing is lost if
the process dies meanwhile: the run is ``running`` under a lease, and the reconciler recovers an
expired lease, releases the job and queues the run's wake-up, so any worker finishes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging

from iterflow.core.errors import FlowError
from iterflow.runtime.worker import SETTLED, Worker
from iterflow.store.base import Claim

__all__ = ["EagerAttempts"]

logger = logging.getLogger(__name__)


class EagerAttempts:
    """At most ``slots`` attempts at once (0 until a worker runs: every start queues)."""

    def __init__(self) -> None:
        self._slots = 0
        self._reserved = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def open(self, slots: int) -> None:
        """A worker with ``slots`` concurrent attempts runs in this process."""
        self._slots = slots

    @property
    def serving(self) -> bool:
        """A worker runs in this process (its starts may be claimed at once)."""
        return self._slots > 0

    def reserve(self) -> bool:
        """Take a slot for a start about to be written claimed (False: none free)."""
        if self._reserved >= self._slots:
            return False
        self._reserved += 1
        return True

    def release(self) -> None:
        """Give back a reserved slot whose start claimed nothing (or failed)."""
        self._reserved -= 1

    def run(self, worker: Worker, claim: Claim) -> None:
        """Make the attempt of ``claim`` in the background on its reserved slot."""
        # a fresh context: nothing of the caller's (its current span, its context variables)
        # leaks into the attempt, as on a worker's own task
        task = asyncio.create_task(
            self._attempt(worker, claim),
            name=f"iterflow-{claim.run.id}",
            context=contextvars.Context(),
        )
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._reserved -= 1

    @staticmethod
    async def _attempt(worker: Worker, claim: Claim) -> None:
        try:
            outcome = await worker.attempt(claim)
            if outcome not in SETTLED:  # no last write ended the job it holds: end it here
                await worker.store.end_wake(claim.lease)
        except FlowError as exc:  # storage down at its end: the lease expiry recovers the run
            logger.error("attempt on run %s failed: %s", claim.run.id, exc)

    async def close(self, grace: float = 5.0) -> None:
        """No new slots; wait ``grace`` seconds for the running attempts, then cancel the rest
        (their runs are recovered from their leases), as procrastinate's worker stops."""
        self._slots = 0
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
