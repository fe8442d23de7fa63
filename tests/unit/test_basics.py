"""Durations, retry math, error codes and payload encoding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from iterflow.core import codec
from iterflow.core.durations import due_at, parse_duration
from iterflow.core.errors import FlowError, PayloadTooLarge, SignalTimeout, StepFailed
from iterflow.core.retry import RetryPolicy


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3d", timedelta(days=3)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("250ms", timedelta(milliseconds=250)),
        ("1.5s", timedelta(seconds=1.5)),
        (10, timedelta(seconds=10)),
        (timedelta(minutes=2), timedelta(minutes=2)),
    ],
)
def test_parse_duration(text: str | int | timedelta, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("bad", ["", "3x", "abc", "5 minutes", -1, True])
def test_bad_durations_have_a_stable_code(bad: object) -> None:
    with pytest.raises(FlowError) as info:
        parse_duration(bad)  # type: ignore[arg-type]
    assert info.value.error_code == "DURATION_INVALID"


def test_due_at_requires_aware_datetimes() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert due_at("1h", now) == now + timedelta(hours=1)
    assert due_at(now, now) == now
    with pytest.raises(FlowError):
        due_at(datetime(2026, 1, 1), now)


def test_exponential_backoff_with_cap_and_jitter() -> None:
    policy = RetryPolicy(retries=10, base=1.0, factor=2.0, cap=10.0, jitter=0.1)
    assert [policy.delay(n, 0.0).total_seconds() for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 10]
    assert policy.delay(1, 0.999).total_seconds() == pytest.approx(1.0999)
    assert RetryPolicy.of(3, "2s") == RetryPolicy(retries=3, base=2.0)


def test_errors_round_trip_through_storage_with_their_codes() -> None:
    err = SignalTimeout("too slow")
    back = FlowError.from_dict(err.to_dict())
    assert isinstance(back, SignalTimeout) and back.error_code == "SIGNAL_TIMEOUT"
    custom = FlowError.from_dict(FlowError("declined", code="PAYMENT_DECLINED").to_dict())
    assert custom.error_code == "PAYMENT_DECLINED" and custom.message == "declined"
    wrapped = StepFailed("boom")
    wrapped.__cause__ = ValueError("inner")
    assert wrapped.to_dict()["cause"] == {"type": "ValueError", "message": "inner"}


class Item(BaseModel):
    name: str
    at: datetime


def test_codec_round_trip_and_size_cap() -> None:
    item = Item(name="x", at=datetime(2026, 1, 1, tzinfo=UTC))
    data = codec.dump(item, Item)
    assert data == {"name": "x", "at": "2026-01-01T00:00:00Z"}
    assert codec.load(data, Item) == item
    with pytest.raises(PayloadTooLarge) as info:
        codec.encode({"blob": "x" * 100}, what="thing", limit=50)
    assert info.value.error_code == "PAYLOAD_TOO_LARGE"


def test_payload_cap_counts_utf8_bytes_of_the_encoded_value() -> None:
    # 25,000 two-byte characters: 50,000 bytes of UTF-8 (not 150,000 of \uXXXX escapes).
    size = codec.check_data({"text": "é" * 25_000}, what="input", limit=100_000)
    assert size == len('{"text":""}') + 50_000


def test_return_type_cache_does_not_keep_step_closures_alive() -> None:
    import gc
    import weakref

    class Payload:
        pass

    def make_step(payload: Payload) -> object:
        def step() -> Item:
            return payload  # type: ignore[return-value]

        return step

    refs = []
    for _ in range(50):
        payload = Payload()
        step = make_step(payload)
        assert codec.return_type(step) is Item  # type: ignore[arg-type]
        refs.append(weakref.ref(payload))
        del step, payload
    gc.collect()
    assert all(ref() is None for ref in refs)
    assert codec.return_type(lambda: 1) is Any


def test_not_json_native_names_what_plain_json_would_not_give_back() -> None:
    import dataclasses
    import uuid
    from decimal import Decimal

    @dataclasses.dataclass
    class P:
        x: int

    assert codec.not_json_native({"a": [1, 2.5, None, True, "x", {"b": []}]}) is None
    assert codec.not_json_native(Decimal(1)) == "a Decimal value"
    assert codec.not_json_native(uuid.UUID(int=0)) == "a UUID value"
    assert codec.not_json_native(P(1)) == "a P value"
    assert codec.not_json_native((1, 2)) == "a tuple value"
    assert codec.not_json_native({"a": [0, {1, 2}]}) == "a set value at ['a'][1]"
    assert codec.not_json_native({"a": {1: "x"}}) == "a dict key 1 of type int at ['a']"
    assert codec.not_json_native(b"x") == "a bytes value"


def test_has_return_annotation_sees_functions_partials_classes_and_callables() -> None:
    import functools

    def typed(a: int) -> int:
        return a

    def untyped(a):  # type: ignore[no-untyped-def]
        return a

    class Callable_:
        def __call__(self) -> str:
            return ""

    assert codec.has_return_annotation(typed)
    assert codec.has_return_annotation(functools.partial(typed, 1))
    assert not codec.has_return_annotation(untyped)
    assert not codec.has_return_annotation(lambda: 1)
    assert codec.has_return_annotation(Item) and codec.return_type(Item) is Item
    assert codec.return_type(Callable_()) is str
