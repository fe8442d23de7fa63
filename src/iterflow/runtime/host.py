"""The procrastinate host: the wake-up task, the periodic reconciler, and the worker loop.

The only runtime module that imports procrastinate. One task, ``iterflow.advance(run_id)``, run
by procrastinate workers; procrastinate's own retry is never used for it (the engine owns
retries and timers), its fetch is iterflow's statement with procrastinate's rules, on the
store's asyncpg hot path instead of its psycopg connector, and its ``finish_job`` is skipped
when the attempt's last write ended the job itself (:func:`_settling_jobs`). The reconciler is
a periodic task deduplicated across workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import select
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any

from iterflow.core.errors import FlowError
from iterflow.core.settings import Settings
from iterflow.runtime.worker import SETTLED, Worker
from iterflow.store.outbox import (
    TASK_NAME,
    reconcile_task_name,
    retention_task_name,
    schedule_task_name,
)
from iterflow.store.urls import libpq_url

__all__ = ["SCHEDULE_SWEEP_SECONDS", "reconcile_cron", "run_procrastinate", "stale_worker_seconds"]

#: The schedule sweep's period: ticks start within about a second of their time.
SCHEDULE_SWEEP_SECONDS = 1

#: The fetch of one due job for a procrastinate worker id: the job's row, or None.
FetchJob = Callable[[Sequence[str] | None, int], Awaitable[Mapping[str, Any] | None]]

logger = logging.getLogger(__name__)


async def run_procrastinate(
    worker: Worker,
    settings: Settings,
    database_url: str,
    *,
    reconcile: Callable[[], Awaitable[object]],
    sweep_schedules: Callable[[], Awaitable[object]] | None = None,
    sweep_retention: Callable[[], Awaitable[object]] | None = None,
    concurrency: int,
    queues: Callable[[], Sequence[str]],
    rerouted: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    fetch_job: FetchJob | None = None,
) -> None:
    """Run procrastinate's worker on this engine's queue and ``queues()`` (those of the flow
    versions this worker serves, ``iterflow.store.outbox.flow_queue``) until cancelled or until
    ``stop`` is set (both stop it gracefully).

    When ``rerouted`` is set (a flow version was registered since), ``queues()`` is read again;
    if it changed, a worker on the new list starts and the previous one stops as on shutdown
    (it finishes its running attempts, those still running after 5 s are cancelled and
    recovered from their leases).

    Only cancellation or ``stop`` ends it. procrastinate's worker loop stops (or raises) when
    its fetch or LISTEN connection loses the database, e.g. during a PostgreSQL restart
    (procrastinate issue #1116); runs are safe in PostgreSQL, so the loop is started again with
    backoff.

    ``stop`` is what an engine's close sets before cancelling: a cancellation can be lost in a
    library's startup (a ``wait_for`` cancelled as what it waits for completes, Python 3.11),
    the event cannot.

    ``fetch_job`` (the Postgres store's :meth:`~iterflow.store.postgres.PostgresStore.fetch_job`)
    replaces the fetch of procrastinate's psycopg connector: procrastinate's rules in iterflow's
    statement, which never reads past sleeping runs' queued wake-ups, on the store's asyncpg hot
    path, without psycopg's pool checkout, explicit transaction and cursor (a quarter of a
    worker's CPU under load; docs/performance.md section 5, fixes 9 and 11).
    """
    options: dict[str, Any] = {
        "concurrency": concurrency,
        "wait": True,
        "fetch_job_polling_interval": settings.worker_poll_interval,
        "install_signal_handlers": False,
        # every job ends deleted, whatever its end: an attempt cancelled by a shutdown
        # (``aborted``) or a task that raised (``failed``) would otherwise stay in procrastinate's
        # table for good, a row per deploy that cut an attempt short; the runs are iterflow's to
        # recover (leases, the reconciler), and procrastinate still logs each job's outcome
        "delete_jobs": "always",
        "shutdown_graceful_timeout": 5.0,
        "update_heartbeat_interval": _heartbeat_seconds(settings),
    }
    stop = stop or asyncio.Event()
    failures = 0
    while not stop.is_set():
        started = time.monotonic()
        app = _procrastinate_app(
            worker,
            settings,
            database_url,
            reconcile,
            sweep_schedules,
            sweep_retention,
            fetch_job,
        )
        # The pool is ours to open and close: procrastinate leaves the one it opens itself
        # behind when its opening is interrupted (the engine closed as its worker started),
        # and psycopg_pool's tasks, still connecting, swallow the cancellation at the event
        # loop's shutdown, which then waits for them for good.
        pool = _pool(
            conninfo=libpq_url(database_url), min_size=1, max_size=concurrency + 2, open=False
        )
        try:
            try:
                await pool.open(wait=True)
                async with app.open_async(pool=pool):
                    await _serve(
                        lambda: [settings.queue_name, *queues()],
                        rerouted or asyncio.Event(),
                        stop,
                        app.run_worker_async,
                        options,
                    )
            finally:
                await asyncio.shield(pool.close())
            if stop.is_set():
                return
            reason = "it stopped on its own"
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
        if time.monotonic() - started > 60:
            failures = 0
        failures += 1
        delay = min(30.0, 0.5 * 2 ** min(failures - 1, 6)) * (0.5 + random.random() / 2)
        logger.warning("procrastinate worker stopped (%s); restarting it in %.1fs", reason, delay)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()


async def _serve(
    queues: Callable[[], list[str]],
    rerouted: asyncio.Event,
    stop: asyncio.Event,
    run_worker: Callable[..., Coroutine[Any, Any, None]],
    options: dict[str, Any],
) -> None:
    """Run ``run_worker(queues=queues(), **options)``, replaced by one on the new queues each
    time ``rerouted`` is set and ``queues()`` changed; return (or raise) when it stops on its
    own, and stop it (as on cancellation) when ``stop`` is set."""
    current = queues()
    task = asyncio.create_task(run_worker(queues=current, **options))
    retiring: set[asyncio.Task[None]] = set()
    waiter = asyncio.ensure_future(rerouted.wait())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while True:
            await asyncio.wait({task, waiter, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping.done():
                return  # finally: stopped as on cancellation
            if task.done():
                task.result()  # raises what stopped it
                return
            rerouted.clear()
            waiter = asyncio.ensure_future(rerouted.wait())
            if (fresh := queues()) == current:
                continue
            logger.info("flow versions registered: worker now on queues %s", ", ".join(fresh))
            task.cancel()  # procrastinate stops it gracefully (see run_procrastinate)
            retiring.add(task)
            task.add_done_callback(functools.partial(_retired, retiring))
            current = fresh
            task = asyncio.create_task(run_worker(queues=current, **options))
    finally:  # the replaced ones are stopping already: cancelling again would cut it short
        waiter.cancel()
        stopping.cancel()
        task.cancel()
        await _stopped(
            {waiter, stopping, task, *retiring}, options["shutdown_graceful_timeout"] + 5.0
        )


async def _stopped(tasks: set[asyncio.Task[Any] | asyncio.Future[Any]], patience: float) -> None:
    """Wait for cancelled ``tasks`` to end. One still running after ``patience`` seconds
    (a procrastinate worker cancelled while it was starting can miss that cancellation) is
    cancelled again, so stopping an engine never hangs on it."""
    _, stuck = await asyncio.wait(tasks, timeout=patience)
    if stuck:
        logger.warning("a procrastinate worker ignored its stop for %.0fs; cancelling it", patience)
        for task in stuck:
            task.cancel()
        await asyncio.wait(stuck, timeout=patience)
    for task in tasks:  # retrieve what they raised (logged where it matters: _retired)
        if task.done() and not task.cancelled():
            task.exception()


def _retired(retiring: set[asyncio.Task[None]], task: asyncio.Task[None]) -> None:
    retiring.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.warning("the replaced procrastinate worker stopped: %s: %s", type(exc).__name__, exc)


def reconcile_cron(every_seconds: int) -> str:
    """The procrastinate cron of the periodic reconciler: a sweep every ``every_seconds``.

    procrastinate hands the string to ``croniter.croniter(cron)`` (``PeriodicTask.croniter``)
    without ``second_at_beginning``, so a sixth field is croniter's ``SECOND_FIELD`` and comes
    **last**: ``minute hour day month weekday second``. (``*/5 * * * * *`` would mean every
    second of every fifth minute.) The ticks are the seconds ``0, n, 2n, ... <= 59`` of every
    minute; when ``n`` does not divide 60 the gap across the minute boundary (``60 - kn``) is
    shorter than ``n``, so no two consecutive sweeps are ever more than ``n`` seconds apart (e.g.
    ``n = 7``: ``:00 :07 ... :56``, then ``:00`` again 4 s later).
    """
    if not 1 <= every_seconds <= 59:
        raise ValueError(f"every_seconds must be within 1..59, got {every_seconds}")
    return f"* * * * * */{every_seconds}"


def _procrastinate_app(
    worker: Worker,
    settings: Settings,
    database_url: str,
    reconcile: Callable[[], Awaitable[object]],
    sweep_schedules: Callable[[], Awaitable[object]] | None = None,
    sweep_retention: Callable[[], Awaitable[object]] | None = None,
    fetch_job: FetchJob | None = None,
) -> Any:
    """The procrastinate app: the wake-up task, the periodic reconciler, the periodic
    schedule sweep and, with ``Settings.retention``, the periodic retention sweep (no retry
    strategy: the engine owns retries and timers)."""
    import procrastinate

    app = procrastinate.App(  # run_procrastinate opens it on a pool of its own (_pool)
        connector=procrastinate.PsycopgConnector(conninfo=libpq_url(database_url))
    )
    settled: set[int] = set()
    app.job_manager = _settling_jobs(app.connector, settled, fetch_job)

    @app.task(name=TASK_NAME, queue=settings.queue_name, pass_context=True)
    async def advance(context: Any, run_id: str) -> None:
        job_id: int | None = context.job.id
        try:
            outcome = await worker.advance(uuid.UUID(run_id), job_id=job_id)
        except FlowError as exc:
            logger.error("attempt on run %s failed: %s", run_id, exc)
            return
        if outcome in SETTLED and job_id is not None:
            settled.add(job_id)  # deleted by the attempt's last write: no finish_job

    @app.periodic(
        cron=reconcile_cron(settings.reconcile_every_seconds), periodic_id=settings.queue_name
    )
    @app.task(
        name=reconcile_task_name(settings.db_schema),
        queue=settings.queue_name,
        queueing_lock=reconcile_task_name(settings.db_schema),
        pass_context=False,
    )
    async def reconcile_task(timestamp: int) -> None:
        try:
            await reconcile()
        except FlowError as exc:
            logger.warning("reconciler sweep failed: %s", exc)

    if sweep_schedules is not None:
        sweep = sweep_schedules
        name = schedule_task_name(settings.db_schema)

        @app.periodic(cron=reconcile_cron(SCHEDULE_SWEEP_SECONDS), periodic_id=settings.queue_name)
        @app.task(name=name, queue=settings.queue_name, queueing_lock=name, pass_context=False)
        async def schedule_task(timestamp: int) -> None:
            try:
                await sweep()
            except FlowError as exc:
                logger.warning("schedule sweep failed: %s", exc)

    if sweep_retention is not None and settings.retention is not None:
        purge = sweep_retention
        retention = retention_task_name(settings.db_schema)

        # Like the reconciler: deduplicated across workers by the periodic defer and the
        # queueing lock; a run left ``doing`` by a dead worker is released by the reconciler.
        @app.periodic(
            cron=reconcile_cron(settings.retention.every_seconds), periodic_id=settings.queue_name
        )
        @app.task(
            name=retention, queue=settings.queue_name, queueing_lock=retention, pass_context=False
        )
        async def retention_task(timestamp: int) -> None:
            try:
                await purge()
            except FlowError as exc:
                logger.warning("retention sweep failed: %s", exc)

    return app


def _settling_jobs(connector: Any, settled: set[int], fetch_job: FetchJob | None = None) -> Any:
    """procrastinate's job manager, except for the wake-ups an attempt ended itself, and with
    ``fetch_job`` (when given) as its fetch.

    An attempt's last write (finish, suspend, park) deletes the job it runs in the same
    transaction (``Lease.job_id``, ``store/outbox.py``'s ``end_own_wake_sql``): one commit and
    one round trip less per attempt, and the job can never be left ``doing`` for a run that has
    moved on. procrastinate's own ``finish_job`` is then skipped for a job in ``settled``; for
    an attempt whose end is not known to have committed (storage lost mid-write), it runs, and
    "not found" means the attempt's write had deleted the job after all.
    """
    from procrastinate import exceptions, jobs, manager

    class SettlingJobManager(manager.JobManager):
        async def fetch_job(self, queues: Any, worker_id: int) -> Any:
            if fetch_job is None:
                return await super().fetch_job(queues=queues, worker_id=worker_id)
            row = await fetch_job(None if queues is None else list(queues), worker_id)
            return None if row is None else jobs.Job.from_row(dict(row))

        async def finish_job(self, job: Any, status: Any, delete_job: bool) -> None:
            if job.id in settled:
                settled.discard(job.id)
                return
            try:
                await super().finish_job(job=job, status=status, delete_job=delete_job)
            except exceptions.ConnectorException as exc:
                if "Job was not found" not in str(exc.__cause__ or exc):
                    raise

    return SettlingJobManager(connector=connector)


def _pool(**options: Any) -> Any:
    """procrastinate's psycopg pool, its checkout check replaced by :func:`_check_idle`, its
    connections in autocommit.

    Every query procrastinate runs on the pool is one statement (a function call) in its own
    transaction, committed when the connection goes back; psycopg wraps it in ``BEGIN`` ...
    ``COMMIT``. A worker frozen between its statement and its ``COMMIT`` (SIGSTOP, a VM stall,
    a long GC pause) kept that transaction open, and its locks with it: the unique entry of
    the periodic defer it had just made, on which the same defer of every other worker then
    waited. No worker deferred the reconciler any more, so nothing recovered the frozen
    worker's runs (tests/e2e/test_split_brain.py, 1 run in about 10 under load). In
    autocommit each statement commits as it ends: a frozen client holds no lock, and two round
    trips per query are gone.
    """
    import psycopg_pool

    return psycopg_pool.AsyncConnectionPool(
        **{**options, "check": _check_idle, "configure": _autocommit}
    )


async def _autocommit(conn: Any) -> None:
    """Put a new connection of procrastinate's pool in autocommit (see :func:`_pool`); set
    here rather than as a connection argument, which procrastinate's LISTEN connection (made
    from the same arguments, already in autocommit) would get twice."""
    await conn.set_autocommit(True)


async def _check_idle(conn: Any) -> None:
    """Checkout check of procrastinate's pool without a round trip per checkout.

    procrastinate installs psycopg_pool's ``check_connection`` (an empty query, a round trip
    per checkout: two per wake-up, the largest item of its fetch and finish under load). A
    connection waiting in the pool has nothing to read; one the server closed (a restart,
    ``idle_session_timeout``, a terminated backend) has its socket readable (EOF or the
    server's error message). Only then, or when it is already closed, run the full check,
    which raises and makes the pool replace the connection, as before.
    """
    import psycopg_pool

    if conn.closed or _readable(conn.pgconn.socket):
        await psycopg_pool.AsyncConnectionPool.check_connection(conn)


def _readable(fd: int) -> bool:
    """Whether ``fd`` has something to read now (``poll``: no ``FD_SETSIZE`` limit)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _heartbeat_seconds(settings: Settings) -> float:
    """procrastinate's worker heartbeat period: half a lease, at most its 10 s default."""
    return min(10.0, max(0.5, settings.lease_seconds / 2))


def stale_worker_seconds(settings: Settings) -> float:
    """A worker silent this long is dead: the reconciler releases its ``doing`` wake-ups.

    An attempt that ends with a write deletes its job in that write (:func:`_settling_jobs`),
    but one that ends without one (its run was already terminal, canceled elsewhere, or its
    lease lost) leaves the job to procrastinate's ``finish_job``: a worker killed just before
    that leaves the job ``doing``, holding the run's job lock, so the run's next wake-up cannot
    be fetched; the lease does not help (the run is not ``running`` under it). Tying this to the
    lease bounds that stall like a lease expiry instead of procrastinate's fixed 30 s.
    """
    return max(settings.lease_seconds, 3 * _heartbeat_seconds(settings))
