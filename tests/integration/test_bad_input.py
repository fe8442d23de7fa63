"""Bad input anywhere: a FlowError with a stable code, and the database left as it was."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from iterflow import Engine, FlowContext, FlowError
from iterflow.errors import FlowDefinitionError
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
