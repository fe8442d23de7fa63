"""(10) A million runs: the hot paths and the inspection reads against a loaded database.

Two fresh databases on the same server: **empty** (only the measurement's own working set) and
**loaded**, where ``scale_runs`` runs (1,000,000 in the full benchmark, ``--scale-runs N`` to
change it) are written with ``COPY`` first, as the engine leaves them (:data:`MIX`):

* 90 % finished ``done`` with 10 step memos, a ``started`` and a ``completed`` event;
* 9 % ``sleeping`` after 3 steps, due at times spread over the next week (one hour to seven
  days ahead, so none comes due during the measurement): the sleep's ``timers`` row, the
  ``suspended`` event and the queued wake-up job, written by the engine's own wake-up SQL;
* 1 % ``awaiting_signal`` after 3 steps (no timer, no job: only a signal wakes them).

One run in ten carries the tag ``vip``, one in two an idempotency key, one in twenty was started
by one of seven schedules; creation times are spread over the 30 days before the measurement
(``seq`` follows them, as it does in production). Both databases are then ``VACUUM ANALYZE``-d
(what autovacuum does to freshly loaded tables before long) and receive the same working set,
created through the engine (:func:`_working_set`): finished, failed and canceled runs, a parent
with three children, a schedule-started run, runs asleep and runs waiting for a signal.

Every operation is then timed on both databases in alternation (sample by sample, so that a
change of the machine's load weighs on both alike) and reported as the p50 of each side, the
loaded one with the target of issue 16: **within 20 % of the empty database**. Operations: a
run's start, claim and 10 steps (in-process ``worker.advance``); the same through the queue (an
in-process worker: procrastinate's fetch, the claim, the steps, ``handle.result``); a timer
firing (``advance`` of a due sleeping run); a signal's delivery; one reconciler sweep;
``list_runs`` first page with each filter (50 runs, or as many as the side with fewer matching
runs returns, the same on both); ``status``. Next to them: the raw
INSERT+COMMIT time of each database (the limit, measured in the same run), ``EXPLAIN (ANALYZE,
BUFFERS)`` of the main statements on the loaded database (printed, and kept in the JSON), the
size of every table and index per run, and the dead tuples of each table under a sequential
load through a worker with autovacuum at its defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import psycopg
import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.sql.compiler import SQLCompiler

from iterflow import Engine, FlowContext
from iterflow.core.keys import Waiting, WaitKind, cursor_key, waiting_for_signal
from iterflow.core.settings import Settings
from iterflow.core.states import EventType, Started, StepKind, Suspended
from iterflow.runtime.engine import FlowHandle
from iterflow.store import schema as tables
from iterflow.store.outbox import (
    FETCH_JOB_SQL,
    TASK_NAME,
    flow_queue,
    reconcile_task_name,
    retention_task_name,
    schedule_task_name,
    wake_insert_sql,
)
from iterflow.store.queries import Statements
from iterflow.store.urls import libpq_url

from . import limits
from .config import Context
from .report import Section, Target, percentiles

__all__ = ["MIX", "load", "run"]

FLOW = "bench.scale.order"
PARENT = "bench.scale.parent"
SCHEMA = tables.DEFAULT_SCHEMA
#: Share of each status among the loaded runs, in percent.
MIX = {"done": 90, "sleeping": 9, "awaiting_signal": 1}
#: The figure on the loaded database must stay within this factor of the empty one.
TOLERANCE = 1.2
#: Runs written per COPY round (and per generated chunk).
CHUNK = 20_000
PAGE = 50
SCHEDULES = 7
#: Tables whose size and dead tuples are reported (iterflow's, and procrastinate's job queue).
SIZE_TABLES = ("runs", "steps", "events", "timers", "signals")
JOBS_TABLE = "procrastinate_jobs"


class Order(BaseModel):
    """The loaded flow's input: ``steps`` no-op steps, then a sleep, a signal or a failure."""

    steps: int = 10
    nap_until: datetime | None = None
    wait: bool = False
    fail: bool = False


class Go(BaseModel):
    """The ``go`` signal's payload."""

    by: str = "bench"


class Fan(BaseModel):
    """The parent flow's input: how many children it invokes."""

    children: int = 3


async def _noop() -> None:
    return None


def _declined() -> None:
    raise RuntimeError("card declined")


@dataclass(frozen=True)
class Flows:
    """The flows of this section, registered on one engine."""

    order: FlowHandle[Order, int]
    parent: FlowHandle[Fan, int]


def register(engine: Engine) -> Flows:
    """Register the section's flows on ``engine``."""

    @engine.flow(FLOW, input=Order, output=int, signals={"go": Go})
    async def order(ctx: FlowContext, inp: Order) -> int:
        for i in range(inp.steps):
            await ctx.step(f"s{i}", _noop)
        if inp.fail:
            await ctx.step("charge", _declined)
        if inp.nap_until is not None:
            await ctx.sleep(inp.nap_until, label="nap")
        if inp.wait:
            await ctx.signal("go", Go)
        return inp.steps

    @engine.flow(PARENT, input=Fan, output=int)
    async def parent(ctx: FlowContext, inp: Fan) -> int:
        done = await ctx.gather(*(ctx.invoke(order, Order(steps=2)) for _ in range(inp.children)))
        return sum(done)

    return Flows(order=order, parent=parent)


# -- the load (COPY) ---------------------------------------------------------------------------


def _ts(value: datetime) -> str:
    return value.isoformat()


def _json(value: Any) -> str:
    text = json.dumps(value, separators=(",", ":"))
    return text.replace("\\", "\\\\")  # COPY text format: a backslash escapes


def _kind(i: int) -> str:
    """The status of the ``i``-th loaded run (interleaved evenly through time)."""
    r = i % 100
    if r < MIX["awaiting_signal"]:
        return "awaiting_signal"
    if r < MIX["awaiting_signal"] + MIX["sleeping"]:
        return "sleeping"
    return "done"


@dataclass
class _Chunk:
    runs: io.StringIO = field(default_factory=io.StringIO)
    steps: io.StringIO = field(default_factory=io.StringIO)
    events: io.StringIO = field(default_factory=io.StringIO)
    timers: io.StringIO = field(default_factory=io.StringIO)


RUN_COPY = (
    "COPY iterflow.runs (id, name, version, status, input, output, idempotency_key, tags, meta, "
    "claims, stalled_claims, waiting_for, wake_at, created_at, updated_at, started_at, "
    "finished_at, queue) FROM STDIN"
)
STEP_COPY = (
    "COPY iterflow.steps (run_id, position, cursor_key, kind, label, status, output, attempts, "
    "started_at, finished_at) FROM STDIN"
)
EVENT_COPY = "COPY iterflow.events (run_id, type, cursor_key, data, at) FROM STDIN"
TIMER_COPY = "COPY iterflow.timers (run_id, cursor_key, fire_at) FROM STDIN"


def _chunks(n: int, now: datetime, queue: str) -> Iterator[_Chunk]:
    """The COPY text of ``n`` runs (and their rows), ``CHUNK`` runs at a time, oldest first;
    ``queue`` is the flow's wake-up queue (``runs.queue``)."""
    span = timedelta(days=29)
    start = now - timedelta(days=30)
    week = timedelta(days=7) - timedelta(hours=1)
    started_done = _json(Started(version=1).to_data())
    nap = cursor_key(StepKind.SLEEP, "nap")
    sleeping_for = str(Waiting(WaitKind.TIMER, nap))
    signal_for = waiting_for_signal("go")
    signal_key = cursor_key(StepKind.SIGNAL, "go")
    signal_event = _json(Suspended(reason="signal", wake_at=None).to_data())
    done_input = _json(Order(steps=10).model_dump(mode="json", exclude_defaults=True))
    wait_input = _json(Order(steps=3, wait=True).model_dump(mode="json", exclude_defaults=True))
    for first in range(0, n, CHUNK):
        chunk = _Chunk()
        for i in range(first, min(n, first + CHUNK)):
            rid = str(uuid.uuid4())
            created = start + span * (i / n)
            c = _ts(created)
            kind = _kind(i)
            tags = "{bench,vip}" if i % 10 == 0 else "{bench}"
            key = f"order-{i}" if i % 2 == 0 else "\\N"
            meta = _json({"schedule_id": f"nightly-{i % SCHEDULES}"}) if i % 20 == 5 else "{}"
            n_steps = 10 if kind == "done" else 3
            step_at = [_ts(created + timedelta(milliseconds=5 * (p + 1))) for p in range(n_steps)]
            last = step_at[-1]
            for p in range(n_steps):
                chunk.steps.write(
                    f"{rid}\t{p}\ts{p}\tstep\ts{p}\tok\tnull\t1\t{step_at[p]}\t{step_at[p]}\n"
                )
            chunk.events.write(f"{rid}\tstarted\t\\N\t{started_done}\t{c}\n")
            if kind == "done":
                fin = _ts(created + timedelta(milliseconds=5 * (n_steps + 1)))
                chunk.runs.write(
                    f"{rid}\t{FLOW}\t1\tdone\t{done_input}\t10\t{key}\t{tags}\t{meta}\t1\t0\t"
                    f"\\N\t\\N\t{c}\t{fin}\t{c}\t{fin}\t{queue}\n"
                )
                chunk.events.write(f"{rid}\t{EventType.COMPLETED.value}\t\\N\t\\N\t{fin}\n")
            elif kind == "sleeping":
                due = _ts(now + timedelta(hours=1) + week * ((i * 7919 % n) / n))
                inp = _json({"steps": 3, "nap_until": due})
                chunk.runs.write(
                    f"{rid}\t{FLOW}\t1\tsleeping\t{inp}\t\\N\t{key}\t{tags}\t{meta}\t1\t0\t"
                    f"{sleeping_for}\t{due}\t{c}\t{last}\t{c}\t\\N\t{queue}\n"
                )
                ev = _json(Suspended(reason="sleep", wake_at=due).to_data())
                chunk.events.write(f"{rid}\t{EventType.SUSPENDED.value}\t{nap}\t{ev}\t{last}\n")
                chunk.timers.write(f"{rid}\t{nap}\t{due}\n")
            else:
                chunk.runs.write(
                    f"{rid}\t{FLOW}\t1\tawaiting_signal\t{wait_input}\t\\N\t{key}\t{tags}\t"
                    f"{meta}\t1\t0\t{signal_for}\t\\N\t{c}\t{last}\t{c}\t\\N\t{queue}\n"
                )
                chunk.events.write(
                    f"{rid}\t{EventType.SUSPENDED.value}\t{signal_key}\t{signal_event}\t{last}\n"
                )
        yield chunk


def _copy(conn: psycopg.Connection[Any], sql: str, text: io.StringIO) -> None:
    data = text.getvalue()
    if not data:
        return
    with conn.cursor().copy(sql.encode()) as copy:
        copy.write(data)


def load(url: str, n: int, queue: str, now: datetime) -> dict[str, Any]:
    """COPY ``n`` runs in the :data:`MIX` into the database at ``url``; queue the sleeping
    runs' wake-ups with the engine's own SQL; ``VACUUM ANALYZE``. Returns timings."""
    t0 = time.perf_counter()
    with psycopg.connect(libpq_url(url)) as conn:
        for chunk in _chunks(n, now, flow_queue(queue, FLOW, 1)):
            _copy(conn, RUN_COPY, chunk.runs)
            _copy(conn, STEP_COPY, chunk.steps)
            _copy(conn, EVENT_COPY, chunk.events)
            _copy(conn, TIMER_COPY, chunk.timers)
            conn.commit()
        copied = time.perf_counter() - t0
        sleepers = f"iterflow.runs WHERE status = 'sleeping' AND name = '{FLOW}'"
        conn.execute(
            sa_sql(
                wake_insert_sql(sleepers, wake_at="wake_at", priority="priority", queue="queue")
            ),
            {"queue": queue},
        )
        conn.commit()
    jobs = time.perf_counter() - t0 - copied
    vacuum(url)
    return {
        "runs": n,
        "copy_seconds": copied,
        "jobs_seconds": jobs,
        "vacuum_seconds": time.perf_counter() - t0 - copied - jobs,
    }


def sa_sql(text: str) -> bytes:
    """An SQL text with ``:name`` parameters as psycopg's ``%(name)s`` (``::`` casts kept)."""
    return re.sub(r"(?<![:\w]):([a-z_]+)", r"%(\1)s", text.replace("%", "%%")).encode()


def vacuum(url: str) -> None:
    """``VACUUM ANALYZE`` every table of the section (autovacuum's work after a bulk load)."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        for table in (*(f"iterflow.{t}" for t in SIZE_TABLES), JOBS_TABLE):
            conn.execute(f"VACUUM ANALYZE {table}".encode())


# -- the working set (both databases alike) -----------------------------------------------------


@dataclass
class Side:
    """One database of the comparison, its engine and what was created in it."""

    label: str
    url: str
    engine: Engine
    flows: Flows
    ids: dict[str, Any] = field(default_factory=dict)
    sleepers: list[uuid.UUID] = field(default_factory=list)
    waiters: list[uuid.UUID] = field(default_factory=list)


async def _run(side: Side, order: Order, **start: Any) -> uuid.UUID:
    started = await side.flows.order.start(order, **start)
    await side.engine.worker.advance(started.run_id)
    return started.run_id


async def _working_set(side: Side, samples: int) -> None:
    """The runs every measurement reads or acts on, created through the engine."""
    engine = side.engine
    done = [
        await _run(
            side,
            Order(),
            tags=["fixture", "vip"] if i % 5 == 0 else ["fixture"],
            idempotency_key=f"fx-{i}" if i % 3 == 0 else None,
        )
        for i in range(60)
    ]
    failed = [await _run(side, Order(steps=1, fail=True)) for _ in range(3)]
    canceled = []
    for _ in range(3):
        started = await side.flows.order.start(Order(), delay=3600)
        await engine.cancel(started.run_id, reason="bench")
        canceled.append(started.run_id)
    parent = (await side.flows.parent.start(Fan())).run_id
    await engine.worker.advance(parent)
    for child in (await engine.list_runs(parent=parent)).runs:
        await engine.worker.advance(child.id)
    await engine.worker.advance(parent)
    await engine.schedule(side.flows.order, cron="0 3 * * *", id="fx-nightly", input=Order())
    scheduled = (await engine.trigger("fx-nightly")).run_id
    await engine.worker.advance(scheduled)
    nap = datetime.now(UTC) + timedelta(seconds=2)
    side.ids["nap"] = nap
    side.sleepers = [await _run(side, Order(steps=3, nap_until=nap)) for _ in range(samples)]
    side.waiters = [await _run(side, Order(steps=3, wait=True)) for _ in range(samples + 1)]
    side.ids |= {
        "done": done,
        "failed": failed,
        "canceled": canceled,
        "parent": parent,
        "scheduled": scheduled,
        "since": datetime.now(UTC) - timedelta(hours=1),
    }


# -- measurements -------------------------------------------------------------------------------

Op = Callable[[Side, int], Awaitable[object]]


async def _compare(sides: list[Side], op: Op, samples: int) -> dict[str, list[float]]:
    """Time ``op(side, i)`` ``samples`` times on each side, alternating sides and order."""
    out: dict[str, list[float]] = {s.label: [] for s in sides}
    for side in sides:  # warm-up: plans, prepared statements, the pool
        await op(side, -1)
    for i in range(samples):
        for side in sides if i % 2 == 0 else reversed(sides):
            t0 = time.perf_counter()
            await op(side, i)
            out[side.label].append((time.perf_counter() - t0) * 1000)
    return out


def _filters(side: Side) -> dict[str, dict[str, Any]]:
    """``list_runs`` keyword arguments per filter measured (each on its own)."""
    ids = side.ids
    since = ids["since"]
    return {
        "no filter": {},
        "flow": {"name": FLOW},
        "status=done": {"status": "done"},
        "status=awaiting_signal": {"status": "awaiting_signal"},
        "status=failed": {"status": "failed"},
        "status=canceled": {"status": "canceled"},
        "tag=vip": {"tag": "vip"},
        "tag=fixture": {"tag": "fixture"},
        "created in the last hour": {"created_after": since},
        "finished in the last hour": {"finished_after": since},
        "parent": {"parent": ids["parent"]},
        "schedule": {"schedule": "fx-nightly"},
        "idempotency key": {"idempotency_key": "fx-3"},
        "flow + idempotency key (find_run)": {"name": FLOW, "idempotency_key": "fx-3"},
        "id prefix (8 hex digits)": {"id_prefix": ids["done"][7].hex[:8]},
    }


async def _ops(sides: list[Side], samples: int) -> dict[str, dict[str, list[float]]]:
    """Every in-process operation, timed on both sides."""
    timed: dict[str, dict[str, list[float]]] = {}

    async def run10(side: Side, i: int) -> None:
        await _run(side, Order())

    async def timer(side: Side, i: int) -> None:
        await side.engine.worker.advance(side.sleepers[i if i >= 0 else len(side.sleepers) - 1])

    async def signal(side: Side, i: int) -> None:
        await side.engine.signal(side.waiters[i if i >= 0 else -2], "go", {"by": "bench"})

    async def reconcile(side: Side, i: int) -> None:
        await side.engine.reconcile()

    async def status(side: Side, i: int) -> None:
        await side.engine.status(side.ids["done"][i % len(side.ids["done"])])

    timed["start, claim and a 10-step run (in-process)"] = await _compare(sides, run10, samples)
    due = max(side.ids["nap"] for side in sides)  # the sleepers' timers
    await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds() + 0.2))
    timed["timer firing (advance of a due sleeping run)"] = await _compare(
        sides, timer, len(sides[0].sleepers) - 1
    )
    timed["signal delivery (engine.signal)"] = await _compare(
        sides, signal, len(sides[0].waiters) - 2
    )
    timed["reconciler sweep (nothing to repair)"] = await _compare(sides, reconcile, samples)
    timed["status (run, steps, signals, timers, events)"] = await _compare(sides, status, samples)
    for label in _filters(sides[0]):
        # Pages of the same size on both sides: the empty database's working set has fewer
        # matching runs than a page for some filters, and decoding a run costs the same anywhere.
        size = min(
            [
                len((await side.engine.list_runs(limit=PAGE, **_filters(side)[label])).runs)
                for side in sides
            ]
        )

        async def page(side: Side, i: int, label: str = label, size: int = size) -> None:
            await side.engine.list_runs(limit=max(size, 1), **_filters(side)[label])

        print(f"list_runs first page, {label}: {size} runs on each side", flush=True)
        timed[f"list_runs first page, {label}"] = await _compare(sides, page, samples)
    return timed


async def _queued(sides: list[Side], samples: int) -> dict[str, list[float]]:
    """start -> handle.result of a 10-step run through an in-process worker on each side."""
    for side in sides:
        await _drop_immediate_wakes(side)
        await side.engine.listen(concurrency=1)

    async def through(side: Side, i: int) -> None:
        started = await side.flows.order.start(Order())
        await side.flows.order.result(started.run_id, timeout=60)

    return await _compare(sides, through, samples)


async def _drop_immediate_wakes(side: Side) -> None:
    """The in-process measurements ``advance`` runs without the worker that would have taken
    their queued wake-ups: drop those (their runs are finished), so the worker's fetch sees the
    queue a production database has (the sleeping runs' scheduled wake-ups)."""
    finished = ", ".join(f"'{s}'" for s in ("done", "failed", "canceled"))
    async with side.engine.sqlalchemy_engine.begin() as conn:
        await conn.execute(
            sa.text(
                f"DELETE FROM {JOBS_TABLE} AS j WHERE j.status = 'todo' AND EXISTS ("
                f"SELECT 1 FROM {SCHEMA}.runs AS r WHERE r.id::text = j.lock "
                f"AND r.status IN ({finished}))"
            )
        )


#: A burst of due wake-ups (a queue of their own, which no worker here serves) queued beside the
#: sleepers' scheduled ones: what a busy production queue looks like.
BURST = 1_000
BURST_QUEUE = "bench/burst"
BURST_SQL = f"""
    INSERT INTO {JOBS_TABLE} (queue_name, task_name, lock, queueing_lock, args)
    SELECT :queue, :task, r::text, r::text, jsonb_build_object('run_id', r::text)
    FROM (SELECT gen_random_uuid() AS r FROM generate_series(1, :n)) AS s"""
#: procrastinate's own fetch (the worker's before revision 0011), for comparison.
PROCRASTINATE_FETCH = (
    "SELECT id FROM procrastinate_fetch_job_v2(CAST(:queues AS varchar[]), CAST(:worker AS bigint))"
)


async def _burst(
    sides: list[Side], samples: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """One fetch of a due wake-up while :data:`BURST` are due, on each side (the loaded one
    also holds the sleepers' queued wake-ups): the worker's statement (``FETCH_JOB_SQL``, what
    ``PostgresStore.fetch_job`` runs) and, for comparison, procrastinate's own function, both in
    autocommit on the engine's pool (the same overhead around each).
    Statistics are taken with the burst queued, as autovacuum's would be after one."""
    workers: dict[str, int] = {}
    for side in sides:
        async with side.engine.sqlalchemy_engine.begin() as conn:
            params = {"queue": BURST_QUEUE, "task": TASK_NAME, "n": BURST}
            await conn.execute(sa.text(BURST_SQL), params)
            registered = "INSERT INTO procrastinate_workers DEFAULT VALUES RETURNING id"
            workers[side.label] = int((await conn.execute(sa.text(registered))).scalar_one())
        async with side.engine.sqlalchemy_engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await auto.execute(sa.text(f"ANALYZE {JOBS_TABLE}"))

    async def ours(side: Side, i: int) -> None:
        params = {"queues": json.dumps([BURST_QUEUE]), "worker_id": workers[side.label]}
        async with side.engine.sqlalchemy_engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            assert (await auto.execute(sa.text(FETCH_JOB_SQL), params)).first() is not None

    async def theirs(side: Side, i: int) -> None:
        params = {"queues": [BURST_QUEUE], "worker": workers[side.label]}
        async with side.engine.sqlalchemy_engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            assert (await auto.execute(sa.text(PROCRASTINATE_FETCH), params)).scalar() is not None

    timed = await _compare(sides, ours, samples)
    reference = await _compare(sides, theirs, samples)
    for side in sides:
        async with side.engine.sqlalchemy_engine.begin() as conn:
            drop = f"DELETE FROM {JOBS_TABLE} WHERE queue_name = :queue"
            await conn.execute(sa.text(drop), {"queue": BURST_QUEUE})
    return timed, reference


# -- EXPLAIN, sizes, dead tuples ----------------------------------------------------------------


async def _explain(side: Side) -> dict[str, str]:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of the main statements on ``side``, in order inside one
    transaction that is rolled back (the claim's lease is the checkpoint's and the finish's;
    the writes change nothing)."""
    q = Statements(SCHEMA)
    engine = side.engine
    queue = engine.settings.queue_name
    dialect = engine.sqlalchemy_engine.dialect
    pending = (await side.flows.order.start(Order(), delay=3600)).run_id
    waiter = side.waiters[-1]
    done = side.ids["done"][0]
    token = uuid.uuid4()
    plans: dict[str, str] = {}
    recon = {
        "queue": queue,
        "task": TASK_NAME,
        "reconcile_task": reconcile_task_name(SCHEMA),
        "schedule_task": schedule_task_name(SCHEMA),
        "retention_task": retention_task_name(SCHEMA),
        "stale": 60.0,
        "limit": 500,
    }
    statements: list[tuple[str, sa.ClauseElement, dict[str, Any]]] = [
        (
            "claim",
            q.claim,
            {"run_id": pending, "token": token, "owner": "bench", "lease": 20.0, "admitted": True},
        ),
        (
            "checkpoint_fenced (a step's memo, after the claim above)",
            q.checkpoint_fenced,
            {
                "run_id": pending,
                "token": token,
                "position": 0,
                "cursor_key": "s0",
                "kind": "step",
                "label": "s0",
                "status": "ok",
                "output": "null",
                "error": None,
                "attempts": 1,
                "started_at": None,
            },
        ),
        (
            "finish (after the claim above)",
            q.finish,
            {
                "run_id": pending,
                "token": token,
                "status": "done",
                "output": "10",
                "error": None,
                "event_type": "completed",
                "event": None,
                "queue": queue,
            },
        ),
        ("signal_lock", q.signal_lock, {"run_id": waiter, "idem": None}),
        ("recover_expired", q.recover_expired, recon),
        ("rewake", q.rewake, recon),
        ("release_orphans", q.release_orphans, recon),
        ("get_run", q.get_run, {"run_id": done}),
        ("detail_steps", q.detail_steps, {"run_id": done}),
        ("detail_signals", q.detail_signals, {"run_id": done}),
        ("detail_timers", q.detail_timers, {"run_id": done}),
        ("detail_events", q.detail_events, {"run_id": done}),
    ]
    explained = [(label, *_positional(stmt, params, dialect)) for label, stmt, params in statements]
    explained += await _list_statements(side)
    raw = await asyncpg.connect(libpq_url(side.url))
    outer = raw.transaction()
    await outer.start()
    try:
        for label, sql, args in explained:
            try:
                async with raw.transaction():  # a savepoint: a failed statement undoes itself
                    rows = await raw.fetch("EXPLAIN (ANALYZE, BUFFERS, TIMING OFF) " + sql, *args)
                plans[label] = "\n".join(r[0] for r in rows)
            except asyncpg.PostgresError as exc:
                plans[label] = f"(not explained: {exc})"
    finally:
        await outer.rollback()
        await raw.close()
    return plans


def _positional(
    stmt: sa.ClauseElement, params: dict[str, Any], dialect: sa.Dialect
) -> tuple[str, list[Any]]:
    """``stmt`` as asyncpg runs it: its ``$n`` text and its values in order. A parameter this
    section does not know (a newer statement's) is bound as NULL."""
    compiled = stmt.compile(dialect=dialect)
    assert isinstance(compiled, SQLCompiler)
    values = {**compiled.params, **params}
    args = []
    for name in compiled.positiontup or ():
        processor = compiled._bind_processors.get(name)  # typed columns' conversions
        value = values.get(name)
        args.append(processor(value) if callable(processor) else value)
    return compiled.string, args


async def _list_statements(side: Side) -> list[tuple[str, str, list[Any]]]:
    """The statement (and values) ``list_runs`` sends for each filter's first page, captured
    from the engine's own call."""
    sent: list[tuple[str, list[Any]]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
        sent.append((statement, list(parameters or ())))

    sync = side.engine.sqlalchemy_engine.sync_engine
    sa.event.listen(sync, "before_cursor_execute", capture)
    out: list[tuple[str, str, list[Any]]] = []
    try:
        for label, kwargs in _filters(side).items():
            sent.clear()
            await side.engine.list_runs(limit=PAGE, **kwargs)
            sql, args = next(s for s in reversed(sent) if "ORDER BY" in s[0])
            out.append((f"list_runs, {label}", sql, args))
    finally:
        sa.event.remove(sync, "before_cursor_execute", capture)
    return out


SIZES_SQL = """
SELECT c.relname, pg_relation_size(c.oid) AS heap,
       coalesce(pg_relation_size(c.reltoastrelid), 0) AS toast,
       pg_indexes_size(c.oid) AS indexes,
       (SELECT json_object_agg(i.relname, pg_relation_size(i.oid))
        FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
        WHERE x.indrelid = c.oid) AS per_index
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND ((n.nspname = 'iterflow' AND c.relname = ANY(%s))
                           OR c.relname = %s)
ORDER BY c.relname"""


def sizes(url: str) -> dict[str, dict[str, Any]]:
    """Heap, TOAST and index bytes of each table of the section (and each index)."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        rows = conn.execute(SIZES_SQL.encode(), (list(SIZE_TABLES), JOBS_TABLE)).fetchall()
    return {
        r[0]: {"heap": r[1], "toast": r[2], "indexes": r[3], "per_index": r[4] or {}} for r in rows
    }


DEAD_SQL = """
SELECT relname, n_live_tup, n_dead_tup, autovacuum_count, autoanalyze_count,
       current_setting('autovacuum_vacuum_threshold')::float
         + current_setting('autovacuum_vacuum_scale_factor')::float * n_live_tup AS trigger
FROM pg_stat_user_tables
WHERE (schemaname = 'iterflow' AND relname = ANY(%s)) OR relname = %s"""


def dead_tuples(url: str) -> dict[str, dict[str, float]]:
    """Live and dead tuples per table, autovacuum runs so far, and autovacuum's trigger."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        rows = conn.execute(DEAD_SQL.encode(), (list(SIZE_TABLES), JOBS_TABLE)).fetchall()
    return {
        r[0]: {"live": r[1], "dead": r[2], "autovacuums": r[3], "trigger": float(r[5])}
        for r in rows
    }


async def _dead_under_load(side: Side, seconds: float) -> dict[str, Any]:
    """A sequential start -> result loop through the side's worker for ``seconds``, sampling
    dead tuples every few seconds (autovacuum at the server's defaults)."""
    before = await asyncio.to_thread(dead_tuples, side.url)
    samples: list[dict[str, dict[str, float]]] = []
    runs = 0
    t0 = time.monotonic()
    next_sample = t0
    while time.monotonic() - t0 < seconds:
        started = await side.flows.order.start(Order())
        await side.flows.order.result(started.run_id, timeout=60)
        runs += 1
        if time.monotonic() >= next_sample:
            samples.append(await asyncio.to_thread(dead_tuples, side.url))
            next_sample += max(1.0, seconds / 30)
    await asyncio.sleep(1.5)  # statistics are flushed at most once a second
    samples.append(await asyncio.to_thread(dead_tuples, side.url))
    elapsed = time.monotonic() - t0
    out: dict[str, Any] = {"runs": runs, "seconds": elapsed, "tables": {}}
    for table in before:
        out["tables"][table] = {
            "max_dead": max(s[table]["dead"] for s in samples),
            "end_dead": samples[-1][table]["dead"],
            "trigger": samples[-1][table]["trigger"],
            "live": samples[-1][table]["live"],
            "autovacuums": samples[-1][table]["autovacuums"] - before[table]["autovacuums"],
        }
    return out


# -- the section --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _side(label: str, url: str) -> Any:
    engine = Engine(url, pool_size=4)
    flows = register(engine)
    async with engine:
        yield Side(label=label, url=url, engine=engine, flows=flows)


def _mb(size: float) -> float:
    return round(size / 1_048_576, 1)


async def run(ctx: Context) -> Section:
    """Load, then time every operation on the empty and the loaded database in alternation."""
    n = ctx.sizes.scale_runs
    samples = ctx.sizes.scale_samples
    section = Section("scale", f"10. A million runs: {n:,} runs loaded vs an empty database")
    now = datetime.now(UTC)
    with (
        ctx.server.database("scale_empty") as empty_url,
        ctx.server.database("scale_loaded") as loaded_url,
    ):
        queue = Settings().queue_name
        loaded = await asyncio.to_thread(load, loaded_url, n, queue, now)
        await asyncio.to_thread(vacuum, empty_url)
        rates = {
            "empty": await limits.measure(empty_url, ctx.sizes.insert_rows, 0, concurrent=False),
            "loaded": await limits.measure(loaded_url, ctx.sizes.insert_rows, 0, concurrent=False),
        }
        async with _side("empty", empty_url) as empty, _side("loaded", loaded_url) as full:
            sides = [empty, full]
            for side in sides:
                await _working_set(side, samples)
            timed = await _ops(sides, samples)
            fetch, reference = await _burst(sides, samples)
            timed[f"the worker's fetch of a wake-up, {BURST:,} due at once"] = fetch
            plans = await _explain(full)
            timed[
                "start -> result of a 10-step run through a worker (queue, claim, steps)"
            ] = await _queued(sides, samples)
            table_sizes = await asyncio.to_thread(sizes, loaded_url)
            dead = await _dead_under_load(full, ctx.sizes.scale_vacuum_seconds)
    _report(section, n, loaded, rates, timed, plans, table_sizes, dead)
    for side, label in (("empty", "empty"), ("loaded", f"{n:,} runs")):
        section.add(
            f"procrastinate's own fetch, the same burst (before revision 0011): {label}, p50",
            statistics.median(reference[side]),
            "ms",
            note="for comparison: it walks every queued job in (priority, id) order",
        )
    for label, plan in plans.items():
        print(f"\n-- EXPLAIN (ANALYZE, BUFFERS), {n:,} runs: {label}\n{plan}", flush=True)
    return section


def _report(
    section: Section,
    n: int,
    loaded: dict[str, Any],
    rates: dict[str, dict[str, float]],
    timed: dict[str, dict[str, list[float]]],
    plans: dict[str, str],
    table_sizes: dict[str, dict[str, Any]],
    dead: dict[str, Any],
) -> None:
    section.add(
        "runs loaded with COPY",
        n,
        "runs",
        note=f"{loaded['copy_seconds']:.0f} s COPY, {loaded['jobs_seconds']:.0f} s wake-up jobs, "
        f"{loaded['vacuum_seconds']:.0f} s VACUUM ANALYZE; "
        + ", ".join(f"{k} {v} %" for k, v in MIX.items()),
    )
    for side in ("empty", "loaded"):
        rate = rates[side]["raw_asyncpg_seq"]
        section.add(
            f"the limit: INSERT+COMMIT, raw asyncpg, {side} database",
            1000 / rate,
            "ms",
            note=f"{rate:,.0f}/s, same server, same run",
        )
    for label, by_side in timed.items():
        base = statistics.median(by_side["empty"])
        full = percentiles(by_side["loaded"])
        section.add(f"{label}: empty, p50", base, "ms", note=f"{len(by_side['empty'])} samples")
        section.add(
            f"{label}: {n:,} runs, p50",
            full["p50"],
            "ms",
            Target("<=", base * TOLERANCE, "<= empty + 20 %"),
            note=f"p95 {full['p95']:.2f} ms",
        )
    total = 0
    for table, s in table_sizes.items():
        bytes_ = s["heap"] + s["toast"] + s["indexes"]
        total += bytes_
        section.add(
            f"size: {table} (heap + TOAST + indexes)",
            _mb(bytes_),
            "MB",
            note=f"heap {_mb(s['heap'])}, toast {_mb(s['toast'])}, indexes {_mb(s['indexes'])}; "
            + ", ".join(f"{k} {_mb(v)}" for k, v in sorted(s["per_index"].items())),
        )
    section.add("size per run, all tables", total / max(n, 1), "bytes", note=f"{_mb(total)} MB")
    section.add(
        "sequential load through a worker, for dead tuples",
        dead["runs"] / dead["seconds"],
        "runs/s",
        note=f"{dead['runs']} 10-step runs in {dead['seconds']:.0f} s",
    )
    for table, d in dead["tables"].items():
        section.add(
            f"dead tuples under load: {table}, max",
            d["max_dead"],
            "rows",
            Target("<=", max(2 * d["trigger"], 1), "<= 2x autovacuum's trigger"),
            note=f"at the end {d['end_dead']:,}; trigger {d['trigger']:,.0f} "
            f"({d['live']:,} live); {d['autovacuums']} autovacuum(s) during the load",
        )
    section.raw = {
        "runs": n,
        "load": loaded,
        "limits": rates,
        "samples_ms": timed,
        "plans": plans,
        "sizes": table_sizes,
        "dead_tuples": dead,
    }
