"""The claims feed (``running_since``) on both stores: the dashboard sees a run go from pending
or waiting to running although a claim writes no event."""

from __future__ import annotations

import uuid

from iterflow.core.models import RunStatus
from iterflow.store.base import Store

from .support import LEASE, new_run


async def test_running_since_reports_claimed_runs_and_not_others(store: Store) -> None:
    assert (await store.running_since(None, 100))[0] == []
    _, mark = await store.running_since(None, 100)
    claimed, waiting = new_run(), new_run()
    for run in (claimed, waiting):
        await store.create_run(run)
    assert (await store.running_since(mark, 100))[0] == []  # pending: nothing claimed yet

    claim = await store.claim(claimed.id, "w1", LEASE)
    assert claim is not None
    ids, after = await store.running_since(mark, 100)
    assert ids == [claimed.id]
    assert after >= mark

    await store.finish(claim.lease, RunStatus.DONE, 1, None)
    assert (await store.running_since(mark, 100))[0] == []  # running now only


async def test_running_since_pages_by_write_time_when_the_limit_cuts(store: Store) -> None:
    _, mark = await store.running_since(None, 10)
    runs = [new_run() for _ in range(3)]
    for run in runs:
        await store.create_run(run)
        assert await store.claim(run.id, "w1", LEASE) is not None
    seen: list[uuid.UUID] = []
    first, mark = await store.running_since(mark, 2)
    assert len(first) == 2
    seen += first
    rest, _ = await store.running_since(mark, 2)  # at or after the cut: repeats, never skips
    seen += rest
    assert set(seen) == {run.id for run in runs}
