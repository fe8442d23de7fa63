"""(2) Sequential steps per second and (3) transactions and rows per step.

Two drivers, one run at a time, flows of 1, 10 and 100 no-op steps:

* **in-process**: ``start`` then ``await engine.worker.advance(run_id)`` directly: the attempt
  claims, replays, checkpoints each step and finishes, with no queue in between. This isolates
  the per-step cost.
* **end to end**: a real ``flowctl worker`` process; the client starts a run and waits for
  ``handle.result`` before starting the next.

Every repetition runs in a fresh database between two settled statistics snapshots, so the
transaction, row, WAL and fsync counts belong to that workload alone.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import asyncpg

from iterflow import Engine
from iterflow.core.decisions import AttemptOutcome
from iterflow.core.models import StepKind, StepRecord, StepStatus
from iterflow.store.urls import libpq_url

from .config import Context
from .flows import Stamps, Steps, register
from .limits import INSERT_SQL, SCRATCH_DDL
from .limits import measure as measure_limits
from .measure import Measured, count_rows, measured
from .report import Section, Target, spread
from .stats import DbDelta, PgCpu, StatementCounter, store_statements
from .workers import WorkerProcess

__all__ = ["run", "wait_worker_ready"]

WARMUP_RUNS = 3


async def wait_worker_ready(engine: Engine, workers: list[WorkerProcess], timeout: float) -> None:
    """Wait until every worker process has registered with procrastinate."""
    deadline = time.perf_counter() + timeout
    while await count_rows(engine, "SELECT count(*) FROM procrastinate_workers") < len(workers):
        for w in workers:
            if not w.alive():
                raise RuntimeError(f"worker {w.pid} exited:\n{w.tail()}")
        if time.perf_counter() > deadline:
            raise TimeoutError("workers did not register with procrastinate")
        await asyncio.sleep(0.05)


async def _in_process(url: str, n: int, runs: int, extra: dict[str, Any]) -> float:
    engine = Engine(url)
    flows = register(engine)
    async with engine:
        with StatementCounter(engine.sqlalchemy_engine, engine.store) as counter:
            for _ in range(WARMUP_RUNS):
                started = await flows.steps.start(Steps(n=n))
                await engine.worker.advance(started.run_id)
            outcomes: list[AttemptOutcome] = []
            cpu = time.process_time()
            t0 = time.perf_counter()
            for _ in range(runs):
                started = await flows.steps.start(Steps(n=n))
                outcomes.append(await engine.worker.advance(started.run_id))
            seconds = time.perf_counter() - t0
            extra["cpu_timed"] = time.process_time() - cpu
        if set(outcomes) != {AttemptOutcome.DONE}:
            raise RuntimeError(f"in-process runs did not all finish: {set(outcomes)}")
        extra["statements"] = dict(counter.counts)
        extra["runs_total"] = runs + WARMUP_RUNS
        extra["attempts"] = counter.counts["claim"]
    return seconds


async def _end_to_end(
    url: str, n: int, runs: int, ctx: Context, extra: dict[str, Any], *, idle: float = 0.0
) -> float:
    """``runs`` sequential runs through a worker process; with ``idle`` > 0, no runs at all:
    the worker just idles that long (the baseline of background transactions)."""
    worker = WorkerProcess(
        url, ctx.log_dir, name=f"e2e-{n}", concurrency=ctx.sizes.worker_concurrency
    ).start()
    try:
        engine = Engine(url, pool_size=2)
        flows = register(engine)
        async with engine:
            await wait_worker_ready(engine, [worker], 60)
            if idle > 0:
                await asyncio.sleep(idle)
                return idle
            started = await flows.steps.start(Steps(n=n))  # warm-up
            await flows.steps.result(started.run_id, timeout=60)
            worker_cpu = worker.cpu_seconds()
            cpu = time.process_time()
            t0 = time.perf_counter()
            for _ in range(runs):
                started = await flows.steps.start(Steps(n=n))
                await flows.steps.result(started.run_id, timeout=60)
            seconds = time.perf_counter() - t0
            extra["cpu_timed"] = time.process_time() - cpu
            extra["worker_cpu_timed"] = worker.cpu_seconds() - worker_cpu
            extra["runs_total"] = runs + 1
            return seconds
    finally:
        worker.stop()


async def _decompose(url: str, rows: int, rounds: int) -> dict[str, float]:
    """Milliseconds per checkpoint-sized write, layer by layer (sequential, one connection).

    The checkpoint measured is the steady-state one (``checkpoint_fenced``: every checkpoint of
    an attempt but its first, which also renews the lease). The variants run interleaved in
    ``rounds`` short rounds and each keeps its best round: the intrinsic cost, with other load
    on the machine filtered out as far as possible.
    """
    engine = Engine(url)
    flows = register(engine)
    best: dict[str, float] = {}
    conn = await asyncpg.connect(libpq_url(url))
    try:
        await conn.execute(SCRATCH_DDL)
        async with engine:
            store: Any = engine.store
            started = await flows.steps.start(Steps(n=0))
            claim = await store.claim(started.run_id, "bench", 3600.0)
            assert claim is not None
            checkpoint_sql = store_statements(store)["checkpoint_fenced"]
            compiled = checkpoint_sql.compile(dialect=engine.sqlalchemy_engine.dialect)
            prepared = await conn.prepare(compiled.string)
            order = list(compiled.positiontup or ())
            position = 0

            def params() -> list[Any]:
                values = {
                    "run_id": started.run_id,
                    "token": claim.lease.token,
                    "position": position,
                    "cursor_key": f"s{position}",
                    "kind": "step",
                    "label": f"s{position}",
                    "status": "ok",
                    "output": "null",
                    "error": None,
                    "attempts": 1,
                    "started_at": None,
                }
                return [values[k] for k in order]

            def record() -> StepRecord:
                return StepRecord(
                    position=position,
                    cursor_key=f"s{position}",
                    kind=StepKind.STEP,
                    label=f"s{position}",
                    status=StepStatus.OK,
                    output=None,
                    error=None,
                    attempts=1,
                    started_at=None,
                )

            async def insert_raw() -> None:
                await conn.execute(INSERT_SQL, started.run_id, "{}")

            memo_sql = await conn.prepare(
                f"INSERT INTO {store.schema}.steps (run_id, position, cursor_key, kind, label, "
                "status, output, error, attempts, started_at, finished_at) VALUES ($1, $2, $3, "
                "'step', $3, 'ok', CAST($4 AS jsonb), NULL, 1, NULL, now())"
            )

            async def memo_row_raw() -> None:
                await memo_sql.fetch(started.run_id, position, f"s{position}", "null")

            async def checkpoint_sql_raw() -> None:
                await prepared.fetch(*params())

            async def checkpoint_store() -> None:
                await store.checkpoint(claim.lease, record(), renew=False)

            variants = {
                "insert_raw": insert_raw,
                "memo_row_raw": memo_row_raw,
                "checkpoint_sql_raw": checkpoint_sql_raw,
                "checkpoint_store": checkpoint_store,
            }
            per_round = max(rows // rounds, 20)
            step_runs = max(per_round // 100, 1)
            for round_ in range(rounds + 1):  # round 0 warms up and is not kept
                for label, op in variants.items():
                    t0 = time.perf_counter()
                    for _ in range(per_round):
                        position += 1
                        await op()
                    ms = (time.perf_counter() - t0) / per_round * 1000
                    if round_:
                        best[label] = min(best.get(label, ms), ms)
                t0 = time.perf_counter()
                for _ in range(step_runs):
                    run = await flows.steps.start(Steps(n=100))
                    await engine.worker.advance(run.run_id)
                ms = (time.perf_counter() - t0) / (step_runs * 100) * 1000
                if round_:
                    best["ctx_step"] = min(best.get("ctx_step", ms), ms)
    finally:
        await conn.close()
    return best


async def _replay_attempts(url: str, runs: int) -> dict[str, Any]:
    """Runs that suspend at a signal and resume: two attempts each, the second replaying.

    Statements are counted on the worker's engine only (the client's ``start``/``signal`` go
    through another engine), so the count is what attempts cost.
    """
    client, worker = Engine(url, pool_size=2), Engine(url, pool_size=2)
    flows, _ = register(client), register(worker)
    async with client, worker:
        with StatementCounter(worker.sqlalchemy_engine, worker.store) as counter:
            for _ in range(runs):
                started = await flows.latency.start(Stamps(first=0, resumed=0))
                first = await worker.worker.advance(started.run_id)
                await client.signal(started.run_id, "go", {"sent_at": 0})
                second = await worker.worker.advance(started.run_id)
                if (first, second) != (AttemptOutcome.SUSPENDED, AttemptOutcome.DONE):
                    raise RuntimeError(f"unexpected attempt outcomes {first}, {second}")
    return dict(counter.counts)


def _per_run(delta: DbDelta, runs: int) -> dict[str, float]:
    return {
        "write_xacts": delta.write_xacts / runs,
        "read_only_xacts": delta.read_only_xacts / runs,
        "rows_inserted": delta.rows_inserted / runs,
        "rows_updated": delta.rows_updated / runs,
        "rows_deleted": delta.rows_deleted / runs,
        "wal_bytes": delta.wal_bytes / runs,
        "wal_syncs": delta.wal_syncs / runs,
    }


def _fit(per_run: dict[int, dict[str, float]], key: str) -> tuple[float, float]:
    """``value(n) = constant + per_step * n`` through the two largest flow sizes."""
    sizes = sorted(per_run)
    lo, hi = sizes[-2], sizes[-1]
    per_step = (per_run[hi][key] - per_run[lo][key]) / (hi - lo)
    return per_run[lo][key] - per_step * lo, per_step


async def run(ctx: Context) -> list[Section]:
    """Sections 2 (steps per second) and 3 (transactions and rows per step)."""
    server, sizes = ctx.server, ctx.sizes
    pg = PgCpu(server.postmaster_pid())
    steps = Section("steps", "2. Sequential steps per second (no-op steps, one run at a time)")
    txns = Section("transactions", "3. Transactions and rows per step (pg_stat deltas)")

    # -- in-process: each repetition is paired with an INSERT+COMMIT measurement taken just
    # before it in the same database, so that ratios compare like with like even when the
    # machine's load drifts during the run ---------------------------------------------------
    inproc: dict[int, list[Measured]] = {}
    paired: dict[int, list[dict[str, float]]] = {}
    for _ in range(sizes.step_repeats):
        for n, runs in sizes.runs_by_steps:
            with server.database(f"seq{n}") as url:
                limit = await measure_limits(url, sizes.paired_insert_rows, 0, concurrent=False)

                async def work(
                    extra: dict[str, Any], url: str = url, n: int = n, runs: int = runs
                ) -> float:
                    return await _in_process(url, n, runs, extra)

                inproc.setdefault(n, []).append(await measured(url, server.admin_url, pg, work))
                paired.setdefault(n, []).append(limit)
    rates = {n: [runs * n / m.seconds for m in inproc[n]] for n, runs in sizes.runs_by_steps}
    all_limits = [lim for lims in paired.values() for lim in lims]
    sa_limit = statistics.median(lim["sqlalchemy_seq"] for lim in all_limits)
    raw_limit = statistics.median(lim["raw_asyncpg_seq"] for lim in all_limits)
    note = "median of the measurements paired with each repetition below"
    steps.add("limit: INSERT+COMMIT/s, raw asyncpg (same run)", raw_limit, "/s", note=note)
    steps.add(
        "for comparison: INSERT+COMMIT/s, SQLAlchemy Core + asyncpg",
        sa_limit,
        "/s",
        note="a pool checkout per statement, as an ordinary SQLAlchemy app runs it",
    )
    for n, values in rates.items():
        sp = spread(values)
        note = f"min-max {sp['min']:,.0f}-{sp['max']:,.0f}" if sp["n"] > 1 else ""
        steps.add(f"in-process steps/s, {n}-step flows", sp["median"], "/s", note=note)
    target = Target(">=", 0.70, ">= 0.70")

    def paired_ratio(n: int, limit: str) -> float:
        """Median over repetitions of steps/s divided by the limit measured just before."""
        pairs = zip(rates[n], paired[n], strict=True)
        return statistics.median(rate / lim[limit] for rate, lim in pairs)

    for n in rates:
        steps.add(
            f"in-process, {n}-step flows / raw asyncpg INSERT rate",
            paired_ratio(n, "raw_asyncpg_seq"),
            "ratio",
            target,
            note=f"bound {n / (n + 3):.2f}: {n}+3 commits per run, none cheaper than an "
            "INSERT+COMMIT"
            if n < 100
            else "",
        )
    for n in rates:
        steps.add(
            f"for comparison: {n}-step flows / SQLAlchemy Core INSERT rate",
            paired_ratio(n, "sqlalchemy_seq"),
            "ratio",
        )
    per_run_ms = {
        n: statistics.median(m.seconds / runs * 1000 for m in inproc[n])
        for n, runs in sizes.runs_by_steps
    }
    big, small = sorted(per_run_ms)[-1], sorted(per_run_ms)[-2]
    marginal_ms = (per_run_ms[big] - per_run_ms[small]) / (big - small)
    steps.add(
        "marginal cost of one more checkpointed step",
        marginal_ms,
        "ms",
        note=f"slope {small}->{big} steps; = {1000 / marginal_ms:,.0f} steps/s",
    )
    steps.add(
        "marginal steps/s / raw asyncpg INSERT rate",
        1000 / marginal_ms / raw_limit,
        "ratio",
        target,
        note="the cost of a step without the per-run constant",
    )
    per_run_fixed = per_run_ms[small] - marginal_ms * small
    steps.add("fixed cost per run (start, claim, finish)", per_run_fixed, "ms")
    for n, runs in sizes.runs_by_steps:
        steps.add(
            f"client CPU per step, in-process, {n}-step flows",
            statistics.median(m.extra["cpu_timed"] for m in inproc[n]) / (runs * n) * 1000,
            "ms",
            note="engine + asyncpg Python time, median of repetitions",
        )
    for n in rates:
        pg_ms = [
            m.pg_cpu / (m.extra["runs_total"] * n) * 1000 for m in inproc[n] if m.pg_cpu is not None
        ]
        if pg_ms:
            steps.add(
                f"PostgreSQL CPU per step, in-process, {n}-step flows",
                statistics.median(pg_ms),
                "ms",
                note="all server processes, incl. connection start-up and WAL writer",
            )

    # -- decomposition of one checkpoint ------------------------------------------------------
    with server.database("decompose") as url:
        parts = await _decompose(url, sizes.insert_rows, 2 if ctx.quick else 6)
    steps.add(
        "one INSERT+COMMIT, raw asyncpg",
        parts["insert_raw"],
        "ms",
        note="decomposition: best of interleaved rounds",
    )
    steps.add(
        "one memo row INSERT+COMMIT, unfenced, raw asyncpg",
        parts["memo_row_raw"],
        "ms",
        note=f"{parts['memo_row_raw'] - parts['insert_raw']:+.3f} ms: the steps row (wider, "
        "two unique indexes, foreign key)",
    )
    steps.add(
        "one checkpoint statement (memo + share-lock fence), raw asyncpg",
        parts["checkpoint_sql_raw"],
        "ms",
        note=f"{parts['checkpoint_sql_raw'] - parts['memo_row_raw']:+.3f} ms: the lease fence",
    )
    steps.add(
        "one checkpoint through PostgresStore.checkpoint",
        parts["checkpoint_store"],
        "ms",
        note=f"{parts['checkpoint_store'] - parts['checkpoint_sql_raw']:+.3f} ms: store (params, "
        "hot connection)",
    )
    steps.add(
        "one ctx.step in a 100-step run",
        parts["ctx_step"],
        "ms",
        note=f"{parts['ctx_step'] - parts['checkpoint_store']:+.3f} ms: context, replay, codec, "
        "1/100 of start+claim+finish",
    )
    steps.add(
        "best-case ctx.step rate / best-case raw INSERT rate",
        parts["insert_raw"] / parts["ctx_step"],
        "ratio",
        note="the same ratio without load noise",
    )

    # -- end to end through a worker process ------------------------------------------------
    e2e: dict[int, Measured] = {}
    baselines: dict[int, Measured] = {}
    for n, runs in sizes.e2e_runs_by_steps:
        with server.database(f"e2e{n}") as url:

            async def e2e_work(
                extra: dict[str, Any], url: str = url, n: int = n, runs: int = runs
            ) -> float:
                return await _end_to_end(url, n, runs, ctx, extra)

            e2e[n] = await measured(url, server.admin_url, pg, e2e_work)
        with server.database(f"idle{n}") as url:
            idle_for = e2e[n].seconds

            async def idle_work(
                extra: dict[str, Any], url: str = url, n: int = n, idle_for: float = idle_for
            ) -> float:
                return await _end_to_end(url, n, 0, ctx, extra, idle=idle_for)

            baselines[n] = await measured(url, server.admin_url, pg, idle_work)
    for n, runs in sizes.e2e_runs_by_steps:
        rate = runs * n / e2e[n].seconds
        steps.add(
            f"end-to-end steps/s through a worker process, {n}-step flows",
            rate,
            "/s",
            note=f"{runs / e2e[n].seconds:,.1f} runs/s incl. start, pickup, result",
        )
    for n, runs in sizes.e2e_runs_by_steps:
        m = e2e[n]
        steps.add(
            f"worker process CPU per step, end-to-end, {n}-step flows",
            m.extra["worker_cpu_timed"] / (runs * n) * 1000,
            "ms",
        )

    # -- (3) transactions and rows ------------------------------------------------------------
    in_runs = {n: inproc[n][-1] for n in inproc}
    per_run_in = {n: _per_run(m.delta, m.extra["runs_total"]) for n, m in in_runs.items()}
    per_run_e2e = {
        n: _per_run(e2e[n].delta.minus(baselines[n].delta), e2e[n].extra["runs_total"]) for n in e2e
    }
    for n, counts in per_run_in.items():
        txns.add(
            f"write transactions per run, in-process, {n}-step flows",
            counts["write_xacts"],
            "tx",
            note=f"{counts['read_only_xacts']:.2f} read-only per run",
        )
    const_in, per_step_in = _fit(per_run_in, "write_xacts")
    txns.add(
        "write transactions per checkpointed step (in-process)",
        per_step_in,
        "tx",
        Target("<=", 1.0, "<= 1"),
        note="slope between the two largest flow sizes",
    )
    txns.add(
        "write transactions per run, constant part (in-process)",
        const_in,
        "tx",
        note="design: 3 = start, claim, finish",
    )
    for n, counts in per_run_e2e.items():
        txns.add(
            f"write transactions per run, end-to-end, {n}-step flows",
            counts["write_xacts"],
            "tx",
            note=f"idle worker baseline subtracted; {counts['read_only_xacts']:.1f} read-only",
        )
    const_e2e, per_step_e2e = _fit(per_run_e2e, "write_xacts")
    txns.add(
        "write transactions per checkpointed step (end-to-end)",
        per_step_e2e,
        "tx",
        Target("<=", 1.0, "<= 1"),
    )
    txns.add(
        "write transactions per run, constant part (end-to-end)",
        const_e2e,
        "tx",
        note="design: 3 + procrastinate fetch_job and finish_job",
    )
    for key, label in (
        ("rows_inserted", "rows inserted"),
        ("rows_updated", "rows updated"),
        ("wal_bytes", "WAL bytes"),
        ("wal_syncs", "WAL fsyncs"),
    ):
        const, per_step = _fit(per_run_in, key)
        txns.add(
            f"{label} per step (in-process)",
            per_step,
            "",
            note=f"+ {const:,.1f} per run",
        )
    for key, label in (("rows_inserted", "rows inserted"), ("rows_updated", "rows updated")):
        const, per_step = _fit(per_run_e2e, key)
        txns.add(f"{label} per step (end-to-end)", per_step, "", note=f"+ {const:,.1f} per run")
    replay_runs = max(sizes.latency_samples // 2, 5)
    with server.database("replay") as url:
        stmts = await _replay_attempts(url, replay_runs)
    attempts = 2 * replay_runs
    reads = {"claim", "get_run", "existing", "pending_wake", "other"}
    other_reads = sum(v for k, v in stmts.items() if k in reads - {"claim"})
    txns.add(
        "queries loading history per attempt",
        stmts.get("claim", 0) / attempts,
        "queries",
        Target("<=", 1.0, "<= 1"),
        note=f"{attempts} attempts (step, signal wait, resume+replay); the claim returns history",
    )
    txns.add(
        "other reads per attempt",
        other_reads / attempts,
        "queries",
        note="statements: " + ", ".join(f"{k} {v}" for k, v in sorted(stmts.items())),
    )
    txns.raw = {
        "per_run_in_process": per_run_in,
        "per_run_end_to_end": per_run_e2e,
        "in_process_delta": {n: m.delta.as_dict() for n, m in in_runs.items()},
        "end_to_end_delta": {n: m.delta.as_dict() for n, m in e2e.items()},
        "idle_baseline_delta": {n: m.delta.as_dict() for n, m in baselines.items()},
        "statements_in_process": {n: m.extra["statements"] for n, m in in_runs.items()},
        "statements_two_attempt_runs": stmts,
    }
    steps.raw = {
        "in_process_rates": rates,
        "per_run_ms": per_run_ms,
        "decomposition_ms": parts,
        "end_to_end_seconds": {n: m.seconds for n, m in e2e.items()},
        "paired_limits": paired,
    }
    return [steps, txns]
