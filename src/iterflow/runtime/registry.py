"""The worker registry: a running worker's row in ``workers`` (``flowctl workers``, ``explain``).

:func:`registered` writes the row when the worker starts, refreshes its heartbeat every
:data:`WORKER_HEARTBEAT_SECONDS` from a background task (off the attempt path: no attempt ever
waits for it) and deletes it when the worker stops cleanly. A killed worker's row is listed as
stale after :data:`WORKER_STALE_SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from iterflow.core.definition import FlowDef
from iterflow.core.errors import FlowError
from iterflow.core.models import WorkerInfo
from iterflow.store.base import WorkerStore

__all__ = ["WORKER_HEARTBEAT_SECONDS", "WORKER_STALE_SECONDS", "registered", "worker_info"]

#: How often a worker refreshes its row.
WORKER_HEARTBEAT_SECONDS = 10.0
#: A worker whose row is older than this is listed as stale (three missed heartbeats).
WORKER_STALE_SECONDS = 3 * WORKER_HEARTBEAT_SECONDS

logger = logging.getLogger(__name__)


def worker_info(
    owner: str, flows: Iterable[FlowDef[Any, Any]], queues: Iterable[str]
) -> WorkerInfo:
    """This process's registration: its lease owner as id, the ``name@version`` it serves and
    the flow queues they are in."""
    return WorkerInfo(
        id=owner,
        host=socket.gethostname(),
        pid=os.getpid(),
        flows=tuple(sorted(f.key for f in flows)),
        queues=tuple(queues),
    )


@contextlib.asynccontextmanager
async def registered(
    store: WorkerStore,
    info: Callable[[], WorkerInfo],
    *,
    every: float = WORKER_HEARTBEAT_SECONDS,
    changed: asyncio.Event | None = None,
) -> AsyncIterator[None]:
    """Keep ``info()`` registered while the block runs: a heartbeat every ``every`` seconds,
    and at once when ``changed`` is set (the worker serves new flow versions)."""
    first = info()
    await store.register_worker(first)

    async def heartbeat() -> None:
        while True:
            if changed is None:
                await asyncio.sleep(every)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(every):  # never wait_for: see runtime/notify.py
                        await changed.wait()
                changed.clear()
            try:
                await store.register_worker(info())
            except Exception as exc:  # the database is away: the next beat tries again
                logger.warning("worker heartbeat failed: %s", exc)

    task = asyncio.create_task(heartbeat(), name="iterflow-worker-heartbeat")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        try:
            await store.remove_worker(first.id)
        except FlowError as exc:  # it will be listed as stale, then pruned
            logger.warning("could not unregister worker %s: %s", first.id, exc)
