"""Text and integer columns: what PostgreSQL refuses below the engine's own checks (NUL, lone
surrogates, integers out of ``integer``), both stores refuse with DATA_REJECTED, writing
nothing (the JSON values are covered by test_store_contract.py)."""

from __future__ import annotations

import pytest

from iterflow.core.errors import DataRejected
from iterflow.core.models import RunStatus
from iterflow.store.base import Store
from tests.contract.support import memo, new_run, started_and_claimed

BAD_TEXTS = ["a\x00b", "lone \ud800"]


@pytest.mark.parametrize("bad", BAD_TEXTS, ids=["nul", "surrogate"])
async def test_bad_text_is_data_rejected_on_both_stores(store: Store, bad: str) -> None:
    with pytest.raises(DataRejected):
        await store.create_run(new_run(tags=(bad,)))
    with pytest.raises(DataRejected):
        await store.create_run(new_run(idempotency_key=bad))
    lease = await started_and_claimed(store)
    with pytest.raises(DataRejected):
        await store.checkpoint(lease, memo(0, bad))
    with pytest.raises(DataRejected):
        await store.deliver_signal(lease.run_id, bad, {}, None, max_signals=100)
    with pytest.raises(DataRejected):
        await store.cancel(lease.run_id, bad)
    detail = await store.detail(lease.run_id)
    assert detail is not None
    assert (detail.run.status, detail.steps, detail.signals) == (RunStatus.RUNNING, (), ())


async def test_an_integer_out_of_range_is_data_rejected_on_both_stores(store: Store) -> None:
    with pytest.raises(DataRejected):
        await store.create_run(new_run(priority=2**31))
    with pytest.raises(DataRejected):
        await store.create_run(new_run(version=-(2**31) - 1))
