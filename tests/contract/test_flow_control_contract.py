"""Flow control on both stores: routing by flow version, concurrency and rate limits.

The Store is given a :class:`~iterflow.core.limits.Gate` at claim time; the worker builds it from
its registry. A run's wake-up is "fetched" here by dropping it from the queue before the claim,
as a worker does (``take``).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

import sqlalchemy as sa

from iterflow.core.explain import explain
from iterflow.core.limits import Gate, Limits, RateLimit
from iterflow.core.models import RunStatus
from iterflow.store.base import Claim, Store
from iterflow.store.memory import MemoryStore
from iterflow.store.postgres import PostgresStore

from .support import LEASE, new_run

CONCURRENCY = Limits(concurrency=2, key=lambda i: i)
RATE = Limits(rate=RateLimit(2, timedelta(minutes=1)))


def gate(limits: Limits | None = None, served: tuple[str, ...] = ("f@1",)) -> Gate:
    return Gate(frozenset(served), {k: limits for k in served} if limits else {})


async def take(store: Store, run_id: uuid.UUID) -> None:
    """The worker fetched the run's wake-up (it is no longer queued)."""
    if isinstance(store, MemoryStore):
        store._wakes.pop(run_id, None)
        return
    assert isinstance(store, PostgresStore)
    async with store._engine.begin() as conn:
        await conn.execute(
            sa.text("DELETE FROM procrastinate_jobs WHERE queueing_lock = :lock"),
            {"lock": str(run_id)},
        )


async def attempt(store: Store, run_id: uuid.UUID, g: Gate) -> Claim | None:
    await take(store, run_id)
    return await store.claim(run_id, "w1", LEASE, g)


async def started(store: Store, n: int, **kw: object) -> list[uuid.UUID]:
    ids = []
    for _ in range(n):
        run = new_run(**kw)
        await store.create_run(run)
        ids.append(run.id)
    return ids


async def test_a_flow_version_the_gate_does_not_serve_stays_queued(store: Store) -> None:
    (run_id,) = await started(store, 1, version=2)
    assert await attempt(store, run_id, gate()) is None  # an old worker: f@1 only
    run = await store.get_run(run_id)
    assert run is not None and run.status is RunStatus.PENDING and run.error is None
    assert run.claims == 0
    claim = await store.claim(run_id, "w2", LEASE, gate(served=("f@1", "f@2")))
    assert claim is not None and claim.run.version == 2


async def test_concurrency_limit_holds_runs_and_a_release_wakes_them_by_priority(
    store: Store,
) -> None:
    g = gate(CONCURRENCY)
    first, second, low = await started(store, 3, limit_key="k")
    (high,) = await started(store, 1, limit_key="k", priority=5)
    (other,) = await started(store, 1, limit_key="j")
    a = await attempt(store, first, g)
    b = await attempt(store, second, g)
    assert a is not None and b is not None
    assert await attempt(store, low, g) is None
    assert await attempt(store, high, g) is None
    for held_id in (low, high):
        run = await store.get_run(held_id)
        assert run is not None and run.status is RunStatus.PENDING  # waiting, not failed
        assert run.held is not None and run.held["limit"] == "concurrency"
        assert (run.held["key"], run.held["live"], run.held["max"]) == ("k", 2, 2)
        assert await store.pending_wake(held_id) is None  # nothing spins
        said = explain(run, now=run.updated_at)
        assert said.state == "held"
        assert "held back by concurrency limit of flow f key k (2/2 live)" in said.summary
    # another key has its own slots: a hot key does not hold it back
    assert await attempt(store, other, g) is not None

    await store.finish(a.lease, RunStatus.DONE, 1, None)
    assert await store.release_limit("f", "k", CONCURRENCY) == 1
    assert await store.pending_wake(high) is not None  # the higher priority first
    assert await store.pending_wake(low) is None
    assert await store.release_limit("f", "k", CONCURRENCY) == 0  # it counts the woken one
    claim = await attempt(store, high, g)
    assert claim is not None and claim.run.held is None
    assert await attempt(store, low, g) is None  # still two live


async def test_a_rate_limit_wakes_the_first_in_line_when_its_window_frees(store: Store) -> None:
    g = gate(RATE)
    first, second, third, fourth = await started(store, 4, limit_key="")
    a = await attempt(store, first, g)
    assert a is not None and await attempt(store, second, g) is not None
    assert await attempt(store, third, g) is None
    run = await store.get_run(third)
    assert run is not None and run.held is not None and run.held["limit"] == "rate"
    wake = await store.pending_wake(third)  # one wake-up, at the time the window frees
    assert wake is not None and wake.scheduled_at is not None
    assert a.run.started_at is not None
    assert wake.scheduled_at == a.run.started_at + timedelta(minutes=1)
    assert await attempt(store, fourth, g) is None
    assert await store.pending_wake(fourth) is None  # only the first in line is scheduled
    said = explain(run, now=run.updated_at)
    assert said.state == "held" and "rate limit of flow f (2/2 starts" in said.summary


async def test_the_reconciler_wakes_a_line_nothing_else_would(store: Store) -> None:
    g = gate(CONCURRENCY)
    one, two, held = await started(store, 3, limit_key="k")
    leases = [c.lease for c in [await attempt(store, r, g) for r in (one, two)] if c]
    assert await attempt(store, held, g) is None
    assert await store.rewake_stranded(10) == 0  # two live attempts will release it
    for lease in leases:  # their worker died before releasing
        await store.finish(lease, RunStatus.DONE, 1, None)
    assert await store.rewake_stranded(10) == 1
    assert await store.pending_wake(held) is not None
    assert await store.rewake_stranded(10) == 0  # queued now
    assert await attempt(store, held, g) is not None


async def test_limits_apply_only_to_runs_and_workers_that_declare_them(store: Store) -> None:
    (plain,) = await started(store, 1)
    (keyed,) = await started(store, 1, limit_key="k")
    assert await attempt(store, plain, gate(Limits(concurrency=1))) is not None
    # a worker whose version of the flow declares no limits claims a keyed run as it is
    assert await attempt(store, keyed, gate()) is not None
