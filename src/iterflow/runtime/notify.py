"""One shared, self-reconnecting LISTEN connection per engine for terminal-run notifications.

NOTIFY is a latency hint only: callers of ``handle.result`` also poll with backoff, so a
notification lost while the connection was down costs latency, never correctness.

Bounded waits in the runtime use ``asyncio.timeout``, never ``asyncio.wait_for``: on Python
3.11, ``wait_for`` returns normally when it is cancelled just as what it waits for completes,
so the task's cancellation is lost and a task stopped that way (a worker or this listener at an
engine's close) runs on and the close hangs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["LocalNotifier", "TerminalListener"]

logger = logging.getLogger(__name__)


class LocalNotifier:
    """Terminal-run waiters inside one process, keyed by run id."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._observers: list[Callable[[str], None]] = []

    def observe(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(run_id)`` for every notified run (``""`` from :meth:`notify_all`)."""
        self._observers.append(callback)

    def unobserve(self, callback: Callable[[str], None]) -> None:
        """Stop calling ``callback``."""
        with contextlib.suppress(ValueError):
            self._observers.remove(callback)

    def _tell(self, run_id: str) -> None:
        for callback in list(self._observers):
            try:
                callback(run_id)
            except Exception:
                logger.exception("a terminal-notification observer failed")

    def subscribe(self, run_id: str) -> asyncio.Event:
        """An event set whenever ``run_id`` is notified."""
        event = asyncio.Event()
        self._waiters.setdefault(run_id, set()).add(event)
        return event

    def unsubscribe(self, run_id: str, event: asyncio.Event) -> None:
        """Forget a waiter."""
        events = self._waiters.get(run_id)
        if events is not None:
            events.discard(event)
            if not events:
                del self._waiters[run_id]

    def notify(self, run_id: str) -> None:
        """Wake the waiters of ``run_id``."""
        for event in self._waiters.get(run_id, ()):
            event.set()
        self._tell(run_id)

    def notify_all(self) -> None:
        """Wake every waiter (they re-check the database)."""
        for events in self._waiters.values():
            for event in events:
                event.set()
        self._tell("")


class TerminalListener:
    """Keeps ``LISTEN <channel>`` alive and wakes the waiters of the notified run ids."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[Any]],
        channel: str,
        *,
        health_interval: float = 2.0,
    ) -> None:
        self._connect = connect
        self._channel = channel
        self._health_interval = health_interval
        self._local = LocalNotifier()
        self._task: asyncio.Task[None] | None = None
        self._conn: Any = None
        self.connected = asyncio.Event()
        self.reconnects = 0

    def subscribe(self, run_id: str) -> asyncio.Event:
        """An event set whenever ``run_id`` is notified, and whenever LISTEN becomes active (the
        first time, which this call may start, and after a reconnect): a NOTIFY sent before
        then was not heard, so the waiter re-checks."""
        self._ensure_started()
        return self._local.subscribe(run_id)

    def unsubscribe(self, run_id: str, event: asyncio.Event) -> None:
        """Forget a waiter."""
        self._local.unsubscribe(run_id, event)

    def observe(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(run_id)`` for every notified run (``""`` whenever LISTEN becomes
        active)."""
        self._ensure_started()
        self._local.observe(callback)

    def unobserve(self, callback: Callable[[str], None]) -> None:
        """Stop calling ``callback``."""
        self._local.unobserve(callback)

    async def start(self, timeout: float = 10.0) -> None:
        """Start listening now and wait (up to ``timeout``) until LISTEN is active."""
        self._ensure_started()
        async with asyncio.timeout(timeout):
            await self.connected.wait()

    def _ensure_started(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="iterflow-listener")

    async def close(self) -> None:
        """Stop listening and close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._local.notify(payload)

    async def _run(self) -> None:
        failures = 0
        while True:
            conn: Any = None
            try:
                conn = await self._connect()
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(self._channel, self._on_notify)
                self._conn = conn
                self.connected.set()
                # Anything may have happened before LISTEN was active (a run canceled or
                # finished between a waiter's subscription and the first connect) or while it
                # was away: every waiter re-checks the database.
                self._local.notify_all()
                failures = 0
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self._health_interval):
                            await lost.wait()
                    if not lost.is_set():
                        async with asyncio.timeout(self._health_interval):
                            await conn.execute("SELECT 1")
            except asyncio.CancelledError:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(1.0):
                            await conn.close()
                raise
            except Exception as exc:
                logger.warning("notification listener lost its connection: %s", exc)
            self.connected.clear()
            self._conn = None
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.terminate()
            failures += 1
            self.reconnects += 1
            delay = min(5.0, 0.05 * 2 ** min(failures, 7)) * (0.5 + random.random() / 2)
            await asyncio.sleep(delay)

    async def backend_pid(self) -> int | None:
        """The server pid of the LISTEN connection (for fault-injection tests)."""
        async with asyncio.timeout(10):
            await self.connected.wait()
        conn = self._conn
        return None if conn is None else int(conn.get_server_pid())
