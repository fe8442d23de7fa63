"""The reconciler: re-drives live runs that need a wake-up but have none.

It runs as a procrastinate periodic task (deduplicated across workers by procrastinate's
periodic-defer markers) and can be called directly (``engine.reconcile()``). Each category loops
until a batch comes back short. What it repairs:

* runs ``running`` with an expired lease (worker died or hung): reset to ``retrying``, their
  dead worker's ``doing`` job released, woken;
* wake-up jobs left ``doing`` by a worker that stopped heartbeating (they hold the run's lock),
  and reconciler sweeps left ``doing`` the same way (nothing else would ever end them);
* live runs with no queued or running job that need one: ``pending`` and due (a ``delay`` is
  never cut short), a due timer, a buffered signal they wait for, or a terminal child whose
  outcome the parent has not recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from iterflow.core.hooks import Hooks, RecoveryInfo
from iterflow.store.base import Store

__all__ = ["ReconcileReport", "Reconciler"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """What one sweep did."""

    expired_leases: int = 0
    orphaned_jobs: int = 0
    rewoken: int = 0

    @property
    def total(self) -> int:
        """Runs and jobs repaired in this sweep."""
        return self.expired_leases + self.orphaned_jobs + self.rewoken


class Reconciler:
    """Finds stranded runs and gives each exactly one wake-up."""

    def __init__(
        self,
        store: Store,
        *,
        batch: int,
        stale_worker_seconds: float = 30.0,
        hooks: Hooks | None = None,
    ) -> None:
        self._store = store
        self._batch = batch
        self._stale = stale_worker_seconds
        #: The engine's hooks (told of every sweep that repaired something).
        self.hooks = hooks

    async def _drain(self, step: Callable[[int], Awaitable[int]]) -> int:
        total = 0
        while True:
            n = await step(self._batch)
            total += n
            if n < self._batch:
                return total

    async def sweep(self) -> ReconcileReport:
        """One full pass over every category."""
        expired = await self._drain(self._store.recover_expired)
        orphans = await self._store.release_orphaned_jobs(self._stale)
        rewoken = await self._drain(self._store.rewake_stranded)
        report = ReconcileReport(expired_leases=expired, orphaned_jobs=orphans, rewoken=rewoken)
        if report.total:
            # A lease expiry or an orphaned job means a worker died or hung: worth a WARNING
            # (each recovered run is logged with its id when a worker claims it again).
            level = logging.WARNING if expired or orphans else logging.INFO
            logger.log(level, "reconciler repaired %s", report)
            if self.hooks is not None:
                self.hooks.recover(RecoveryInfo(expired, orphans, rewoken))
        return report
