"""Arbitrary values at every public entry point: a coded FlowError or success, never a crash.

A hypothesis property drives the same call against a PostgreSQL engine and an in-memory engine
(``Engine.in_memory()``) that hold the same runs, and checks for every call that:

* it succeeds, or raises a :class:`FlowError` whose ``error_code`` is registered (never a plain
  Python exception, never ``DATABASE_UNAVAILABLE``: bad values are not outages);
* on error nothing was written: row count and content of every iterflow table and every
  procrastinate table (PostgreSQL), every run with its steps, signals, timers and events
  (memory, read through ``list_runs``/``status``);
* both stores answer alike: the same result kind, or the same error code (the in-memory store
  refuses exactly what PostgreSQL refuses).

Values mix plausible ones (so success paths run too) with hostile ones (``HOSTILE``): NUL
characters, lone surrogates, NaN/Infinity, huge integers, 300- and 5,000-level JSON, bytes,
``object()``, objects whose ``repr``/``iter`` raise, wrong types, over-long text, out-of-range
numbers. A deterministic sweep then puts every hostile value at every argument of every entry
point (the other arguments valid), under the same checks. The example-based tests at the end
pin every bug these found, so they do not depend on hypothesis drawing them again.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from iterflow import Engine, FlowContext, FlowError
from iterflow.core.durations import parse_duration
from iterflow.core.errors import DurationInvalid, registered_codes
from iterflow.core.models import RunStatus
from iterflow.runtime.engine import FlowHandle
from iterflow.store.urls import libpq_url
from tests.integration.flows import TABLES, all_tables, counts, eventually

# -- the flow under test -------------------------------------------------------------------------


class EdgeIn(BaseModel):
    name: str
    data: Any = None


class EdgeOut(BaseModel):
    name: str


class Poke(BaseModel):
    value: Any = None


def edge_flow(engine: Engine) -> FlowHandle[EdgeIn, EdgeOut]:
    @engine.flow("edge", input=EdgeIn, output=EdgeOut, signals={"poke": Poke}, on=["edge.poked"])
    async def edge(ctx: FlowContext, inp: EdgeIn) -> EdgeOut:
        if inp.data == "fail":
            raise FlowError("card declined", code="PAYMENT_DECLINED", details={"amount": 1})
        if inp.data == "wait":
            await ctx.signal("poke", Poke)
        return EdgeOut(name=inp.name)

    return edge


#: The user-defined code of the failed run: ``result`` re-raises it (code preserved).
USER_CODES = {"PAYMENT_DECLINED"}

# -- values --------------------------------------------------------------------------------------


def nested_dict(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


def nested_list(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


class BadStr:
    """A value whose ``str``/``repr``/``iter``/``len`` all raise (error messages must survive
    it)."""

    def __str__(self) -> str:
        raise RuntimeError("str() of BadStr")

    def __repr__(self) -> str:
        raise RuntimeError("repr() of BadStr")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("iter() of BadStr")

    def __len__(self) -> int:
        raise RuntimeError("len() of BadStr")


class StrSub(str):
    """A ``str`` subclass (legitimate text)."""


HOSTILE: list[Any] = [
    # text PostgreSQL refuses, or that is too long
    "\x00",
    "ok\x00ok",
    "\ud800",
    "ok\udfffok",
    "",
    " ",
    "x" * 10_001,
    "x" * 300,
    "x" * 1_000_001,
    # numbers
    float("nan"),
    float("inf"),
    float("-inf"),
    -0.0,
    1e300,
    -1e300,
    5e-324,
    10**5000,
    -(10**5000),
    2**63,
    -(2**63) - 1,
    2**40,
    -(2**40),
    -1,
    0,
    True,
    False,
    Decimal("NaN"),
    Decimal("1e5000"),
    complex(1, 2),
    # structures
    nested_dict(300),
    nested_list(300),
    nested_dict(5000),
    {"\x00": 1},
    {"\ud800": 1},
    {1: "a"},
    {"name": "ok", "data": float("nan")},
    {"name": "ok", "data": 10**5000},
    {"name": "ok", "data": nested_dict(300)},
    {"name": "\x00"},
    {"value": "\ud800"},
    {"value": float("inf")},
    [],
    {},
    [None],
    ["\x00"],
    ["x" * 10_001],
    ["ok"] * 100,
    [1, 2],
    ["a", "b"],
    ("a",),
    {"a"},
    frozenset(),
    # other types
    b"\xff\xfe",
    bytearray(b"\x80abc"),
    b"ok",
    None,
    object(),
    BadStr(),
    StrSub("poke"),
    RunStatus.DONE,
    [RunStatus.FAILED, "done"],
    {"done": 1},
    range(3),
    Ellipsis,
    int,
    uuid.UUID(int=0),
    "abc",
    # durations and times
    "3d",
    "-1s",
    "1e400d",
    "9" * 400 + "d",
    "nan",
    "0s",
    timedelta(days=-1),
    timedelta.max,
    timedelta(days=40_000),
    datetime(2020, 1, 1),
    datetime(9999, 12, 31, tzinfo=UTC),
]


def shown(value: Any) -> str:
    """A short description of a hostile value that never raises (repr may: 10**5000, BadStr)."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__} whose repr raises>"
    return text if len(text) <= 60 else f"{text[:50]}... ({len(text)} chars)"


class Boxed:
    """A hostile value as hypothesis draws and prints it (its own repr could raise or flood
    the report); :func:`unbox` swaps in the value just before the call."""

    def __init__(self, index: int) -> None:
        self.index = index

    @property
    def value(self) -> Any:
        return HOSTILE[self.index]

    def __repr__(self) -> str:
        return f"HOSTILE[{self.index}]={shown(self.value)}"


def unbox(drawn: Any) -> Any:
    """``drawn`` with every :class:`Boxed` replaced by its value (containers that the strategies
    built are rebuilt; the hostile values themselves are passed as they are)."""
    if isinstance(drawn, Boxed):
        return drawn.value
    if type(drawn) is dict:
        return {k: unbox(v) for k, v in drawn.items()}
    if type(drawn) is list:
        return [unbox(v) for v in drawn]
    if type(drawn) is tuple:
        return tuple(unbox(v) for v in drawn)
    return drawn


hostile = st.sampled_from([Boxed(i) for i in range(len(HOSTILE))])
safe_text = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=12
)
any_text = st.text(st.characters(exclude_categories=()), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(any_text, inner, max_size=3),
    max_leaves=8,
)
OMIT = object()


def arg(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly plausible (twice as likely), sometimes hostile, sometimes omitted (``OMIT``)."""
    return st.one_of(st.just(OMIT), plausible, plausible, hostile)


inputs = st.one_of(
    st.fixed_dictionaries({"name": safe_text}, optional={"data": json_values}),
    st.builds(EdgeIn, name=safe_text, data=json_values),
    st.fixed_dictionaries({"name": safe_text, "data": hostile}),
    st.fixed_dictionaries({"name": any_text | hostile}),
    hostile,
)
keys = st.none() | st.sampled_from(["k1", "k2", "k3"]) | safe_text | any_text
tag_lists = st.lists(safe_text, max_size=3) | st.tuples(safe_text) | st.lists(hostile, max_size=2)
delays = (
    st.none()
    | st.sampled_from(["0s", "1s", "250ms", "1h30m", "3d"])
    | st.floats(0, 10_000)
    | st.integers(0, 10**6)
    | st.timedeltas(timedelta(0), timedelta(days=3650))
)
priorities = st.integers(-(2**31), 2**31 - 1)
statuses = st.sampled_from([s.value for s in RunStatus]) | st.lists(
    st.sampled_from(list(RunStatus)), max_size=2
)
timeouts = st.none() | st.floats(0, 0.02) | st.just(0)


def kwargs(**strategies: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Keyword arguments, each drawn from its strategy; ``OMIT`` leaves it out."""
    return st.fixed_dictionaries(strategies).map(
        lambda drawn: {k: v for k, v in drawn.items() if v is not OMIT}
    )


# -- two engines holding the same runs ------------------------------------------------------------


@dataclass
class Side:
    """One engine (PostgreSQL or memory) and the ids of its runs, in creation order."""

    engine: Engine
    handle: FlowHandle[EdgeIn, EdgeOut]
    runs: list[uuid.UUID] = field(default_factory=list)
    state: Any = None
    """The last snapshot of everything stored (None: stale, a call succeeded since)."""


@dataclass
class World:
    """A PostgreSQL and an in-memory engine holding the same runs: the seeds are
    ``[done, failed (PAYMENT_DECLINED), awaiting_signal, done, canceled]``."""

    pg: Side
    mem: Side
    database_url: str
    conn: psycopg.Connection[Any]
    tables: list[str]

    def sides(self) -> tuple[Side, Side]:
        return self.pg, self.mem

    def index(self, side: Side, run_id: uuid.UUID) -> int:
        return side.runs.index(run_id) if run_id in side.runs else -1

    async def snapshot(self, side: Side) -> Any:
        if side is self.pg:
            return pg_snapshot(self.conn, self.tables)
        return await memory_snapshot(side.engine)


DONE, FAILED, WAITING, CANCELED = 0, 1, 2, 4
Outcome = tuple[str, Any]
Call = Callable[[Side], Awaitable[Any]]


async def outcome(call: Call, side: Side, world: World) -> Outcome:
    """``("ok", summary)`` or ``("error", code)``; anything else fails the test."""
    try:
        value = await asyncio.wait_for(call(side), 20)
    except FlowError as exc:
        return ("error", exc.error_code)
    return ("ok", summarize(value, side, world))


def summarize(value: Any, side: Side, world: World) -> Any:
    """What both stores must agree on (run ids mapped to their position in the world)."""
    kind = getattr(value, "kind", None)
    if kind is not None:
        return kind
    if hasattr(value, "event"):  # publish: the subscriber's run (none for another event)
        runs = [(r.created, r.status, world.index(side, r.run_id)) for r in value.runs]
        return ("published", runs)
    if hasattr(value, "signal") and hasattr(value, "created"):  # signal_with_start
        index = world.index(side, value.run_id)
        return ("started", value.created, value.status, index, value.signal.kind)
    if hasattr(value, "created"):
        return ("started", value.created, value.status, world.index(side, value.run_id))
    if hasattr(value, "steps"):
        run = value.run
        return (run.status, [e.type for e in value.events], len(value.signals), len(value.steps))
    if hasattr(value, "next_cursor"):
        return [(world.index(side, r.id), r.status) for r in value.runs]
    return value


async def memory_snapshot(engine: Engine) -> list[Any]:
    """Everything the memory store holds, read through the public API."""
    page = await engine.list_runs(limit=1000)
    assert page.next_cursor is None, "the world holds fewer than 1000 runs"
    out: list[Any] = []
    for run in page.runs:
        detail = await engine.status(run.id)
        out.append((run, detail.steps, detail.signals, detail.timers, detail.events))
    return out


def pg_snapshot(conn: psycopg.Connection[Any], tables: list[str]) -> dict[str, Any]:
    """Row count and content hash of every iterflow and procrastinate table."""
    query = " UNION ALL ".join(
        f"SELECT '{t}', count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) "
        f"FROM {t} AS x"
        for t in tables
    )
    return {name: (n, digest) for name, n, digest in conn.execute(query).fetchall()}  # type: ignore[arg-type]


async def check_call(world: World, call: Call, allowed: Iterable[str] = ()) -> Outcome:
    """Run ``call`` on both engines; check the error contract and that both stores agree.

    Either the call succeeds, or it raises a FlowError with a registered code (or one of
    ``allowed``: a user-defined code ``result`` re-raises) that is not DATABASE_UNAVAILABLE, and
    nothing stored changed."""
    codes = set(registered_codes()) | set(allowed)
    results = []
    for side in world.sides():
        before = side.state if side.state is not None else await world.snapshot(side)
        result = await outcome(call, side, world)
        results.append(result)
        if result[0] == "ok":
            side.state = None
            continue
        code = result[1]
        assert code in codes, f"unregistered error code {code!r}"
        assert code != "DATABASE_UNAVAILABLE", "a bad value was reported as an outage"
        side.state = await world.snapshot(side)
        assert side.state == before, f"a refused call ({code}) wrote"
    assert results[0] == results[1], f"PostgreSQL {results[0]} != memory {results[1]}"
    return results[0]


async def open_world(database_url: str) -> World:
    """Both engines with the same seed runs (see :class:`World`); no worker runs afterwards,
    so nothing changes the databases but the calls under test."""
    mem = Engine.in_memory()
    mem_handle = edge_flow(mem)
    await mem.open()
    ids: dict[str, list[uuid.UUID]] = {"pg": [], "mem": []}
    setup = Engine(database_url, pool_size=2)
    handle = edge_flow(setup)
    async with setup:
        await setup.listen(concurrency=1)
        for data in (None, "fail", "wait", None):
            pg_run = await handle.start(EdgeIn(name="seed", data=data))
            mem_run = await mem_handle.start(EdgeIn(name="seed", data=data))
            ids["pg"].append(pg_run.run_id)
            ids["mem"].append(mem_run.run_id)
        await mem.drain()

        async def settled() -> bool:
            runs = [await setup.store.get_run(r) for r in ids["pg"]]
            return all(
                r is not None and (r.is_terminal or r.status is RunStatus.AWAITING_SIGNAL)
                for r in runs
            )

        await eventually(settled, what="the seed runs to settle")
    pg_engine = Engine(database_url, pool_size=2)
    await pg_engine.open()
    pg_handle = edge_flow(pg_engine)
    for engine, h, key in ((pg_engine, pg_handle, "pg"), (mem, mem_handle, "mem")):
        started = await h.start(EdgeIn(name="to-cancel"))
        await engine.cancel(started.run_id, reason="seed")
        ids[key].append(started.run_id)
    tables = all_tables(database_url)
    assert set(TABLES) <= set(tables), set(TABLES) - set(tables)
    world = World(
        pg=Side(pg_engine, pg_handle, ids["pg"]),
        mem=Side(mem, mem_handle, ids["mem"]),
        database_url=database_url,
        conn=psycopg.connect(libpq_url(database_url), autocommit=True),
        tables=tables,
    )
    for side in world.sides():
        found = [(await side.engine.status(r)).run.status for r in side.runs]
        assert found[DONE] is found[3] is RunStatus.DONE
        assert found[FAILED] is RunStatus.FAILED and found[CANCELED] is RunStatus.CANCELED
        assert found[WAITING] is RunStatus.AWAITING_SIGNAL
    return world


async def close_world(world: World) -> None:
    world.conn.close()
    await world.pg.engine.close()
    await world.mem.engine.close()


async def track_new_run(world: World, result: Outcome) -> None:
    """After a start that created a run on both sides, add it to the world."""
    if result[0] == "ok" and isinstance(result[1], tuple) and result[1][:2] == ("started", True):
        for side in world.sides():
            side.runs.append((await side.engine.list_runs(limit=1)).runs[0].id)


# -- drawing one call ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRef:
    """A run id per side: the ``index``-th run of the world (modulo its size, so the strategy
    does not depend on how many runs earlier examples started) as a UUID, its text or its
    upper-case text; or a fixed ``value`` (an unknown UUID or a hostile value)."""

    index: int = 0
    form: int = 0
    value: Any = None

    def __call__(self, side: Side) -> Any:
        if self.value is not None:
            return unbox(self.value)
        rid = side.runs[self.index % len(side.runs)]
        return (rid, str(rid), str(rid).upper())[self.form]


def run_refs() -> st.SearchStrategy[RunRef]:
    known = st.builds(RunRef, index=st.integers(0, 1000), form=st.integers(0, 2))
    seed = st.builds(RunRef, index=st.integers(0, CANCELED), form=st.integers(0, 2))
    unknown = st.builds(RunRef, value=st.uuids())
    bad = st.builds(RunRef, value=hostile)
    return st.one_of(known, seed, unknown, bad)


async def is_live(world: World, ref: Callable[[Side], Any]) -> bool:
    """Whether ``ref`` names a run that is not terminal (``result`` would wait for it)."""
    value = ref(world.pg)
    if not isinstance(value, uuid.UUID | str):
        return False
    try:
        rid = value if isinstance(value, uuid.UUID) else uuid.UUID(value)
    except ValueError:
        return False
    run = await world.pg.engine.store.get_run(rid)
    return run is not None and not run.is_terminal


def waits(timeout: Any) -> bool:
    """Whether ``timeout`` (``OMIT`` for none given) is valid and long enough to make a test
    wait for a live run."""
    if timeout is OMIT or timeout is None:
        return True
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        return False
    return not (isinstance(timeout, float) and math.isnan(timeout)) and 0.05 < timeout < 1e308


def result_call(
    world: World, ref: Callable[[Side], Any], timeout: Any, *, via_engine: bool
) -> Call:
    """``handle.result``/``engine.result``; a live run is given a tiny timeout instead of a
    valid long one (hostile timeouts are passed as they are: they must be refused first)."""

    async def result(side: Side) -> Any:
        kw: dict[str, Any] = {} if timeout is OMIT else {"timeout": timeout}
        if waits(timeout) and await is_live(world, ref):
            kw["timeout"] = 0.01
        if via_engine:
            return await side.engine.result(ref(side), **kw)
        return await side.handle.result(ref(side), **kw)

    return result


OPS = ["start", "engine.start", "signal", "retry", "cancel", "status", "list", "result"]


def draw_call(data: st.DataObject, world: World) -> tuple[str, Call]:
    """One entry point with drawn arguments (hostile values unboxed just before the call)."""
    op = data.draw(st.sampled_from(OPS), label="op")
    if op in ("start", "engine.start"):
        inp = unbox(data.draw(inputs, label="input"))
        kw = unbox(
            data.draw(
                kwargs(
                    idempotency_key=arg(keys),
                    tags=arg(tag_lists),
                    delay=arg(delays),
                    priority=arg(priorities),
                ),
                label="kwargs",
            )
        )
        if op == "start":
            return op, lambda side: side.handle.start(inp, **kw)
        edge = st.just("edge")  # twice: a registered name half of the time
        name = unbox(data.draw(st.one_of(edge, edge, safe_text, hostile), label="name"))
        return op, lambda side: side.engine.start(name, inp, **kw)
    ref = data.draw(run_refs(), label="run")
    if op == "signal":
        sig = unbox(data.draw(st.just("poke") | safe_text | hostile, label="signal"))
        payload = unbox(
            data.draw(
                st.fixed_dictionaries({"value": json_values})
                | st.fixed_dictionaries({"value": hostile})
                | hostile
                | json_values,
                label="payload",
            )
        )
        kw = unbox(data.draw(kwargs(idempotency_key=arg(keys)), label="kwargs"))
        return op, lambda side: side.engine.signal(ref(side), sig, payload, **kw)
    if op == "retry":
        return op, lambda side: side.engine.retry(ref(side))
    if op == "cancel":
        kw = unbox(data.draw(kwargs(reason=arg(safe_text | st.none())), label="kwargs"))
        return op, lambda side: side.engine.cancel(ref(side), **kw)
    if op == "status":
        return op, lambda side: side.engine.status(ref(side))
    if op == "list":
        kw = unbox(
            data.draw(
                kwargs(
                    name=arg(st.none() | st.just("edge") | safe_text),
                    status=arg(st.none() | statuses),
                    tag=arg(st.none() | safe_text),
                    limit=arg(st.integers(1, 1000)),
                    cursor=arg(st.none() | st.integers(0, 2**63 - 1)),
                ),
                label="kwargs",
            )
        )
        if kw.get("cursor") is not None:  # sequence numbers differ between the stores

            async def listed(side: Side) -> Any:
                await side.engine.list_runs(**kw)
                return "page"

            return op, listed
        return op, lambda side: side.engine.list_runs(**kw)
    timeout = unbox(data.draw(arg(timeouts), label="timeout"))
    via_engine = data.draw(st.booleans(), label="via_engine")
    return op, result_call(world, ref, timeout, via_engine=via_engine)


# -- the property ----------------------------------------------------------------------------------

EXAMPLES = 1500


def test_public_entry_points_refuse_hostile_values_alike(database_url: str) -> None:
    seen: dict[str, set[Any]] = {}
    with asyncio.Runner() as runner:
        world = runner.run(open_world(database_url))
        try:

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(data=st.data())
            def check(data: st.DataObject) -> None:
                op, call = draw_call(data, world)
                result = runner.run(check_call(world, call, USER_CODES if op == "result" else ()))
                runner.run(track_new_run(world, result))
                seen.setdefault(op, set()).add(result if result[0] == "error" else "ok")

            check()
        finally:
            runner.run(close_world(world))
    # Every entry point was refused and also succeeded at least once.
    for op in OPS:
        assert "ok" in seen.get(op, ()) and len(seen[op]) > 1, (op, seen.get(op))


# -- every hostile value at every argument, deterministically --------------------------------------


def sweep_calls(world: World, value: Any) -> Iterator[tuple[str, Call]]:
    """``value`` at each argument of each entry point, the other arguments valid."""
    ok_input = EdgeIn(name="sweep")
    run = RunRef(index=WAITING)
    for arg_name in ("idempotency_key", "tags", "delay", "priority"):
        kw = {arg_name: value}
        yield f"start({arg_name}=)", lambda side, kw=kw: side.handle.start(ok_input, **kw)
    yield "start(input)", lambda side: side.handle.start(value)
    yield "start(input.name)", lambda side: side.handle.start({"name": value})
    yield "start(input.data)", lambda side: side.handle.start({"name": "s", "data": value})
    yield "engine.start(name)", lambda side: side.engine.start(value, ok_input)
    yield "signal(run_id)", lambda side: side.engine.signal(value, "poke", {})
    yield "signal(name)", lambda side: side.engine.signal(run(side), value, {})
    yield "signal(payload)", lambda side: side.engine.signal(run(side), "poke", value)
    yield (
        "signal(payload.value)",
        lambda side: side.engine.signal(run(side), "poke", {"value": value}),
    )
    yield (
        "signal(idempotency_key=)",
        lambda side: side.engine.signal(run(side), "poke", {}, idempotency_key=value),
    )
    yield from event_sweep_calls(value)
    yield "retry(run_id)", lambda side: side.engine.retry(value)
    yield "cancel(run_id)", lambda side: side.engine.cancel(value)
    done = RunRef(index=DONE)
    yield "cancel(reason=)", lambda side: side.engine.cancel(done(side), reason=value)
    yield "status(run_id)", lambda side: side.engine.status(value)
    for arg_name in ("name", "status", "tag", "limit", "cursor"):
        kw = {arg_name: value}
        if arg_name == "cursor":

            async def listed(side: Side, kw: dict[str, Any] = kw) -> Any:
                await side.engine.list_runs(**kw)
                return "page"

            yield "list_runs(cursor=)", listed
        else:
            yield f"list_runs({arg_name}=)", lambda side, kw=kw: side.engine.list_runs(**kw)
    for via_engine in (False, True):
        where = "engine" if via_engine else "handle"
        yield (
            f"{where}.result(run_id)",
            result_call(world, lambda side: value, 0, via_engine=via_engine),
        )
        yield (
            f"{where}.result(timeout=)",
            result_call(world, RunRef(index=DONE), value, via_engine=via_engine),
        )
        for label, index in (("waiting", WAITING), ("failed", FAILED), ("canceled", CANCELED)):
            yield (
                f"{where}.result({label}, timeout=)",
                result_call(world, RunRef(index=index), value, via_engine=via_engine),
            )


def event_sweep_calls(value: Any) -> Iterator[tuple[str, Call]]:
    """``value`` at each argument of ``publish``, ``signal_with_start`` and the keyed starts
    (debounce, singleton), the other arguments valid."""
    ok = {"name": "ev"}

    def publish(side: Side, *args: Any, **kw: Any) -> Any:
        return side.engine.publish(*args, **kw)

    def sws(side: Side, **changed: Any) -> Any:
        kw: dict[str, Any] = {"idempotency_key": "sws"} | changed
        args = [kw.pop(k, d) for k, d in (("input", ok), ("signal", "poke"), ("payload", {}))]
        return side.engine.signal_with_start(side.handle, *args, **kw)

    yield "publish(event)", lambda side: publish(side, value, ok)
    yield "publish(payload)", lambda side: publish(side, "edge.poked", value)
    yield "publish(payload.name)", lambda side: publish(side, "edge.poked", {"name": value})
    yield (
        "publish(idempotency_key=)",
        lambda side: publish(side, "edge.poked", ok, idempotency_key=value),
    )
    for arg_name in ("input", "signal", "payload", "idempotency_key", "signal_idempotency_key"):
        yield f"signal_with_start({arg_name})", lambda side, a=arg_name: sws(side, **{a: value})
    yield "start(key=)", lambda side: side.handle.start(ok, key=value, singleton=True)
    yield "start(debounce=)", lambda side: side.handle.start(ok, key="d", debounce=value)
    yield "start(singleton=)", lambda side: side.handle.start(ok, key="s", singleton=value)


async def test_every_hostile_value_at_every_argument(database_url: str) -> None:
    world = await open_world(database_url)
    try:
        for i, value in enumerate(HOSTILE):
            for where, call in sweep_calls(world, value):
                try:
                    result = await check_call(world, call, USER_CODES)
                except Exception as exc:  # a plain exception escaped, or a check failed
                    raise AssertionError(
                        f"{where} with HOSTILE[{i}]={shown(value)}: {type(exc).__name__}: {exc}"
                    ) from exc
                await track_new_run(world, result)
    finally:
        await close_world(world)


# -- regressions: every bug the property and the sweep found, pinned by example ---------------


REGRESSIONS: list[tuple[str, str, Callable[[Engine, FlowHandle[EdgeIn, EdgeOut]], Any]]] = [
    # engine.start: the FLOW_UNKNOWN message was built with repr(name), which raises for
    # 10**5000 (ValueError), a 5,000-level dict (RecursionError) and a broken __repr__.
    ("INPUT_INVALID", "start name int", lambda e, h: e.start(10**5000, EdgeIn(name="x"))),  # type: ignore[arg-type]
    ("INPUT_INVALID", "start name deep", lambda e, h: e.start(nested_dict(5000), {"name": "x"})),  # type: ignore[arg-type]
    ("INPUT_INVALID", "start name repr", lambda e, h: e.start(BadStr(), {"name": "x"})),  # type: ignore[arg-type]
    ("FLOW_UNKNOWN", "start name long", lambda e, h: e.start("n" * 100_000, {"name": "x"})),
    # result/wait: math.isfinite(10**5000) raised OverflowError before the range check.
    ("INPUT_INVALID", "result timeout", lambda e, h: h.result(uuid.uuid4(), timeout=10**5000)),
    ("INPUT_INVALID", "wait timeout", lambda e, h: e.result(uuid.uuid4(), timeout=2**1100)),
    # parse_duration: the same OverflowError for a huge integer number of seconds.
    ("DURATION_INVALID", "delay int", lambda e, h: h.start({"name": "x"}, delay=10**5000)),
    ("DURATION_INVALID", "delay -int", lambda e, h: h.start({"name": "x"}, delay=-(10**5000))),
    # list_runs: repr(cursor) and repr(status item) raised in the INPUT_INVALID message; a
    # status iterable that fails to iterate escaped as its own exception.
    ("INPUT_INVALID", "cursor int", lambda e, h: e.list_runs(cursor=10**5000)),
    ("INPUT_INVALID", "status int", lambda e, h: e.list_runs(status=[10**5000])),  # type: ignore[list-item]
    ("INPUT_INVALID", "status repr", lambda e, h: e.list_runs(status=[BadStr()])),  # type: ignore[list-item]
    ("INPUT_INVALID", "status iter", lambda e, h: e.list_runs(status=BadStr())),  # type: ignore[arg-type]
    ("INPUT_INVALID", "status bytes", lambda e, h: e.list_runs(status=b"done")),  # type: ignore[arg-type]
    ("INPUT_INVALID", "status map", lambda e, h: e.list_runs(status={"done": 1})),  # type: ignore[arg-type]
    ("INPUT_INVALID", "status many", lambda e, h: e.list_runs(status=["done"] * 100 + ["x"])),
    # tags: an iterable that fails to iterate escaped; a mapping was stored as its keys.
    ("INPUT_INVALID", "tags iter", lambda e, h: h.start({"name": "x"}, tags=BadStr())),
    ("INPUT_INVALID", "tags map", lambda e, h: h.start({"name": "x"}, tags={"a": 1})),  # type: ignore[arg-type]
    ("INPUT_INVALID", "tags bytearray", lambda e, h: h.start({"name": "x"}, tags=bytearray(b"a"))),  # type: ignore[arg-type]
    # From the brief, kept explicit: a string is not a list of tags.
    ("INPUT_INVALID", "tags str", lambda e, h: h.start({"name": "x"}, tags="abc")),
]


@pytest.mark.parametrize("memory", [False, True], ids=["postgres", "memory"])
async def test_regressions_are_refused_with_codes_and_write_nothing(
    database_url: str, memory: bool
) -> None:
    engine = Engine.in_memory() if memory else Engine(database_url, pool_size=2)
    handle = edge_flow(engine)
    async with engine:
        started = await handle.start({"name": "kept"})
        before = None if memory else counts(database_url)
        if before is not None:  # counts() covers every iterflow and procrastinate table
            iterflow = {f"iterflow.{t}" for t in ("runs", "steps", "signals", "timers", "events")}
            procrastinate = {"procrastinate_jobs", "procrastinate_events"}
            assert iterflow | procrastinate | {"procrastinate_periodic_defers"} <= set(before)
        wrong: list[str] = []
        for code, what, call in REGRESSIONS:
            try:
                await call(engine, handle)
            except FlowError as exc:
                if exc.error_code != code or len(exc.message) > 2_000:
                    wrong.append(f"{what}: {exc.error_code} ({len(exc.message)} chars)")
            except Exception as exc:
                wrong.append(f"{what}: {type(exc).__name__}: {shown(str(exc))}")
            else:
                wrong.append(f"{what}: accepted")
        assert not wrong, wrong
        assert memory or counts(database_url) == before
        page = await engine.list_runs()
        assert [r.id for r in page.runs] == [started.run_id]
        assert (await engine.status(started.run_id)).run.tags == ()


def test_durations_refuse_huge_integers() -> None:
    for value in (10**5000, -(10**5000), 2**1024, float("nan"), 1e300):
        with pytest.raises(DurationInvalid):
            parse_duration(value)
    assert parse_duration(2**20).total_seconds() == 2**20
