"""Data PostgreSQL refuses is a typed, non-retryable failure, never a database outage.

Each case runs on real PostgreSQL (with a procrastinate worker) and on the in-memory store,
which must behave the same. Counters live outside the flow, so "the step body ran once" is
asserted, not assumed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from iterflow import Engine, FlowContext, FlowError
from iterflow.core.errors import DataRejected
from iterflow.core.models import RunStatus, StepRecord, StepStatus
from tests.integration.flows import settle


class In(BaseModel):
    n: int = 0


class Bag(BaseModel):
    """A model whose untyped field pydantic's own config (``ser_json_inf_nan='null'``, its
    default) would write as null for a NaN or an Infinity."""

    meta: dict[str, Any] = {}


HOSTILE_RESULTS: dict[str, Callable[[], Any]] = {
    "nul": lambda: "a\x00b",
    "nul-in-key": lambda: {"k\x00": 1},
    "lone-surrogate": lambda: "x\ud800y",
    "nan": lambda: float("nan"),
    "infinity": lambda: {"v": float("inf")},
    "object": object,
    "non-utf8-bytes": lambda: b"\xff\xfe",
    "huge-int": lambda: 10**5000,
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_RESULTS))
async def test_unstorable_step_result_fails_the_step_once_without_retries(
    eng: Engine, kind: str
) -> None:
    calls: Counter[str] = Counter()
    make = HOSTILE_RESULTS[kind]

    @eng.flow("hostile", input=In, output=int)
    async def body(ctx: FlowContext, _: In) -> int:
        calls["body"] += 1

        def produce():  # type: ignore[no-untyped-def]  # untyped on purpose: Any result
            calls["step"] += 1
            return make()

        await ctx.step("produce", produce, retries=2, backoff="10ms")
        return 1

    run = await body.start(In())
    detail = await settle(eng, run.run_id)

    assert calls["step"] == 1  # not retried: an encoding failure is not transient
    assert detail.run.status is RunStatus.FAILED
    assert detail.run.error is not None and detail.run.error["code"] == "PAYLOAD_INVALID"
    assert "result of step 'produce'" in detail.run.error["message"]
    assert detail.run.claims == 1  # one claim: no abort-and-retry as if storage were down
    (step,) = detail.steps
    assert step.status is StepStatus.FAILED and step.attempts == 1
    assert step.error is not None and step.error["code"] == "PAYLOAD_INVALID"
    with pytest.raises(FlowError) as info:
        await eng.wait(run.run_id, timeout=5)
    assert info.value.error_code == "PAYLOAD_INVALID"


async def test_step_error_text_with_nul_and_surrogates_is_stored_repaired(eng: Engine) -> None:
    calls: Counter[str] = Counter()

    @eng.flow("bad-error", input=In, output=int)
    async def body(ctx: FlowContext, _: In) -> int:
        def explode() -> int:
            calls["step"] += 1
            raise ValueError("card \x00 declined \ud800")

        return await ctx.step("explode", explode)

    run = await body.start(In())
    detail = await settle(eng, run.run_id)
    assert calls["step"] == 1  # retries=0 means one run, not ten
    assert detail.run.claims == 1
    assert detail.run.error is not None and detail.run.error["code"] == "STEP_FAILED"
    assert "card \ufffd declined \ufffd" in detail.run.error["message"]
    assert detail.steps[0].error is not None
    assert detail.steps[0].error["cause"]["message"] == "card \ufffd declined \ufffd"


async def test_label_with_nul_is_a_definition_error_before_the_step_runs(eng: Engine) -> None:
    calls: Counter[str] = Counter()

    @eng.flow("bad-label", input=In, output=int)
    async def body(ctx: FlowContext, _: In) -> int:
        def work() -> int:
            calls["step"] += 1
            return 1

        return await ctx.step("pay\x00", work)

    run = await body.start(In())
    detail = await settle(eng, run.run_id)
    assert calls["step"] == 0
    assert detail.run.claims == 1
    assert detail.run.error is not None
    assert detail.run.error["code"] == "FLOW_DEFINITION_INVALID"
    assert "NUL" in detail.run.error["message"]


async def test_output_that_cannot_be_stored_fails_the_run_once(eng: Engine) -> None:
    calls: Counter[str] = Counter()

    @eng.flow("bad-output", input=In, output=str)
    async def body(ctx: FlowContext, _: In) -> str:
        calls["body"] += 1
        return "done\x00"

    run = await body.start(In())
    detail = await settle(eng, run.run_id)
    assert (
        calls["body"] == 1
    )  # the run ended at once; it did not stay running until a lease ran out
    assert detail.run.status is RunStatus.FAILED and detail.run.claims == 1
    assert detail.run.error is not None and detail.run.error["code"] == "PAYLOAD_INVALID"
    assert "output of flow bad-output@1" in detail.run.error["message"]


async def test_user_error_code_survives_with_details_made_json_safe(eng: Engine) -> None:
    calls: Counter[str] = Counter()
    at = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)

    @eng.flow("declined", input=In, output=int)
    async def body(ctx: FlowContext, _: In) -> int:
        calls["body"] += 1
        raise FlowError(
            "card declined",
            code="PAYMENT_DECLINED",
            details={"at": at, "amount": float("nan"), "who": object(), "note": "x\x00y"},
        )

    run = await body.start(In())
    detail = await settle(eng, run.run_id)
    assert calls["body"] == 1 and detail.run.claims == 1
    error = detail.run.error
    assert error is not None and error["code"] == "PAYMENT_DECLINED"
    assert error["details"]["at"] == at.isoformat().replace("+00:00", "Z")
    assert error["details"]["amount"] == "NaN"
    assert error["details"]["note"] == "x\ufffdy"
    assert error["details"]["who"].startswith("<object object")
    with pytest.raises(FlowError) as info:
        await eng.result(run.run_id, timeout=5)
    assert info.value.error_code == "PAYMENT_DECLINED"
    assert info.value.details["at"] == error["details"]["at"]


async def test_untyped_step_returning_nan_is_refused_not_turned_into_none(eng: Engine) -> None:
    seen: list[Any] = []

    @eng.flow("nan", input=In, output=str)
    async def body(ctx: FlowContext, _: In) -> str:
        try:
            seen.append(await ctx.step("nan", lambda: float("nan")))
        except FlowError as exc:
            return exc.error_code
        return "stored"

    run = await body.start(In())
    detail = await settle(eng, run.run_id)
    assert seen == []
    assert detail.run.status is RunStatus.DONE and detail.run.output == "PAYLOAD_INVALID"


async def test_a_refused_checkpoint_records_the_step_failed_and_never_reruns_it(
    eng: Engine,
) -> None:
    """Defence in depth: if PostgreSQL refuses a memo the codec let through (DATA_REJECTED), the
    step is recorded failed with that error; its side effect is not run again."""
    calls: Counter[str] = Counter()
    store = eng.store
    real = store.checkpoint

    async def refusing(lease: Any, record: StepRecord, **kw: Any) -> None:
        if record.status is StepStatus.OK and record.label == "charge":
            raise DataRejected("PostgreSQL refused the data (SQLSTATE 22P05: test)")
        await real(lease, record, **kw)

    store.checkpoint = refusing  # type: ignore[method-assign]

    @eng.flow("refused", input=In, output=int)
    async def body(ctx: FlowContext, _: In) -> int:
        def charge() -> int:
            calls["charge"] += 1
            return 7

        return await ctx.step("charge", charge, retries=3, backoff="10ms")

    run = await body.start(In())
    detail = await settle(eng, run.run_id)
    assert calls["charge"] == 1
    assert detail.run.claims == 1
    assert detail.run.error is not None and detail.run.error["code"] == "DATA_REJECTED"
    (step,) = detail.steps
    assert step.status is StepStatus.FAILED and step.error is not None
    assert step.error["code"] == "DATA_REJECTED"


async def test_nan_inside_a_models_untyped_field_is_refused_at_every_entry_point(
    eng: Engine,
) -> None:
    """A model's own config would write a NaN or an Infinity held in a field typed ``Any``,
    ``dict`` or ``list`` as null: the value would change silently (and two different inputs
    would share an idempotency key). Start, signal, output and a second start under the same
    key all refuse it instead, and nothing is written."""
    nan = {"v": float("nan")}

    @eng.flow("nan-bag", input=Bag, output=Bag, signals={"note": Bag})
    async def body(ctx: FlowContext, x: Bag) -> Bag:
        note = await ctx.signal("note", Bag, timeout="1h")
        return Bag(meta={"out": float("-inf")} if note.meta.get("poison") else note.meta)

    with pytest.raises(FlowError) as start:
        await body.start(Bag(meta=nan), idempotency_key="k-nan")
    assert start.value.error_code == "PAYLOAD_INVALID"
    assert "NaN or Infinity" in start.value.message
    assert not (await eng.list_runs(name="nan-bag")).runs

    # the key is free: a start with null (which NaN used to become) creates the run
    run = await body.start(Bag(meta={"v": None}), idempotency_key="k-nan")
    assert run.created
    with pytest.raises(FlowError) as again:
        await body.start(Bag(meta=nan), idempotency_key="k-nan")
    assert again.value.error_code == "PAYLOAD_INVALID"  # not the null run's key, reused

    with pytest.raises(FlowError) as signal:
        await eng.signal(run.run_id, "note", Bag(meta={"x": float("inf")}))
    assert signal.value.error_code in {"PAYLOAD_INVALID", "SIGNAL_PAYLOAD_INVALID"}
    detail = await eng.status(run.run_id)
    assert detail.run.input == {"meta": {"v": None}}
    await eng.signal(run.run_id, "note", Bag(meta={"poison": True}))
    ended = await settle(eng, run.run_id)
    assert ended.run.status is RunStatus.FAILED
    assert ended.run.error is not None and ended.run.error["code"] == "PAYLOAD_INVALID"
    assert "output of flow nan-bag@1" in ended.run.error["message"]


async def test_a_typed_step_result_with_nan_in_an_untyped_field_fails_the_step_once(
    eng: Engine,
) -> None:
    calls: Counter[str] = Counter()

    def measure() -> Bag:
        calls["step"] += 1
        return Bag(meta={"v": [1, {"w": float("nan")}]})

    @eng.flow("nan-step", input=In, output=int)
    async def body(ctx: FlowContext, _: In) -> int:
        await ctx.step("measure", measure, retries=2, backoff="10ms")
        return 1

    run = await body.start(In())
    detail = await settle(eng, run.run_id)
    assert calls["step"] == 1  # refused before writing, not retried
    assert detail.run.error is not None and detail.run.error["code"] == "PAYLOAD_INVALID"
    assert "result of step 'measure'" in detail.run.error["message"]
