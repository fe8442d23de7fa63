"""(8) Dashboard page load: the runs list and a run page over 100,000 runs.

The runs are real histories multiplied: a handful of **seed runs** are executed by an in-process
worker until each settles in its status (done, failed, waiting for a signal, sleeping, canceled,
pending on a delayed start); then every seed is cloned with one ``INSERT ... SELECT`` over
``generate_series`` per table (runs, steps, events; run through the engine's SQLAlchemy engine),
with fresh ids, timestamps spread over the past days and a ``vip`` tag on one run in ten. The
mix (:data:`MIX`) is mostly finished runs, as a production database is.

The dashboard (``iterflow.contrib.web.dashboard(engine)``) is then called in-process through
``httpx2.ASGITransport`` (no server, no network: the time is the app's and the database's),
``samples`` times per page after two warm-up requests; each page must answer 200. Measured:
``GET /`` without and with filters (status, flow + status, tag, the second page through its
``rel=next`` link) and the run page of a finished and of a waiting run, as p50 and p95 next to
the 300 ms target of issue 12.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from html import unescape
from typing import Any

import httpx2
from pydantic import BaseModel
from sqlalchemy import text

from iterflow import Engine, FlowContext
from iterflow.store.schema import quote_identifier

from .config import Context
from .report import Section, Target, percentiles

__all__ = ["FLOW", "MIX", "load_runs", "measure_pages", "run"]

FLOW = "bench.web.order"
TARGET_MS = 300.0
#: The tables holding a run's history, cloned with it.
CHILD_TABLES = ("steps", "signals", "timers", "events")
#: Share of each seed status in the loaded runs (sums to 100).
MIX: dict[str, int] = {
    "done": 80,
    "failed": 6,
    "awaiting_signal": 6,
    "sleeping": 3,
    "canceled": 3,
    "pending": 2,
}


class Order(BaseModel):
    """A bench order: ``fail`` makes its charge step fail, ``nap`` makes it sleep an hour."""

    order_id: str
    amount_cents: int
    fail: bool = False
    nap: bool = False


class Approval(BaseModel):
    """The ``approve`` signal's payload."""

    approved_by: str


class Receipt(BaseModel):
    """The flow's output."""

    order_id: str
    charge: str
    approved_by: str


def register(engine: Engine) -> None:
    """The seed flow: reserve, charge (fails if asked), optional nap, approve signal, ship."""

    @engine.flow(FLOW, input=Order, output=Receipt, signals={"approve": Approval})
    async def order_flow(ctx: FlowContext, order: Order) -> Receipt:
        async def reserve(order_id: str) -> str:
            return f"res_{order_id}"

        def charge(order_id: str, fail: bool) -> str:
            if fail:
                raise RuntimeError(f"card declined for {order_id}")
            return f"ch_{order_id}"

        async def ship(order_id: str) -> bool:
            return True

        await ctx.step("reserve", reserve, order.order_id)
        charged = await ctx.step("charge", charge, order.order_id, order.fail)
        if order.nap:
            await ctx.sleep(timedelta(hours=1), label="nap")
        approval = await ctx.signal("approve", Approval, timeout="7d")
        await ctx.step("ship", ship, order.order_id)
        return Receipt(order_id=order.order_id, charge=charged, approved_by=approval.approved_by)


async def _settle(engine: Engine, run_id: uuid.UUID, status: str, timeout: float = 60) -> None:
    deadline = time.perf_counter() + timeout
    while str((await engine.status(run_id)).run.status) != status:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"seed run {run_id} did not reach {status} in {timeout} s")
        await asyncio.sleep(0.05)


async def _seeds(engine: Engine) -> dict[str, uuid.UUID]:
    """One real run per status of :data:`MIX`, executed by an in-process worker."""

    def order(name: str, **flags: bool) -> dict[str, Any]:
        return {"order_id": f"seed-{name}", "amount_cents": 4200, **flags}

    seeds = {
        "done": (await engine.start(FLOW, order("done"))).run_id,
        "failed": (await engine.start(FLOW, order("failed", fail=True))).run_id,
        "awaiting_signal": (await engine.start(FLOW, order("waiting"))).run_id,
        "sleeping": (await engine.start(FLOW, order("sleeping", nap=True))).run_id,
        "canceled": (await engine.start(FLOW, order("canceled"))).run_id,
        "pending": (await engine.start(FLOW, order("pending"), delay="1d")).run_id,
    }
    for status in ("done", "awaiting_signal", "canceled"):
        await _settle(engine, seeds[status], "awaiting_signal")
    await engine.signal(seeds["done"], "approve", {"approved_by": "bench"})
    await engine.cancel(seeds["canceled"], reason="bench")
    for status, run_id in seeds.items():
        await _settle(engine, run_id, status)
    return seeds


async def _columns(engine: Engine, schema: str, table: str) -> list[tuple[str, str]]:
    """``(name, data_type)`` of the columns an INSERT may set (no identity, no generated)."""
    query = text(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = :schema AND table_name = :table AND is_identity = 'NO' "
        "AND is_generated = 'NEVER' ORDER BY ordinal_position"
    )
    async with engine.sqlalchemy_engine.connect() as conn:
        rows = (await conn.execute(query, {"schema": schema, "table": table})).all()
    return [(str(r[0]), str(r[1])) for r in rows]


def _select(columns: list[tuple[str, str]], overrides: dict[str, str], alias: str) -> str:
    """The SELECT list copying ``alias``'s row: overridden columns, shifted timestamps."""
    out = []
    for name, data_type in columns:
        if name in overrides:
            out.append(overrides[name])
        elif data_type == "timestamp with time zone":
            out.append(f"{alias}.{name} - c.shift")
        else:
            out.append(f"{alias}.{name}")
    return ", ".join(out)


async def load_runs(url: str, engine: Engine, n: int) -> dict[str, Any]:
    """``n`` runs in the :data:`MIX`: the seeds executed by a worker of a separate engine
    (closed before cloning: no worker touches the clones), then cloned through ``engine``."""
    seeder = Engine(url, pool_size=4)
    register(seeder)
    async with seeder:
        await seeder.listen(concurrency=4)
        seeds = await _seeds(seeder)
    schema = engine.settings.db_schema
    s = quote_identifier(schema)
    counts = {status: n * share // 100 for status, share in MIX.items()}
    counts["done"] += n - sum(counts.values()) - len(seeds)
    columns = {t: await _columns(engine, schema, t) for t in (*CHILD_TABLES, "runs")}
    run_overrides = {
        "id": "c.id",
        "idempotency_key": "NULL",
        "tags": "CASE WHEN c.i % 10 = 0 THEN ARRAY['bench', 'vip'] ELSE ARRAY['bench'] END",
        "input": "jsonb_set(r.input, '{order_id}', to_jsonb('O-' || c.i))",
    }
    # every clone of a seed: its id, its place i in the whole (the statuses interleaved evenly)
    # and how far back in time it goes (2 s apart, i = n the newest)
    clone = (
        "CREATE TEMP TABLE bench_clone ON COMMIT DROP AS "
        "SELECT gen_random_uuid() AS id, x.seed, x.i, "
        "(SELECT created_at FROM {s}.runs WHERE id = x.seed) - now() "
        "+ (:n - x.i) * interval '2 seconds' AS shift "
        "FROM (SELECT s.seed, row_number() OVER (ORDER BY (g.k - 0.5) / s.count, s.seed) AS i "
        "FROM (SELECT CAST(seed AS uuid) AS seed, CAST(count AS int) AS count "
        "FROM jsonb_each_text(CAST(:plan AS jsonb)) AS p(seed, count)) AS s "
        "CROSS JOIN LATERAL generate_series(1, s.count) AS g(k)) AS x"
    ).replace("{s}", s)
    plan = {str(seeds[status]): count for status, count in counts.items()}
    runs = columns["runs"]
    statements = [
        f"INSERT INTO {s}.runs ({', '.join(c for c, _ in runs)}) "
        f"SELECT {_select(runs, run_overrides, 'r')} "
        f"FROM bench_clone AS c JOIN {s}.runs AS r ON r.id = c.seed ORDER BY c.i"
    ]
    for table in CHILD_TABLES:  # in the seed's order (events and signals have identity ids)
        names = ", ".join(c for c, _ in columns[table])
        order = "c.i, t.id" if table in ("signals", "events") else "c.i"
        statements.append(
            f"INSERT INTO {s}.{table} ({names}) "
            f"SELECT {_select(columns[table], {'run_id': 'c.id'}, 't')} "
            f"FROM bench_clone AS c JOIN {s}.{table} AS t ON t.run_id = c.seed ORDER BY {order}"
        )
    t0 = time.perf_counter()
    async with engine.sqlalchemy_engine.begin() as conn:
        await conn.execute(text(clone), {"n": n, "plan": json.dumps(plan)})
        for statement in statements:
            await conn.execute(text(statement))
    async with engine.sqlalchemy_engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        for table in ("runs", *CHILD_TABLES):
            await autocommit.execute(text(f"ANALYZE {s}.{table}"))
        total = (await conn.execute(text(f"SELECT count(*) FROM {s}.runs"))).scalar_one()
    return {
        "seconds": time.perf_counter() - t0,
        "runs": int(total),
        "by_status": {status: counts[status] + 1 for status in counts},
        "seeds": {status: str(run_id) for status, run_id in seeds.items()},
    }


@dataclass(frozen=True)
class Page:
    """One measured page: its label and its path under the dashboard's root."""

    label: str
    path: str


async def _time(client: httpx2.AsyncClient, path: str, samples: int) -> list[float]:
    for _ in range(2):  # warm-up: connections, plan caches
        (await client.get(path)).raise_for_status()
    timings = []
    for _ in range(samples):
        t0 = time.perf_counter()
        response = await client.get(path)
        timings.append((time.perf_counter() - t0) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path} answered {response.status_code}")
    return timings


def _next_link(html: str) -> str | None:
    """The ``a[rel=next]`` href of a runs list page."""
    for tag in re.findall(r"<a\b[^>]*>", html):
        if re.search(r"""\brel=["']?next\b""", tag):
            found = re.search(r"""\bhref=["']([^"']*)["']""", tag)
            if found:
                return unescape(found.group(1))
    return None


async def measure_pages(
    engine: Engine, seeds: dict[str, str], samples: int
) -> dict[str, dict[str, Any]]:
    """p50/p95 of each page of the dashboard, in-process (no server)."""
    from iterflow.contrib.web import dashboard

    app = dashboard(engine)
    transport = httpx2.ASGITransport(app=app)
    out: dict[str, dict[str, Any]] = {}
    async with httpx2.AsyncClient(transport=transport, base_url="http://bench") as client:
        first = await client.get("/")
        first.raise_for_status()
        pages = [
            Page("runs list, no filter", "/"),
            Page("runs list, status=failed", "/?status=failed"),
            Page(
                "runs list, flow + status=awaiting_signal", f"/?flow={FLOW}&status=awaiting_signal"
            ),
            Page("runs list, tag=vip", "/?tag=vip"),
        ]
        following = _next_link(first.text)
        if following is not None:
            pages.append(Page("runs list, next page (rel=next)", following))
        pages += [
            Page("run page, a done run", f"/runs/{seeds['done']}"),
            Page("run page, a run waiting for a signal", f"/runs/{seeds['awaiting_signal']}"),
        ]
        for page in pages:
            timings = await _time(client, page.path, samples)
            out[page.label] = {"path": page.path, **percentiles(timings), "samples": timings}
    return out


async def run(ctx: Context) -> Section:
    """Load the runs, then time each dashboard page."""
    n = ctx.sizes.web_runs
    section = Section("web", f"8. Dashboard page load: {n:,} runs, in-process ASGI")
    with ctx.server.database("web") as url:
        engine = Engine(url, pool_size=4)
        register(engine)
        async with engine:
            loaded = await load_runs(url, engine, n)
            pages = await measure_pages(engine, loaded["seeds"], ctx.sizes.web_samples)
    section.add(
        "runs loaded (seeds cloned with INSERT ... SELECT)",
        loaded["runs"],
        "runs",
        note=f"{loaded['seconds']:.1f} s; "
        + ", ".join(f"{k} {v:,}" for k, v in loaded["by_status"].items()),
    )
    for label, stats in pages.items():
        section.add(f"{label}, p50", stats["p50"], "ms", note=stats["path"])
        section.add(
            f"{label}, p95",
            stats["p95"],
            "ms",
            Target("<=", TARGET_MS, "< 300 ms"),
            note=f"{stats['n']} requests, max {stats['max']:.0f} ms",
        )
    section.raw = {"loaded": loaded, "pages": pages}
    return section
