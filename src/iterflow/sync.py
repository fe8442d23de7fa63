"""Blocking access to an :class:`~iterflow.Engine` for synchronous code (Django, Flask, scripts).

``SyncEngine(engine)`` runs the engine on a private event loop in a daemon thread and offers
blocking ``start``, ``signal``, ``publish``, ``signal_with_start``, ``retry``, ``cancel``,
``status``, ``list_runs`` and ``result``;
each call submits the engine's coroutine to that loop and waits for it. It is safe to share
between threads (e.g. a Django process's request threads): the loop serialises nothing but the
hand-over, the engine's pool does the concurrency. It opens on first use; after a ``fork``
(gunicorn's pre-fork workers) the child opens its own loop and pool on first use. Workers still
run apart (``flowctl worker``), unless ``worker=True`` runs one in this process.
Open it after forking: make the first call in each worker process (gunicorn's pre-fork master
must not call it), since a pool cannot cross a ``fork``.

Do not call it from code already running on an event loop (an ``async def`` view): use the
async engine there; a call from the private loop itself raises ``CONFIG_INVALID``.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import uuid
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any, TypeVar, overload

from iterflow.core.definition import FlowDef
from iterflow.core.durations import DurationLike
from iterflow.core.errors import ConfigInvalid
from iterflow.core.events import PublishResult, SignalWithStartResult
from iterflow.core.models import (
    CancelResult,
    RetryResult,
    RunDetail,
    RunPage,
    RunStatus,
    SignalResult,
    StartResult,
)
from iterflow.core.signals import Signal
from iterflow.runtime.engine import Engine, FlowHandle

__all__ = ["SyncEngine"]

T = TypeVar("T")
In = TypeVar("In")
M = TypeVar("M")


class SyncEngine:
    """A blocking facade over ``engine`` (see the module docstring).

    ``SyncEngine(engine)`` owns the engine's lifecycle: it opens it on the first call and closes
    it on :meth:`close` (also called at interpreter exit). ``worker=True`` also runs an
    in-process worker (``engine.listen()``), for scripts and demos.
    """

    def __init__(self, engine: Engine, *, worker: bool = False) -> None:
        if not isinstance(engine, Engine):
            raise ConfigInvalid(f"SyncEngine wraps an iterflow Engine, got {type(engine).__name__}")
        self.engine = engine
        self._worker = worker
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0
        atexit.register(self.close)

    # -- the private loop -----------------------------------------------------------------------

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is not None:
                if self._pid != os.getpid():
                    raise ConfigInvalid(
                        "this SyncEngine was opened before the process forked: its pool and loop "
                        "belong to the parent. Make the first call in each worker process (not at "
                        "import time in a pre-fork master), or create the SyncEngine after the fork"
                    )
                return self._loop
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="iterflow-sync", daemon=True)
            thread.start()
            self._loop, self._thread, self._pid = loop, thread, os.getpid()
            try:
                asyncio.run_coroutine_threadsafe(self._open(), loop).result()
            except BaseException:
                self._stop_loop()
                raise
            return loop

    async def _open(self) -> None:
        await self.engine.open()
        if self._worker:
            await self.engine.listen()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and running is self._loop:
            coro.close()
            raise ConfigInvalid(
                "SyncEngine was called from its own event loop (a flow body or step?): await "
                "the async Engine there instead"
            )
        try:
            loop = self._ensure()
        except BaseException:
            coro.close()
            raise
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    def _stop_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        if not loop.is_running():
            loop.close()

    def close(self) -> None:
        """Close the engine and stop the private loop (idempotent; also run at exit)."""
        with self._lock:
            loop = self._loop
            if loop is None or self._pid != os.getpid():
                self._loop = self._thread = None  # a forked child never closes its parent's
                return
            try:
                asyncio.run_coroutine_threadsafe(self.engine.close(), loop).result(timeout=30)
            finally:
                self._stop_loop()

    def __enter__(self) -> SyncEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the engine's operations, blocking --------------------------------------------------------

    def start(
        self,
        flow: FlowDef[Any, Any] | FlowHandle[Any, Any] | str,
        input: Any,
        *,
        idempotency_key: str | None = None,
        tags: Iterable[str] = (),
        delay: DurationLike | None = None,
        priority: int = 0,
    ) -> StartResult:
        """Start a run of ``flow`` (a handle, a ``FlowDef`` registered on the engine, or a flow
        name: its newest version), as ``handle.start``."""
        options: dict[str, Any] = {
            "idempotency_key": idempotency_key,
            "tags": tags,
            "delay": delay,
            "priority": priority,
        }
        if isinstance(flow, str):
            return self._call(self.engine.start(flow, input, **options))
        definition = flow if isinstance(flow, FlowDef) else flow.definition
        return self._call(FlowHandle(self.engine, definition).start(input, **options))

    def signal(
        self,
        run_id: uuid.UUID | str,
        name: str | Signal[Any],
        payload: Any,
        *,
        idempotency_key: str | None = None,
    ) -> SignalResult:
        """Deliver a signal, as ``engine.signal``."""
        return self._call(
            self.engine.signal(run_id, name, payload, idempotency_key=idempotency_key)
        )

    def publish(
        self, event: str, payload: Any, *, idempotency_key: str | None = None
    ) -> PublishResult:
        """Start every flow subscribed to ``event`` in one transaction, as ``engine.publish``
        (no ``conn=``: a connection belongs to its own event loop)."""
        return self._call(self.engine.publish(event, payload, idempotency_key=idempotency_key))

    @overload
    def signal_with_start(
        self,
        flow: FlowHandle[In, Any],
        input: In | Mapping[str, Any],
        signal: Signal[M],
        payload: M,
        *,
        idempotency_key: str,
        signal_idempotency_key: str | None = None,
        tags: Iterable[str] = (),
        priority: int = 0,
    ) -> SignalWithStartResult: ...

    @overload
    def signal_with_start(
        self,
        flow: FlowHandle[In, Any],
        input: In | Mapping[str, Any],
        signal: str,
        payload: Any,
        *,
        idempotency_key: str,
        signal_idempotency_key: str | None = None,
        tags: Iterable[str] = (),
        priority: int = 0,
    ) -> SignalWithStartResult: ...

    @overload
    def signal_with_start(
        self,
        flow: str,
        input: Any,
        signal: str | Signal[Any],
        payload: Any,
        *,
        idempotency_key: str,
        signal_idempotency_key: str | None = None,
        tags: Iterable[str] = (),
        priority: int = 0,
    ) -> SignalWithStartResult: ...

    def signal_with_start(
        self,
        flow: str | FlowHandle[Any, Any],
        input: Any,
        signal: str | Signal[Any],
        payload: Any,
        *,
        idempotency_key: str,
        signal_idempotency_key: str | None = None,
        tags: Iterable[str] = (),
        priority: int = 0,
    ) -> SignalWithStartResult:
        """Deliver ``signal`` to the run of ``flow`` with ``idempotency_key``, or start that run
        with the signal in its inbox, atomically, as ``engine.signal_with_start`` (typed the
        same way with a handle and a :class:`~iterflow.Signal`)."""
        return self._call(
            self.engine.signal_with_start(
                flow,
                input,
                signal,
                payload,
                idempotency_key=idempotency_key,
                signal_idempotency_key=signal_idempotency_key,
                tags=tags,
                priority=priority,
            )
        )

    def retry(self, run_id: uuid.UUID | str, *, resume: bool = False) -> RetryResult:
        """Retry a failed run from its failed step, as ``engine.retry`` (``resume=True`` also
        resumes a canceled run where it stopped)."""
        return self._call(self.engine.retry(run_id, resume=resume))

    def cancel(
        self, run_id: uuid.UUID | str, *, reason: str | None = None, compensate: bool = False
    ) -> CancelResult:
        """Cancel a live run, as ``engine.cancel`` (``compensate=True``: run the saga's
        compensations first; the result is ``canceling``)."""
        return self._call(self.engine.cancel(run_id, reason=reason, compensate=compensate))

    def status(self, run_id: uuid.UUID | str) -> RunDetail:
        """The run with its steps, signals, timers and events, as ``engine.status``."""
        return self._call(self.engine.status(run_id))

    def list_runs(
        self,
        *,
        name: str | None = None,
        status: RunStatus | str | Iterable[RunStatus | str] | None = None,
        tag: str | None = None,
        limit: int = 50,
        cursor: int | None = None,
    ) -> RunPage:
        """Runs newest first, as ``engine.list_runs``."""
        return self._call(
            self.engine.list_runs(name=name, status=status, tag=tag, limit=limit, cursor=cursor)
        )

    def result(self, run_id: uuid.UUID | str, *, timeout: float | None = None) -> Any:
        """Block until the run ends (at most ``timeout`` seconds: ``RESULT_TIMEOUT``); return
        its output decoded with its flow's output model, or raise its error."""
        return self._call(self.engine.result(run_id, timeout=timeout))
