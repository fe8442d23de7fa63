"""Starts beyond one plain run, on both stores: a batch in one transaction (``publish``), a start
that buffers a signal (``signal_with_start``), and keyed starts (debounce, singleton). Each
decision's rows, events and queued wake-up are asserted, and a refused call writes nothing.

(``test_events_contract.py`` is about the timeline events every write records.)"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

import pytest

from iterflow.core.debounce import DEBOUNCE_META_KEY
from iterflow.core.errors import DataRejected, IdempotencyConflict
from iterflow.core.models import NewRun, RunStatus
from iterflow.core.states import EventType
from iterflow.store.base import ScheduleStore, Store
from tests.contract.support import LEASE, Timeline, new_run

WINDOW = timedelta(seconds=30)


async def _now(store: Store) -> Any:
    return await cast(ScheduleStore, store).schedule_now()


async def _names(store: Store) -> list[tuple[str, Any]]:
    runs = await store.list_runs(name=None, statuses=(), tag=None, limit=100, before_seq=None)
    return sorted((r.name, r.input) for r in runs)


def debounced(key: str = "k", keep: str = "last", **kw: Any) -> NewRun:
    meta = {DEBOUNCE_META_KEY: keep}
    return new_run(run_key=key, debounce=keep, delay=WINDOW, meta=meta, **kw)


async def _finish(store: Store, run_id: Any) -> None:
    claim = await store.claim(run_id, "w1", LEASE)
    assert claim is not None
    await store.finish(claim.lease, RunStatus.DONE, None, None)


# -- create_runs: one transaction ------------------------------------------------------------------


async def test_a_batch_starts_every_run_with_its_event_and_wake(store: Store) -> None:
    a = new_run(name="a", idempotency_key="event:e:1", input_hash="h")
    b = new_run(name="b", idempotency_key="event:e:1", input_hash="h")
    results = await store.create_runs([a, b])
    assert [(r.run_id, r.created, r.status) for r in results] == [
        (a.id, True, RunStatus.PENDING),
        (b.id, True, RunStatus.PENDING),
    ]
    for run in (a, b):
        assert [t for t, _, _ in await Timeline(store, run.id).new()] == [EventType.STARTED]
        assert await store.pending_wake(run.id) is not None
    again = await store.create_runs(
        [new_run(name="a", idempotency_key="event:e:1", input_hash="h"),
         new_run(name="b", idempotency_key="event:e:1", input_hash="h")]
    )  # fmt: skip
    assert [(r.run_id, r.created) for r in again] == [(a.id, False), (b.id, False)]
    assert len(await _names(store)) == 2


async def test_a_batch_with_one_refused_run_writes_none(store: Store) -> None:
    await store.create_runs([new_run(name="b", idempotency_key="k", input_hash="h1")])
    fresh = new_run(name="a", idempotency_key="k", input_hash="h1")
    with pytest.raises(IdempotencyConflict):
        await store.create_runs([fresh, new_run(name="b", idempotency_key="k", input_hash="h2")])
    with pytest.raises(DataRejected):
        await store.create_runs([fresh, new_run(name="c", tags=("a\x00",))])
    assert await store.get_run(fresh.id) is None
    assert [n for n, _ in await _names(store)] == ["b"]


# -- signal_with_start ----------------------------------------------------------------------------


async def test_signal_with_start_starts_the_run_with_the_signal_buffered(store: Store) -> None:
    run = new_run(idempotency_key="order-1")
    started, signal = await store.signal_with_start(run, "go", {"n": 1}, None, max_signals=10)
    assert (started.run_id, started.created, started.status) == (run.id, True, RunStatus.PENDING)
    assert signal.kind == "buffered" and signal.signal_id is not None
    detail = await store.detail(run.id)
    assert detail is not None
    assert [(s.name, s.payload, s.consumed_at) for s in detail.signals] == [("go", {"n": 1}, None)]
    events = await Timeline(store, run.id).new()
    assert [t for t, _, _ in events] == [EventType.STARTED, EventType.SIGNAL_RECEIVED]
    assert events[1][2] == {"name": "go", "signal_id": signal.signal_id, "waiting": False}
    assert await store.pending_wake(run.id) is not None
    claim = await store.claim(run.id, "w1", LEASE)
    assert claim is not None and [s.name for s in claim.inbox] == ["go"]


async def test_signal_with_start_delivers_to_the_run_its_key_names(store: Store) -> None:
    first = new_run(idempotency_key="order-1", input={"n": 1})
    await store.signal_with_start(first, "go", 1, None, max_signals=10)
    other_input = new_run(idempotency_key="order-1", input={"n": 2})  # ignored: no conflict
    started, signal = await store.signal_with_start(other_input, "go", 2, "s2", max_signals=10)
    assert (started.run_id, started.created, signal.kind) == (first.id, False, "buffered")
    _, repeated = await store.signal_with_start(other_input, "go", 2, "s2", max_signals=10)
    assert repeated.kind == "duplicate"
    detail = await store.detail(first.id)
    assert detail is not None and [s.payload for s in detail.signals] == [1, 2]
    assert detail.run.input == {"n": 1}
    await _finish(store, first.id)
    started, closed = await store.signal_with_start(other_input, "go", 3, None, max_signals=10)
    assert (started.run_id, started.status, closed.kind) == (first.id, RunStatus.DONE, "closed")
    assert len(await _names(store)) == 1


async def test_signal_with_start_refuses_bad_text_writing_nothing(store: Store) -> None:
    run = new_run(idempotency_key="order-1")
    with pytest.raises(DataRejected):
        await store.signal_with_start(run, "go\x00", 1, None, max_signals=10)
    assert await store.get_run(run.id) is None


# -- debounce -------------------------------------------------------------------------------------


async def test_a_debounced_start_joins_the_waiting_run_and_restarts_its_quiet_period(
    store: Store,
) -> None:
    first = debounced(input={"n": 1})
    created = await store.create_run(first)
    run = await store.get_run(first.id)
    assert created.created and run is not None and run.wake_at is not None
    assert run.wake_at - run.created_at == WINDOW
    second = debounced(input={"n": 2})
    joined = await store.create_run(second)
    assert (joined.run_id, joined.created, joined.status) == (first.id, False, RunStatus.PENDING)
    assert await store.get_run(second.id) is None
    after = await store.get_run(first.id)
    assert after is not None and after.input == {"n": 2} and after.wake_at is not None
    assert after.wake_at >= run.wake_at and after.wake_at - await _now(store) <= WINDOW
    wake = await store.pending_wake(first.id)
    assert wake is not None and wake.scheduled_at == after.wake_at
    assert len(await _names(store)) == 1


async def test_debounce_keep_first_keeps_the_first_input(store: Store) -> None:
    first = debounced(keep="first", input={"n": 1}, limit_key="c1")
    await store.create_run(first)
    joined = await store.create_run(debounced(keep="first", input={"n": 2}, limit_key="c2"))
    run = await store.get_run(first.id)
    assert joined.run_id == first.id and run is not None
    assert (run.input, run.limit_key) == ({"n": 1}, "c1")


async def test_a_joining_input_brings_its_limit_key(store: Store) -> None:
    first = debounced(input={"n": 1}, limit_key="c1")
    await store.create_run(first)
    await store.create_run(debounced(input={"n": 2}, limit_key="c2"))
    run = await store.get_run(first.id)
    assert run is not None and (run.input, run.limit_key) == ({"n": 2}, "c2")


async def test_a_debounced_start_of_another_version_does_not_join(store: Store) -> None:
    first = debounced(input={"n": 1})
    await store.create_run(first)
    newer = debounced(input={"n": 2}, version=2)
    assert (await store.create_run(newer)).created
    run = await store.get_run(first.id)
    assert run is not None and run.input == {"n": 1}
    joined = await store.create_run(debounced(input={"n": 3}, version=2))
    assert (joined.run_id, joined.created) == (newer.id, False)


async def test_a_debounced_run_a_worker_began_is_not_joined(store: Store) -> None:
    first = debounced(input={"n": 1})
    await store.create_run(first)
    other_key = await store.create_run(debounced(key="other", input={"n": 9}))
    assert other_key.created and other_key.run_id != first.id
    assert await store.claim(first.id, "w1", LEASE) is not None  # the quiet period ended
    second = debounced(input={"n": 2})
    after = await store.create_run(second)
    assert (after.run_id, after.created) == (second.id, True)
    plain = new_run(run_key="k2", delay=WINDOW)  # a keyed run that was not debounced
    await store.create_run(plain)
    assert (await store.create_run(debounced(key="k2"))).created


# -- singleton ------------------------------------------------------------------------------------


async def test_a_singleton_start_returns_the_live_run_of_its_key(store: Store) -> None:
    first = new_run(run_key="nightly", singleton=True)
    await store.create_run(first)
    again = await store.create_run(new_run(run_key="nightly", singleton=True, input={"n": 5}))
    assert (again.run_id, again.created, again.status) == (first.id, False, RunStatus.PENDING)
    other = await store.create_run(new_run(run_key="weekly", singleton=True))
    assert other.created
    other_flow = await store.create_run(new_run(name="g", run_key="nightly", singleton=True))
    assert other_flow.created
    await store.claim(first.id, "w1", LEASE)
    running = await store.create_run(new_run(run_key="nightly", singleton=True))
    assert (running.run_id, running.status) == (first.id, RunStatus.RUNNING)
    await store.cancel(first.id, "ended")
    after = new_run(run_key="nightly", singleton=True)
    assert (await store.create_run(after)).run_id == after.id


async def test_a_singleton_start_with_a_known_idempotency_key_returns_that_run(
    store: Store,
) -> None:
    first = new_run(run_key="s", singleton=True, idempotency_key="i1", input_hash="h")
    await store.create_run(first)
    await store.cancel(first.id, "ended")
    again = await store.create_run(
        new_run(run_key="s", singleton=True, idempotency_key="i1", input_hash="h")
    )
    assert (again.run_id, again.created, again.status) == (first.id, False, RunStatus.CANCELED)
    with pytest.raises(IdempotencyConflict):
        await store.create_run(
            new_run(run_key="s", singleton=True, idempotency_key="i1", input_hash="h2")
        )


async def test_a_run_key_postgresql_refuses_is_data_rejected_on_both_stores(store: Store) -> None:
    for bad in ("a\x00b", "lone \ud800"):
        with pytest.raises(DataRejected):
            await store.create_run(new_run(run_key=bad, singleton=True))
    assert await _names(store) == []
