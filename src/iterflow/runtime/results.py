"""Waiting for a run to end: ``handle.result``/``engine.wait``.

LISTEN/NOTIFY wakes the waiter at once (``runtime/notify.py``); a polling floor with backoff
(capped by ``Settings.result_poll_max_seconds``) keeps it correct when a notification is lost or
the database restarts, so a lost notification only costs latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import typing
import uuid
from datetime import UTC, datetime

from iterflow.core.errors import DatabaseUnavailable, FlowError, ResultTimeout, RunNotFound
from iterflow.core.models import RunRecord
from iterflow.core.states import RunStatus
from iterflow.store.base import Store

__all__ = ["Notifier", "wait_for_end"]


class Notifier(typing.Protocol):
    """Terminal notifications by run id (the LISTEN connection, or in-process for memory)."""

    def subscribe(self, run_id: str) -> asyncio.Event: ...

    def unsubscribe(self, run_id: str, event: asyncio.Event) -> None: ...

    def observe(self, callback: typing.Callable[[str], None]) -> None: ...

    def unobserve(self, callback: typing.Callable[[str], None]) -> None: ...


async def wait_for_end(
    store: Store,
    notifier: Notifier,
    run_id: uuid.UUID,
    *,
    timeout: float | None,
    poll_max: float,
) -> RunRecord:
    """Wait until the run is terminal; return it if ``done``, else raise its ``FlowError``
    (``RESULT_TIMEOUT`` when ``timeout`` seconds pass first; the run is unaffected)."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    event = notifier.subscribe(str(run_id))
    delay = 0.02
    try:
        while True:
            try:
                run = await store.get_run(run_id)
            except DatabaseUnavailable:
                # A dropped pooled connection or a restarting server: the polling floor keeps
                # going until the deadline (pools reconnect on the next checkout).
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    raise
                pause = min(delay, poll_max)
                await asyncio.sleep(pause if left is None else min(pause, left))
                delay *= 2
                continue
            if run is None:
                raise RunNotFound(f"no run {run_id}")
            if run.is_terminal:
                break
            wait_for = min(delay, poll_max)
            if deadline is not None:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise ResultTimeout(_still_running(run, timeout))
                wait_for = min(wait_for, remaining)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_for):  # never wait_for: see runtime/notify.py
                    await event.wait()
            event.clear()
            delay *= 2
    finally:
        notifier.unsubscribe(str(run_id), event)
    if run.status is RunStatus.DONE:
        return run
    raise FlowError.from_dict(run.error or {"code": "RUN_CANCELED", "message": "canceled"})


def _still_running(run: RunRecord, timeout: float | None) -> str:
    """RESULT_TIMEOUT's message: what the run is doing, and a hint when nothing runs it."""
    waited = f"after {timeout}s"
    if run.status is RunStatus.PENDING and run.claims == 0:
        if run.wake_at is not None and run.wake_at > datetime.now(UTC):
            return (
                f"run {run.id} is pending {waited}: its start is delayed until "
                f"{run.wake_at.isoformat()}"
            )
        return (
            f"run {run.id} is still pending {waited}: no worker has claimed it; is a worker "
            f"running for flow {run.name}@{run.version} (engine.listen() or flowctl worker)?"
        )
    waiting = f" (waiting for {run.waiting_for})" if run.waiting_for else ""
    return (
        f"run {run.id} is still {run.status.value}{waiting} {waited}; it goes on running, "
        "call result() again to keep waiting"
    )
