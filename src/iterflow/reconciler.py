"""The reconciler: re-drives live runs that need a wake-up but have none.

It runs as a procrastinate periodic task (deduplicated across workers by procrastinate's
periodic-defer markers) and can be called directly (``engine.reconcile()``). Each sweep loops
until a batch comes back short.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .store.base import Store

__all__ = ["ReconcileReport", "Reconciler"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """What one sweep did."""

    expired_leases: int = 0

    @property
    def total(self) -> int:
        """Runs re-driven in this sweep."""
        return self.expired_leases


class Reconciler:
    """Finds stranded runs and gives each exactly one wake-up."""

    def __init__(self, store: Store, *, batch: int) -> None:
        self._store = store
        self._batch = batch

    async def sweep(self) -> ReconcileReport:
        """One full pass; every category loops until a batch comes back short."""
        expired = 0
        while True:
            n = await self._store.recover_expired(self._batch)
            expired += n
            if n < self._batch:
                break
        report = ReconcileReport(expired_leases=expired)
        if report.total:
            logger.info("reconciler re-drove %d run(s): %s", report.total, report)
        return report
