"""The runs list's filters, counts and change feed, on both stores (the dashboard's queries)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from iterflow.core.models import RunFilter, RunRecord, RunStatus
from iterflow.store.base import Store

from .support import LEASE, new_run


async def _list(store: Store, where: RunFilter, **kw: object) -> list[uuid.UUID]:
    args: dict[str, object] = {
        "name": None,
        "statuses": (),
        "tag": None,
        "limit": 100,
        "before_seq": None,
        "filters": where,
    }
    args.update(kw)
    return [r.id for r in await store.list_runs(**args)]  # type: ignore[arg-type]


async def _seed(store: Store) -> list[RunRecord]:
    parent = new_run(name="order", version=1, tags=("a", "b"))
    await store.create_run(parent)
    specs = [
        {"name": "order", "version": 2, "tags": ("a",), "parent_run_id": parent.id},
        {"name": "order", "version": 2, "tags": ("b",), "idempotency_key": "k-1"},
        {"name": "mail", "version": 1, "meta": {"schedule_id": "nightly"}, "tags": ("x",)},
        {"name": "mail", "version": 1, "meta": {"schedule_id": "other"}},
    ]
    for spec in specs:
        await store.create_run(new_run(**spec))
    runs = await store.list_runs(name=None, statuses=(), tag=None, limit=10, before_seq=None)
    runs.reverse()  # creation order
    claim = await store.claim(runs[3].id, "w1", LEASE)  # mail/nightly finishes
    assert claim is not None
    await store.finish(claim.lease, RunStatus.DONE, {"ok": True}, None)
    return await store.list_runs(name=None, statuses=(), tag=None, limit=10, before_seq=None)


async def test_each_filter_narrows_like_run_filter_matches(store: Store) -> None:
    newest = await _seed(store)
    runs = list(reversed(newest))
    parent, child, keyed, nightly, other = runs
    ids = [r.id for r in newest]
    cases: list[tuple[RunFilter, list[uuid.UUID]]] = [
        (RunFilter(), ids),
        (RunFilter(name="order", version=2), [keyed.id, child.id]),
        (RunFilter(tags=("a", "b")), [parent.id]),
        (RunFilter(tags=("a",)), [child.id, parent.id]),
        (RunFilter(statuses=(RunStatus.DONE,)), [nightly.id]),
        (RunFilter(idempotency_key="k-1"), [keyed.id]),
        (RunFilter(parent_run_id=parent.id), [child.id]),
        (RunFilter(schedule_id="nightly"), [nightly.id]),
        (RunFilter(id_prefix=other.id.hex[:6]), [other.id]),
        (RunFilter(id_prefix=other.id.hex), [other.id]),
        (RunFilter(created_after=keyed.created_at), [other.id, nightly.id, keyed.id]),
        (RunFilter(created_before=keyed.created_at), [child.id, parent.id]),
        (RunFilter(finished_after=nightly.created_at), [nightly.id]),
        (
            RunFilter(finished_before=nightly.finished_at + timedelta(seconds=1)),  # type: ignore[operator]
            [nightly.id],
        ),
        (RunFilter(finished_before=nightly.created_at), []),
    ]
    for where, expected in cases:
        # the id ordering ties created_at windows to creation order; run ids are random, so a
        # prefix could match two runs: compare with the pure predicate too
        assert [r.id for r in newest if where.matches(r)] == expected, where
        assert await _list(store, where) == expected, where


async def test_older_keyword_filters_combine_with_the_filter(store: Store) -> None:
    newest = await _seed(store)
    found = await _list(store, RunFilter(name="order"), tag="b")
    assert found == [r.id for r in newest if r.name == "order" and "b" in r.tags]


async def test_oldest_first_keyset_pages(store: Store) -> None:
    newest = await _seed(store)
    oldest = [r.id for r in reversed(newest)]
    first = await store.list_runs(
        name=None, statuses=(), tag=None, limit=2, before_seq=None, after_seq=0
    )
    assert [r.id for r in first] == oldest[:2]
    rest = await store.list_runs(
        name=None, statuses=(), tag=None, limit=10, before_seq=None, after_seq=first[-1].seq
    )
    assert [r.id for r in rest] == oldest[2:]


async def test_count_runs_per_status(store: Store) -> None:
    await _seed(store)
    assert await store.count_runs(RunFilter()) == {RunStatus.PENDING: 4, RunStatus.DONE: 1}
    assert await store.count_runs(RunFilter(name="mail")) == {
        RunStatus.PENDING: 1,
        RunStatus.DONE: 1,
    }
    assert await store.count_runs(RunFilter(name="nobody")) == {}


async def test_changes_since_lists_changed_runs_once_with_their_status(store: Store) -> None:
    _, token = await store.changes_since(None, 100)
    assert await store.changes_since(token, 100) == ([], token)
    run = new_run()
    await store.create_run(run)
    changed, after_start = await store.changes_since(token, 100)
    assert changed == [(run.id, RunStatus.PENDING)]
    assert after_start > token
    claim = await store.claim(run.id, "w1", LEASE)
    assert claim is not None
    await store.finish(claim.lease, RunStatus.DONE, 1, None)
    changed, after_finish = await store.changes_since(after_start, 100)
    assert changed == [(run.id, RunStatus.DONE)]
    assert (await store.changes_since(token, 100))[0] == [(run.id, RunStatus.DONE)]
    assert await store.changes_since(after_finish, 100) == ([], after_finish)


async def test_the_engine_refuses_unusable_filters_before_reading() -> None:
    import pytest

    from iterflow import Engine
    from iterflow.core.errors import InputInvalid

    naive = datetime(2026, 1, 1)
    bad: list[dict[str, object]] = [
        {"version": "2"},
        {"version": 2**40},
        {"tags": "vip"},
        {"tags": ["\x00"]},
        {"created_after": naive},
        {"finished_before": "2026-01-01"},
        {"parent": "nope"},
        {"schedule": 5},
        {"id_prefix": "xyz"},
        {"id_prefix": ""},
        {"id_prefix": "a" * 33},
        {"oldest_first": "yes"},
    ]
    async with Engine.in_memory() as engine:
        for kw in bad:
            with pytest.raises(InputInvalid):
                await engine.list_runs(**kw)  # type: ignore[arg-type]
        for kw in bad[:-1]:
            with pytest.raises(InputInvalid):
                await engine.count_runs(**kw)  # type: ignore[arg-type]
        page = await engine.list_runs(
            id_prefix="3FA8-5F64", created_after=naive.replace(tzinfo=UTC)
        )
        assert page.runs == ()
