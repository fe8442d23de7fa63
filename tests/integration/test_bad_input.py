"""Bad input anywhere: a FlowError with a stable code, and the database left as it was."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from iterflow import Engine, FlowContext, FlowError
from iterflow.core.errors import FlowDefinitionError
from tests.integration.flows import Approval, OrderIn, counts
from tests.integration.test_flows import order_flow


async def test_bad_inputs_have_codes_and_write_nothing(engine: Engine, database_url: str) -> None:
    handle = order_flow(engine, Counter())
    run = await handle.start(OrderIn(order_id="ok", amount=1))
    big = Engine(database_url, max_payload_bytes=64)
    small_handle = order_flow(big, Counter())
    cases: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("INPUT_INVALID", lambda: handle.start({"order_id": "x"})),
        ("INPUT_INVALID", lambda: handle.start({"order_id": 1, "amount": "lots"})),
        (
            "INPUT_INVALID",
            lambda: handle.start(OrderIn(order_id="x", amount=1), idempotency_key=""),
        ),
        ("INPUT_INVALID", lambda: handle.start(OrderIn(order_id="x", amount=1), tags=[""])),
        ("DURATION_INVALID", lambda: handle.start(OrderIn(order_id="x", amount=1), delay="soon")),
        ("INPUT_INVALID", lambda: engine.signal("not-a-uuid", "approve", {"approved": True})),
        ("SIGNAL_PAYLOAD_INVALID", lambda: engine.signal(run.run_id, "approve", [])),
        ("SIGNAL_UNKNOWN", lambda: engine.signal(run.run_id, "other", {})),
        ("RUN_NOT_FOUND", lambda: engine.status(uuid.uuid4())),
        ("INPUT_INVALID", lambda: engine.retry("nope")),
    ]
    before = counts(database_url)
    for code, call in cases:
        with pytest.raises(FlowError) as info:
            await call()
        assert info.value.error_code == code, (code, info.value)
        assert info.value.message
    assert counts(database_url) == before

    async with big:
        with pytest.raises(FlowError) as too_big:
            await small_handle.start(OrderIn(order_id="x" * 200, amount=1))
        assert too_big.value.error_code == "PAYLOAD_TOO_LARGE"
    assert counts(database_url) == before


def test_definition_errors_are_raised_at_registration() -> None:
    engine = Engine("postgresql://unused@localhost/none")

    async def body(ctx: FlowContext, order: OrderIn) -> int:
        return 1

    engine.flow("dup", input=OrderIn, output=int)(body)
    with pytest.raises(FlowDefinitionError):
        engine.flow("dup", input=OrderIn, output=int)(body)
    with pytest.raises(FlowDefinitionError, match="positive integer"):
        engine.flow("v0", version=0, input=OrderIn, output=int)(body)
    with pytest.raises(FlowDefinitionError, match="invalid flow name"):
        engine.flow("bad name!", input=OrderIn, output=int)(body)
    with pytest.raises(FlowDefinitionError, match="invalid signal name"):
        engine.flow("sig", input=OrderIn, output=int, signals={"": Approval})(body)
    with pytest.raises(FlowError) as cfg:
        Engine(lease_seconds=-1)
    assert cfg.value.error_code == "CONFIG_INVALID"


def test_settings_overrides_are_validated_and_coerced(tmp_path: object) -> None:
    from pathlib import Path

    engine = Engine("postgresql://u@h/db", data_dir="/tmp/x", lease_seconds="5")
    assert engine.settings.data_dir == Path("/tmp/x") and engine.settings.lease_seconds == 5.0
    with pytest.raises(FlowError) as info:
        Engine(db_schema="Not A Schema")
    assert info.value.error_code == "CONFIG_INVALID"


async def test_hostile_values_at_the_edge_are_typed_and_write_nothing(
    engine: Engine, database_url: str
) -> None:
    """NUL, lone surrogates, NaN, out-of-range numbers and wrong types at every entry point:
    a FlowError with a registered code (never DATABASE_UNAVAILABLE), nothing written."""
    handle = order_flow(engine, Counter())
    run = await handle.start(OrderIn(order_id="ok", amount=1))
    good = OrderIn(order_id="x", amount=1)
    deep: Any = []
    for _ in range(300):
        deep = [deep]
    cases: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("PAYLOAD_INVALID", lambda: handle.start({"order_id": "a\x00b", "amount": 1})),
        ("PAYLOAD_INVALID", lambda: handle.start({"order_id": "a\ud800", "amount": 1})),
        ("INPUT_INVALID", lambda: handle.start({"order_id": "x", "amount": float("nan")})),
        ("INPUT_INVALID", lambda: handle.start(good, idempotency_key="k\x00")),
        ("INPUT_INVALID", lambda: handle.start(good, idempotency_key="k" * 201)),
        ("INPUT_INVALID", lambda: handle.start(good, tags=["t\x00"])),
        ("INPUT_INVALID", lambda: handle.start(good, tags=["\udc80"])),
        ("INPUT_INVALID", lambda: handle.start(good, tags=["t" * 201])),
        ("INPUT_INVALID", lambda: handle.start(good, tags=[f"t{i}" for i in range(65)])),
        ("INPUT_INVALID", lambda: handle.start(good, tags="abc")),  # not three tags
        ("INPUT_INVALID", lambda: handle.start(good, tags=[1])),  # type: ignore[list-item]
        ("INPUT_INVALID", lambda: handle.start(good, priority=2**40)),
        ("DURATION_INVALID", lambda: handle.start(good, delay=float("nan"))),
        ("DURATION_INVALID", lambda: handle.start(good, delay=float("inf"))),
        ("DURATION_INVALID", lambda: handle.start(good, delay=1e300)),
        ("DURATION_INVALID", lambda: handle.start(good, delay="99999999999999d")),
        (
            "PAYLOAD_INVALID",
            lambda: engine.signal(run.run_id, "approve", {"approved": True, "by": "\x00"}),
        ),
        ("SIGNAL_PAYLOAD_INVALID", lambda: engine.signal(run.run_id, "approve", deep)),
        ("INPUT_INVALID", lambda: engine.signal(run.run_id, [], {})),  # type: ignore[arg-type]
        ("INPUT_INVALID", lambda: engine.signal(run.run_id, "approve\x00", {})),
        (
            "INPUT_INVALID",
            lambda: engine.signal(run.run_id, "approve", {}, idempotency_key="\ud800"),
        ),
        ("INPUT_INVALID", lambda: engine.cancel(run.run_id, reason="stop\x00")),
        ("INPUT_INVALID", lambda: engine.cancel(run.run_id, reason=5)),  # type: ignore[arg-type]
        ("INPUT_INVALID", lambda: engine.status(123)),  # type: ignore[arg-type]
        ("INPUT_INVALID", lambda: engine.list_runs(status=123)),  # type: ignore[arg-type]
        ("INPUT_INVALID", lambda: engine.list_runs(status=["done", 5])),  # type: ignore[list-item]
        ("INPUT_INVALID", lambda: engine.list_runs(name=123)),  # type: ignore[arg-type]
        ("INPUT_INVALID", lambda: engine.list_runs(tag="\x00")),
        ("INPUT_INVALID", lambda: engine.list_runs(cursor="abc")),  # type: ignore[arg-type]
        ("INPUT_INVALID", lambda: engine.list_runs(cursor=1.5)),  # type: ignore[arg-type]
        ("INPUT_INVALID", lambda: handle.result(run.run_id, timeout="x")),
        ("INPUT_INVALID", lambda: engine.result(run.run_id, timeout=float("nan"))),
    ]
    before = counts(database_url)
    for code, call in cases:
        with pytest.raises(FlowError) as info:
            await call()
        assert info.value.error_code == code, (code, info.value)
    assert counts(database_url) == before
    assert (await engine.status(run.run_id)).run.tags == ()
    # tags=None means no tags; a 50 KB UTF-8 input fits a 100 KB cap (bytes counted correctly)
    roomy = Engine(database_url, max_payload_bytes=100_000)
    async with roomy:
        wide = order_flow(roomy, Counter())
        ok = await wide.start(OrderIn(order_id="é" * 25_000, amount=1), tags=None)
        assert ok.created


async def test_result_on_another_flows_run_is_a_typed_error(engine: Engine) -> None:
    handle = order_flow(engine, Counter())

    @engine.flow("other", input=OrderIn, output=int)
    async def other(ctx: FlowContext, order: OrderIn) -> int:
        return 1

    run = await other.start(OrderIn(order_id="x", amount=1))
    with pytest.raises(FlowError) as info:
        await handle.result(run.run_id, timeout=0.1)
    assert info.value.error_code == "INPUT_INVALID"
    assert "other@1" in info.value.message


async def test_result_timeout_on_an_unclaimed_run_says_no_worker_claimed_it(
    engine: Engine,
) -> None:
    handle = order_flow(engine, Counter())
    run = await handle.start(OrderIn(order_id="x", amount=1))
    with pytest.raises(FlowError) as info:
        await handle.result(run.run_id, timeout=0.2)
    assert info.value.error_code == "RESULT_TIMEOUT"
    assert "no worker has claimed it" in info.value.message
    assert "order@1" in info.value.message


async def test_listen_on_an_unmigrated_database_raises_schema_missing(
    empty_database_url: str,
) -> None:
    async with Engine(empty_database_url, pool_size=2) as bare:
        with pytest.raises(FlowError) as info:
            await bare.listen()
        assert info.value.error_code == "SCHEMA_MISSING"


async def test_a_dead_in_process_worker_is_logged_at_error(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    async def crash(**options: object) -> None:
        raise RuntimeError("worker exploded")

    monkeypatch.setattr(engine, "run_worker", crash)
    with caplog.at_level("ERROR", logger="iterflow.runtime.engine"):
        await engine.listen()
        await asyncio.gather(*engine._worker_tasks, return_exceptions=True)
        await asyncio.sleep(0)  # done callbacks run on the next loop iteration
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "worker exploded" in record.getMessage() and record.exc_info is not None


async def test_signal_flood_is_capped_with_a_typed_error(database_url: str) -> None:
    async with Engine(database_url, pool_size=2, max_signals_per_run=3) as capped:
        handle = order_flow(capped, Counter())
        run = await handle.start(OrderIn(order_id="x", amount=1))
        for i in range(3):
            await capped.signal(run.run_id, "approve", {"approved": True}, idempotency_key=f"e{i}")
        before = counts(database_url)
        with pytest.raises(FlowError) as info:
            await capped.signal(run.run_id, "approve", {"approved": True}, idempotency_key="e3")
        assert info.value.error_code == "SIGNAL_LIMIT_EXCEEDED"
        assert counts(database_url) == before
        again = await capped.signal(run.run_id, "approve", {"approved": True}, idempotency_key="e1")
        assert again.kind == "duplicate"


async def test_find_run_by_idempotency_key_or_tag(eng: Engine) -> None:
    """A webhook finds the run its provider's identifiers point at, on both stores."""
    handle = order_flow(eng, Counter())
    run = await handle.start(
        OrderIn(order_id="A-7", amount=1), idempotency_key="order-A-7", tags=["customer:7"]
    )
    await handle.start(OrderIn(order_id="A-8", amount=1), idempotency_key="order-A-8")
    found = await eng.find_run(handle, idempotency_key="order-A-7")
    assert found is not None and found.id == run.run_id
    by_tag = await eng.find_run("order", tag="customer:7")
    assert by_tag is not None and by_tag.id == run.run_id
    assert await eng.find_run("order", idempotency_key="order-nope") is None
    page = await eng.list_runs(idempotency_key="order-A-8")
    assert [r.idempotency_key for r in page.runs] == ["order-A-8"]
    with pytest.raises(FlowError) as info:
        await eng.find_run("order")
    assert info.value.error_code == "INPUT_INVALID"
    with pytest.raises(FlowError) as bad:
        await eng.find_run("order", idempotency_key="k\x00")
    assert bad.value.error_code == "INPUT_INVALID"
