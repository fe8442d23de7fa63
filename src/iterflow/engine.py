"""The engine facade: register flows, start runs, deliver signals, retry, inspect, wait."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import typing
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from . import codec
from .definition import DriftPolicy, FlowDef, Registry
from .durations import DurationLike, parse_duration
from .errors import (
    ConfigInvalid,
    DatabaseUnavailable,
    FlowError,
    FlowUnknown,
    InputInvalid,
    ResultTimeout,
    RunNotFound,
    SignalPayloadInvalid,
    SignalUnknown,
)
from .models import (
    CancelResult,
    NewRun,
    RetryResult,
    RunDetail,
    RunPage,
    RunRecord,
    RunStatus,
    SignalResult,
    StartResult,
)
from .notify import TerminalListener
from .reconciler import Reconciler, ReconcileReport
from .settings import Settings
from .store.base import Store
from .store.memory import MemoryStore
from .store.postgres import HOT_IDLE, TERMINAL_CHANNEL, PostgresStore
from .urls import asyncpg_url, libpq_url
from .worker import Worker, run_procrastinate, stale_worker_seconds

if TYPE_CHECKING:
    from .context import FlowContext
    from .embedded import EmbeddedPostgres

__all__ = ["Engine", "FlowHandle"]

In = TypeVar("In")
Out = TypeVar("Out")

logger = logging.getLogger(__name__)

_MAX_KEY = 200


class FlowHandle(Generic[In, Out]):
    """A typed handle on a registered flow: ``start`` runs, wait for their ``result``."""

    def __init__(self, engine: Engine, definition: FlowDef[In, Out]) -> None:
        self.engine = engine
        self.definition = definition

    @property
    def name(self) -> str:
        """The flow's name."""
        return self.definition.name

    @property
    def version(self) -> int:
        """The flow's version."""
        return self.definition.version

    async def start(
        self,
        input: In | Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        tags: Iterable[str] = (),
        delay: DurationLike | None = None,
        priority: int = 0,
        conn: Any = None,
    ) -> StartResult:
        """Start a run. Input is validated before anything is written (``INPUT_INVALID``).

        One transaction writes the run, its ``started`` event and its wake-up job; ``conn`` (a
        SQLAlchemy ``AsyncConnection`` in a transaction) joins the caller's transaction, so the
        run exists only if the caller commits. A repeated ``idempotency_key`` returns the
        existing run (``created=False``).
        """
        return await self.engine._start(
            self.definition,
            input,
            idempotency_key=idempotency_key,
            tags=tags,
            delay=delay,
            priority=priority,
            conn=conn,
        )

    async def result(self, run_id: uuid.UUID | str, *, timeout: float | None = None) -> Out:
        """Wait for the run to finish and return its output as the flow's output model.

        Raises the run's :class:`FlowError` (code preserved) if it failed or was canceled, and
        ``RESULT_TIMEOUT`` if ``timeout`` seconds pass first.
        """
        run = await self.engine.wait(run_id, timeout=timeout)
        return self.definition.decode_output(run.output)


class Engine:
    """Durable flows on PostgreSQL. Use as ``async with Engine(url) as engine: ...``.

    With no ``database_url`` an embedded PostgreSQL is started in ``settings.data_dir``.
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        settings: Settings | None = None,
        **overrides: Any,
    ) -> None:
        base = settings or Settings()
        if database_url is not None:
            overrides["database_url"] = database_url
        try:
            self.settings = (
                Settings.model_validate({**base.model_dump(), **overrides}) if overrides else base
            )
        except ValidationError as exc:
            raise ConfigInvalid(
                f"invalid engine settings: {codec.validation_message(exc)}"
            ) from exc
        self.registry = Registry()
        self._url: str | None = None
        self._sa: AsyncEngine | None = None
        self._store: Store | None = None
        self._worker: Worker | None = None
        self._listener: TerminalListener | None = None
        self._embedded: EmbeddedPostgres | None = None
        self._worker_tasks: list[asyncio.Task[None]] = []
        self._reconciler: Reconciler | None = None
        self._memory: MemoryStore | None = None
        self._notifier: _Notifier | None = None

    @classmethod
    def in_memory(cls, *, clock: Callable[[], datetime] | None = None, **overrides: Any) -> Engine:
        """An engine on the in-memory store, for unit tests of your flows (no PostgreSQL).

        Wake-ups are executed in this process by ``await engine.drain()`` (or a background
        ``listen()``); pass an :class:`iterflow.testing.FakeClock` to fire ``sleep("3d")`` at
        once with ``clock.advance("3d")``.
        """
        engine = cls("memory://", **overrides)
        engine._memory = MemoryStore(clock)
        return engine

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Engine:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def database_url(self) -> str:
        """The URL in use (available once open)."""
        if self._url is None:
            raise ConfigInvalid("the engine is not open; use `async with Engine(...)`")
        return self._url

    async def open(self) -> None:
        """Start the embedded server if needed and create the connection pool."""
        if self._store is not None:
            return
        if self._memory is not None:
            self._url = "memory://"
            self._store = self._memory
            self._notifier = self._memory.notifier
            self._worker = Worker(
                self._store,
                self.registry,
                self.settings,
                watch=self._watch_run,
                clock=self._memory.clock,
            )
            self._reconciler = Reconciler(self._store, batch=self.settings.reconcile_batch)
            return
        url = self.settings.database_url
        if url is None:
            from .embedded import EmbeddedPostgres

            self._embedded = EmbeddedPostgres(self.settings.data_dir / "pgdata")
            url = await asyncio.to_thread(self._embedded.start)
        self._url = url
        self._sa = create_async_engine(
            asyncpg_url(url),
            pool_size=self.settings.pool_size,
            # headroom for the store's idle hot-path connections, so they never starve others
            max_overflow=self.settings.pool_size + HOT_IDLE,
            pool_pre_ping=False,
        )
        self._store = PostgresStore(
            self._sa, schema=self.settings.db_schema, queue=self.settings.queue_name
        )

        async def connect() -> Any:
            import asyncpg

            return await asyncpg.connect(libpq_url(url))

        self._listener = TerminalListener(connect, TERMINAL_CHANNEL)
        self._notifier = self._listener
        self._worker = Worker(self._store, self.registry, self.settings, watch=self._watch_run)
        self._reconciler = Reconciler(
            self._store,
            batch=self.settings.reconcile_batch,
            stale_worker_seconds=stale_worker_seconds(self.settings),
        )

    async def close(self) -> None:
        """Stop workers and the listener, dispose the pool, release the embedded server."""
        for task in self._worker_tasks:
            task.cancel()
        for task in self._worker_tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._worker_tasks.clear()
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
        self._notifier = None
        if isinstance(self._store, PostgresStore):
            await self._store.close()
        self._store = None
        if self._sa is not None:
            await self._sa.dispose()
            self._sa = None
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)
            self._embedded = None

    def _watch_run(self, run_id: uuid.UUID) -> tuple[asyncio.Event, Callable[[], None]]:
        listener = self._notifier
        if listener is None:
            return asyncio.Event(), lambda: None
        key = str(run_id)
        event = listener.subscribe(key)
        return event, lambda: listener.unsubscribe(key, event)

    async def migrate(self) -> None:
        """Install or upgrade iterflow's tables (what ``flowctl migrate`` does)."""
        if self._memory is not None:
            return
        from .migrate import run_migrations

        await asyncio.to_thread(run_migrations, self.database_url, schema=self.settings.db_schema)

    @property
    def store(self) -> Store:
        """The store (open engines only)."""
        if self._store is None:
            raise ConfigInvalid("the engine is not open; use `async with Engine(...)`")
        return self._store

    @property
    def sqlalchemy_engine(self) -> AsyncEngine:
        """The SQLAlchemy engine, e.g. to open a connection for ``start(..., conn=)``."""
        if self._sa is None:
            raise ConfigInvalid("the engine is not open; use `async with Engine(...)`")
        return self._sa

    @property
    def worker(self) -> Worker:
        """The attempt loop (open engines only)."""
        if self._worker is None:
            raise ConfigInvalid("the engine is not open; use `async with Engine(...)`")
        return self._worker

    # -- definition ---------------------------------------------------------------------------

    def flow(
        self,
        name: str,
        *,
        version: int = 1,
        input: type[In],
        output: type[Out],
        signals: Mapping[str, type[Any]] | None = None,
        drift_policy: DriftPolicy = "fail",
    ) -> Callable[[Callable[[FlowContext, In], Awaitable[Out]]], FlowHandle[In, Out]]:
        """Register ``async def body(ctx, input) -> output`` as flow ``name`` at ``version``.

        Every signal the body waits for must be declared in ``signals`` so that
        ``engine.signal`` can validate payloads before storing them. ``drift_policy="park"``
        parks runs whose history no longer matches the body (or whose version is gone) instead
        of failing them; ``engine.retry`` or a worker start re-checks them.
        """

        def register(body: Callable[[FlowContext, In], Awaitable[Out]]) -> FlowHandle[In, Out]:
            definition: FlowDef[In, Out] = FlowDef(
                name=name,
                version=version,
                input_type=input,
                output_type=output,
                body=cast(Callable[[Any, Any], Awaitable[Any]], body),
                signals=dict(signals or {}),
                drift_policy=drift_policy,
            )
            return self.register(definition)

        return register

    def register(self, definition: FlowDef[In, Out]) -> FlowHandle[In, Out]:
        """Register a flow definition and return its typed handle."""
        self.registry.add(definition)
        return FlowHandle(self, definition)

    # -- runs ---------------------------------------------------------------------------------

    async def _start(
        self,
        flow: FlowDef[Any, Any],
        input: Any,
        *,
        idempotency_key: str | None,
        tags: Iterable[str],
        delay: DurationLike | None,
        priority: int,
        conn: Any,
    ) -> StartResult:
        value = flow.validate_input(input)
        data = codec.dump(value, flow.input_type)
        codec.check_size(data, self.settings.max_payload_bytes, f"input of flow {flow.key}")
        _check_key(idempotency_key)
        tag_list = tuple(tags)
        if any(not isinstance(t, str) or not t for t in tag_list):
            raise InputInvalid("tags must be non-empty strings")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise InputInvalid("priority must be an integer")
        now = self._memory.clock() if self._memory is not None else datetime.now(UTC)
        wake_at = now + parse_duration(delay) if delay is not None else None
        return await self.store.create_run(
            NewRun(
                id=uuid.uuid4(),
                name=flow.name,
                version=flow.version,
                input=data,
                idempotency_key=idempotency_key,
                tags=tag_list,
                priority=priority,
                wake_at=wake_at,
            ),
            conn=conn,
        )

    async def start(
        self,
        name: str,
        input: Any,
        *,
        idempotency_key: str | None = None,
        tags: Iterable[str] = (),
        delay: DurationLike | None = None,
        priority: int = 0,
        conn: Any = None,
    ) -> StartResult:
        """Start a run of the **newest** registered version of flow ``name`` (untyped; the
        flow's typed handle starts its own version). Same options as ``FlowHandle.start``."""
        flow = self.registry.latest(name)
        if flow is None:
            raise FlowUnknown(f"no flow named {name!r} is registered in this process")
        return await self._start(
            flow,
            input,
            idempotency_key=idempotency_key,
            tags=tags,
            delay=delay,
            priority=priority,
            conn=conn,
        )

    async def signal(
        self,
        run_id: uuid.UUID | str,
        name: str,
        payload: Any,
        *,
        idempotency_key: str | None = None,
    ) -> SignalResult:
        """Deliver signal ``name`` to a run (what a webhook handler calls).

        The payload is validated against the model the flow declares for ``name`` before
        anything is stored. Returns ``delivered``, ``buffered``, ``duplicate``, ``not_found`` or
        ``closed``; invalid input raises a :class:`FlowError` and writes nothing.
        """
        rid = _run_id(run_id)
        _check_key(idempotency_key)
        run = await self.store.get_run(rid)
        if run is None:
            return SignalResult("not_found")
        flow = self.registry.get(run.name, run.version)
        if flow is None:
            raise FlowUnknown(
                f"flow {run.name}@{run.version} of run {rid} is not registered in this process; "
                "register it to validate its signals"
            )
        model = flow.signals.get(name)
        if model is None:
            known = ", ".join(sorted(flow.signals)) or "none"
            raise SignalUnknown(f"flow {flow.key} declares no signal {name!r} (declared: {known})")
        try:
            data = codec.dump(codec.load(payload, model), model)
        except ValidationError as exc:
            raise SignalPayloadInvalid(
                f"payload for signal {name!r} is invalid: {codec.validation_message(exc)}",
                details={"errors": exc.errors(include_url=False, include_context=False)},
            ) from exc
        codec.check_size(data, self.settings.max_payload_bytes, f"signal {name!r} payload")
        return await self.store.deliver_signal(rid, name, data, idempotency_key)

    async def cancel(self, run_id: uuid.UUID | str, *, reason: str | None = None) -> CancelResult:
        """Cancel a live run and its non-detached live children.

        Returns ``canceled``, ``not_found`` or ``already_terminal`` (terminal runs never change).
        An attempt running elsewhere stops at once (async steps get ``CancelledError``) or at its
        next checkpoint at the latest, and writes nothing more; ``result`` raises
        ``RUN_CANCELED``.
        """
        text = reason or "canceled"
        if not isinstance(text, str) or len(text) > 1000:
            raise InputInvalid("reason must be a string of at most 1000 characters")
        return await self.store.cancel(_run_id(run_id), text)

    async def retry(self, run_id: uuid.UUID | str) -> RetryResult:
        """Replay a failed run in place from its failed step (same id; ok steps kept).

        A ``parked`` run is woken as it is, to be re-checked against the code deployed now.
        """
        return await self.store.retry(_run_id(run_id))

    async def status(self, run_id: uuid.UUID | str) -> RunDetail:
        """The run row with its steps, signals, timers and events (``RUN_NOT_FOUND`` if none)."""
        rid = _run_id(run_id)
        detail = await self.store.detail(rid)
        if detail is None:
            raise RunNotFound(f"no run {rid}")
        return detail

    async def list_runs(
        self,
        *,
        name: str | None = None,
        status: RunStatus | str | Iterable[RunStatus | str] | None = None,
        tag: str | None = None,
        limit: int = 50,
        cursor: int | None = None,
    ) -> RunPage:
        """Runs newest first, filtered by flow name, status(es) and tag; keyset-paginated."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise InputInvalid("limit must be an integer between 1 and 1000")
        raw = [status] if isinstance(status, str | RunStatus) else list(status or ())
        try:
            statuses = [RunStatus(s) for s in raw]
        except ValueError as exc:
            known = ", ".join(s.value for s in RunStatus)
            raise InputInvalid(f"unknown status in {raw!r}; use one of: {known}") from exc
        runs = await self.store.list_runs(
            name=name, statuses=statuses, tag=tag, limit=limit, before_seq=cursor
        )
        next_cursor = runs[-1].seq if len(runs) == limit else None
        return RunPage(runs=tuple(runs), next_cursor=next_cursor)

    async def wait(self, run_id: uuid.UUID | str, *, timeout: float | None = None) -> RunRecord:
        """Wait until the run is terminal; return it, or raise its error if not ``done``."""
        rid = _run_id(run_id)
        notifier = self._notifier
        if notifier is None:
            raise ConfigInvalid("the engine is not open; use `async with Engine(...)`")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        event = notifier.subscribe(str(rid))
        delay = 0.02
        try:
            while True:
                try:
                    run = await self.store.get_run(rid)
                except DatabaseUnavailable:
                    # A dropped pooled connection or a restarting server: the polling floor
                    # keeps going until the deadline (pools reconnect on the next checkout).
                    left = None if deadline is None else deadline - loop.time()
                    if left is not None and left <= 0:
                        raise
                    pause = min(delay, self.settings.result_poll_max_seconds)
                    await asyncio.sleep(pause if left is None else min(pause, left))
                    delay *= 2
                    continue
                if run is None:
                    raise RunNotFound(f"no run {rid}")
                if run.is_terminal:
                    break
                wait_for = self.settings.result_poll_max_seconds
                wait_for = min(delay, wait_for)
                if deadline is not None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise ResultTimeout(
                            f"run {rid} is still {run.status.value} after {timeout}s; it goes "
                            "on running, call result() again to keep waiting"
                        )
                    wait_for = min(wait_for, remaining)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), wait_for)
                event.clear()
                delay *= 2
        finally:
            notifier.unsubscribe(str(rid), event)
        if run.status is RunStatus.DONE:
            return run
        raise FlowError.from_dict(run.error or {"code": "RUN_CANCELED", "message": "canceled"})

    async def result(self, run_id: uuid.UUID | str, *, timeout: float | None = None) -> Any:
        """The run's output decoded with its flow's output model (untyped; prefer the handle)."""
        run = await self.wait(run_id, timeout=timeout)
        flow = self.registry.get(run.name, run.version)
        return run.output if flow is None else flow.decode_output(run.output)

    async def reconcile(self) -> ReconcileReport:
        """Run one reconciler sweep now (workers also run it periodically)."""
        if self._reconciler is None:
            raise ConfigInvalid("the engine is not open; use `async with Engine(...)`")
        return await self._reconciler.sweep()

    # -- workers ------------------------------------------------------------------------------

    async def listen(self, *, concurrency: int = 4) -> None:
        """Start an in-process worker in the background; it stops when the engine closes."""
        task = asyncio.create_task(self.run_worker(concurrency=concurrency), name="iterflow-worker")
        self._worker_tasks.append(task)
        await asyncio.sleep(0)

    async def drain(self) -> int:
        """In-memory engines: run every due wake-up (and those it causes) until none is due.

        Returns the number of attempts made.
        """
        memory = self._memory
        if memory is None:
            raise ConfigInvalid("drain() is for Engine.in_memory(); use workers on PostgreSQL")
        attempts = 0
        while (run_id := memory.take_due_wake()) is not None:
            try:
                await self.worker.advance(run_id)
            finally:
                memory.wake_done(run_id)
            attempts += 1
        return attempts

    async def run_worker(self, *, concurrency: int = 4) -> None:
        """Run a procrastinate worker executing wake-ups until cancelled."""
        if concurrency < 1:
            raise ConfigInvalid("concurrency must be at least 1")
        names = sorted({f.name for f in self.registry.all()})
        if requeued := await self.store.requeue_parked(names):  # re-check them on this code
            logger.info("re-checking %d parked run(s) on the flows of this worker", requeued)
        if self._memory is not None:
            while True:  # the in-memory store has its own in-process queue
                await self.drain()
                await asyncio.sleep(0.01)
        if self._listener is not None:
            await self._listener.start()  # cancel notifications must reach running attempts
        await run_procrastinate(
            self.worker,
            self.settings,
            self.database_url,
            reconcile=self.reconcile,
            concurrency=concurrency,
        )


class _Notifier(typing.Protocol):
    def subscribe(self, run_id: str) -> asyncio.Event: ...

    def unsubscribe(self, run_id: str, event: asyncio.Event) -> None: ...


def _check_key(key: str | None) -> None:
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= _MAX_KEY):
        raise InputInvalid(f"idempotency_key must be a string of 1-{_MAX_KEY} characters")


def _run_id(value: uuid.UUID | str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError as exc:
        raise InputInvalid(f"run id {value!r} is not a UUID") from exc
