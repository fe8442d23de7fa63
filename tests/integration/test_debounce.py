"""Debounce and singletons on real PostgreSQL: starts of one key within the quiet period collapse
into one run that begins after it with the latest (or first) input; a singleton start returns
the key's live run; both hold under concurrent callers in several engines (the advisory lock
per flow and key), and bad arguments are refused writing nothing. The runnable example of
docs/flow-control.md is executed here too."""

from __future__ import annotations

import asyncio
import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import create_async_engine

from iterflow import Engine, FlowContext, FlowError
from iterflow.core.models import RunStatus
from iterflow.runtime.engine import FlowHandle
from iterflow.store.urls import asyncpg_url
from tests.integration.flows import counts, eventually, running, settle, sql

ROOT = Path(__file__).resolve().parents[2]


class Edit(BaseModel):
    doc: str
    rev: int


class Indexed(BaseModel):
    doc: str
    rev: int


def reindex_flow(engine: Engine) -> FlowHandle[Edit, Indexed]:
    @engine.flow("reindex", input=Edit, output=Indexed, signals={"go": Edit})
    async def reindex(ctx: FlowContext, edit: Edit) -> Indexed:
        if edit.doc == "hold":  # stays live until signalled (singleton tests)
            await ctx.signal("go", Edit)
        return Indexed(doc=edit.doc, rev=edit.rev)

    return reindex


async def test_starts_within_the_quiet_period_collapse_into_one_run_with_the_last_input(
    eng: Engine,
) -> None:
    handle = reindex_flow(eng)
    results = [
        await handle.start(Edit(doc="a", rev=rev), debounce="1h", key="doc-a") for rev in range(5)
    ]
    assert [r.created for r in results] == [True, False, False, False, False]
    assert len({r.run_id for r in results}) == 1
    run = (await eng.status(results[0].run_id)).run
    assert run.status is RunStatus.PENDING and run.input == {"doc": "a", "rev": 4}
    assert run.wake_at is not None and run.wake_at > run.created_at
    other = await handle.start(Edit(doc="b", rev=0), debounce="1h", key="doc-b")
    assert other.created and other.run_id != run.id
    first = await handle.start(Edit(doc="c", rev=0), debounce="1h", key="c", debounce_keep="first")
    await handle.start(Edit(doc="c", rev=1), debounce="1h", key="c", debounce_keep="first")
    assert (await eng.status(first.run_id)).run.input == {"doc": "c", "rev": 0}


async def test_the_debounced_run_begins_after_the_quiet_period(database_url: str) -> None:
    engine = Engine(database_url, pool_size=4)
    handle = reindex_flow(engine)
    async with running(engine):
        await _begins_after_the_quiet_period(engine, handle)


async def _begins_after_the_quiet_period(engine: Engine, handle: FlowHandle[Edit, Indexed]) -> None:
    first = await handle.start(Edit(doc="a", rev=1), debounce="2s", key="doc-a")
    last = await handle.start(Edit(doc="a", rev=2), debounce="2s", key="doc-a")
    assert last.run_id == first.run_id and not last.created
    due = (await engine.status(first.run_id)).run.wake_at  # the last start + 2 s
    created_at = (await engine.status(first.run_id)).run.created_at
    assert due is not None and (due - created_at).total_seconds() >= 2
    detail = await settle(engine, first.run_id)
    assert detail.run.output == {"doc": "a", "rev": 2}
    assert detail.run.started_at is not None and detail.run.started_at >= due
    assert detail.run.claims == 1
    after = await handle.start(Edit(doc="a", rev=3), debounce="2s", key="doc-a")
    assert after.created and after.run_id != first.run_id  # the first one began: a new run


async def test_concurrent_debounced_and_singleton_starts_make_one_run_per_key(
    database_url: str,
) -> None:
    engines = [Engine(database_url, pool_size=6) for _ in range(2)]
    handles = [reindex_flow(e) for e in engines]
    for e in engines:
        await e.open()
    try:

        async def start(i: int, **kw: Any) -> Any:
            doc = "hold" if kw.get("singleton") else "a"
            return await handles[i % 2].start(Edit(doc=doc, rev=i), **kw)

        debounced = await asyncio.gather(*(start(i, debounce="1h", key="d") for i in range(16)))
        singles = await asyncio.gather(*(start(i, singleton=True, key="s") for i in range(16)))
        for results in (debounced, singles):
            assert len({r.run_id for r in results}) == 1
            assert sum(r.created for r in results) == 1
        assert sql(
            database_url, "SELECT run_key, count(*) FROM iterflow.runs GROUP BY 1 ORDER BY 1"
        ) == [
            ("d", 1),
            ("s", 1),
        ]
    finally:
        for e in engines:
            await e.close()


async def test_keyed_starts_join_the_callers_transaction(engine: Engine, database_url: str) -> None:
    handle = reindex_flow(engine)
    app = create_async_engine(asyncpg_url(database_url))
    try:
        async with app.connect() as conn:
            trans = await conn.begin()
            first = await handle.start(Edit(doc="a", rev=1), debounce="1h", key="k", conn=conn)
            joined = await handle.start(Edit(doc="a", rev=2), debounce="1h", key="k", conn=conn)
            assert first.created and (joined.run_id, joined.created) == (first.run_id, False)
            await trans.rollback()
        assert sql(database_url, "SELECT count(*) FROM iterflow.runs") == [(0,)]
        async with app.connect() as conn:
            trans = await conn.begin()
            kept = await handle.start(Edit(doc="a", rev=3), singleton=True, key="s", conn=conn)
            await trans.commit()
        again = await handle.start(Edit(doc="a", rev=4), singleton=True, key="s")
        assert (again.run_id, again.created) == (kept.run_id, False)
    finally:
        await app.dispose()


async def test_a_singleton_start_returns_the_live_run_until_it_ends(fresh: Engine) -> None:
    handle = reindex_flow(fresh)
    async with running(fresh) as eng:
        await _singleton_until_it_ends(eng, handle)


async def _singleton_until_it_ends(eng: Engine, handle: FlowHandle[Edit, Indexed]) -> None:
    first = await handle.start(Edit(doc="hold", rev=1), singleton=True, key="nightly")
    if eng.database_url == "memory://":
        await eng.drain()
    else:
        await eventually(
            lambda: _status_is(eng, first.run_id, RunStatus.AWAITING_SIGNAL), what="waiting"
        )
    again = await handle.start(Edit(doc="hold", rev=2), singleton=True, key="nightly")
    assert (again.run_id, again.created, again.status) == (
        first.run_id,
        False,
        RunStatus.AWAITING_SIGNAL,
    )
    whole_flow = await handle.start(Edit(doc="x", rev=0), singleton=True)
    assert whole_flow.created  # no key: the flow itself is the key, and it has no live run yet
    await eng.signal(first.run_id, "go", {"doc": "hold", "rev": 1})
    done = await settle(eng, first.run_id)
    assert done.run.status is RunStatus.DONE
    later = await handle.start(Edit(doc="y", rev=3), singleton=True, key="nightly")
    assert later.created and later.run_id != first.run_id


async def _status_is(engine: Engine, run_id: Any, status: RunStatus) -> bool:
    return (await engine.status(run_id)).run.status is status


async def test_bad_debounce_and_singleton_arguments_are_refused_writing_nothing(
    engine: Engine, database_url: str
) -> None:
    handle = reindex_flow(engine)
    before = counts(database_url)
    ok = Edit(doc="a", rev=0)
    cases: list[tuple[str, dict[str, Any]]] = [
        ("INPUT_INVALID", {"key": "k"}),  # a key without debounce or singleton
        ("INPUT_INVALID", {"key": "k\x00", "singleton": True}),
        ("INPUT_INVALID", {"key": "\ud800", "debounce": "1s"}),
        ("INPUT_INVALID", {"key": "", "singleton": True}),
        ("INPUT_INVALID", {"key": "x" * 10_001, "singleton": True}),
        ("INPUT_INVALID", {"key": 5, "singleton": True}),
        ("INPUT_INVALID", {"singleton": "yes"}),
        ("INPUT_INVALID", {"debounce": "1s", "debounce_keep": "middle"}),
        ("INPUT_INVALID", {"debounce": "1s", "delay": "1s"}),
        ("INPUT_INVALID", {"debounce": "1s", "idempotency_key": "i"}),
        ("INPUT_INVALID", {"debounce": 0}),
        ("DURATION_INVALID", {"debounce": "-1s"}),
        ("DURATION_INVALID", {"debounce": float("nan")}),
        ("DURATION_INVALID", {"debounce": 10**5000}),
        ("DURATION_INVALID", {"debounce": "soon"}),
    ]
    for code, kw in cases:
        with pytest.raises(FlowError) as info:
            await handle.start(ok, **kw)
        assert info.value.error_code == code, (kw, info.value)
        with pytest.raises(FlowError) as untyped:
            await engine.start("reindex", ok, **kw)
        assert untyped.value.error_code == code
    assert counts(database_url) == before


async def test_the_docs_example_runs(database_url: str) -> None:
    spec = importlib.util.spec_from_file_location(
        "debounce_example", ROOT / "docs" / "examples" / "debounce.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    indexed, same = await module.main(database_url)
    assert indexed == {"doc": "readme", "revision": 3} and same


def test_the_docs_section_shows_the_example() -> None:
    text = (ROOT / "docs" / "flow-control.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert (ROOT / "docs" / "examples" / "debounce.py").read_text() in blocks
