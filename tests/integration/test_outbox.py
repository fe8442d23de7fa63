"""Start is one transaction: run + event + wake-up job, or nothing at all."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from iterflow import Engine, FlowError
from iterflow.store.urls import asyncpg_url
from tests.integration.flows import OrderIn, counts, sql
from tests.integration.test_flows import order_flow


async def test_failure_after_run_insert_leaves_no_run_and_no_job(
    engine: Engine, database_url: str
) -> None:
    handle = order_flow(engine, Counter())
    # Fault injection: the job INSERT (after the run INSERT) fails inside the same transaction.
    sql(
        database_url,
        """CREATE FUNCTION fail_job_insert() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'injected failure while enqueuing'; END $$""",
    )
    sql(
        database_url,
        "CREATE TRIGGER inject BEFORE INSERT ON procrastinate_jobs "
        "FOR EACH ROW EXECUTE FUNCTION fail_job_insert()",
    )
    before = counts(database_url)
    with pytest.raises(FlowError) as info:
        await handle.start(OrderIn(order_id="x", amount=1))
    assert info.value.error_code == "DATABASE_UNAVAILABLE"
    assert "injected failure" in info.value.message
    assert counts(database_url) == before


async def test_caller_transaction_rollback_leaves_no_run_and_no_job(
    engine: Engine, database_url: str
) -> None:
    handle = order_flow(engine, Counter())
    before = counts(database_url)
    app_engine = create_async_engine(asyncpg_url(database_url))
    try:
        async with app_engine.connect() as conn:
            trans = await conn.begin()
            started = await handle.start(OrderIn(order_id="rb", amount=1), conn=conn)
            assert started.created
            await trans.rollback()
        assert counts(database_url) == before

        async with app_engine.begin() as conn:
            committed = await handle.start(OrderIn(order_id="ok", amount=1), conn=conn)
        after = counts(database_url)
        assert after["iterflow.runs"] == before["iterflow.runs"] + 1
        assert after["procrastinate_jobs"] == before["procrastinate_jobs"] + 1
        job_args = sql(database_url, "SELECT args->>'run_id', lock FROM procrastinate_jobs")
        assert job_args == [(str(committed.run_id), str(committed.run_id))]
    finally:
        await app_engine.dispose()
