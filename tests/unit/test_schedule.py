"""Cron schedules (iterflow.core.schedule): parsing, wall-clock ticks across DST, the sweep's
catch-up plan, backfill, jitter, idempotency keys and overlap; examples with exact UTC instants,
then hypothesis properties checked against an independent cron matcher (and croniter in UTC)."""

from __future__ import annotations

import functools
import time
import zoneinfo
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from croniter import croniter
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from iterflow.core.errors import FlowError
from iterflow.core.schedule import (
    OVERLAP_POLICIES,
    CronSpec,
    OverlapPolicy,
    ScheduleInvalid,
    TickPlan,
    backfill_ticks,
    decide_overlap,
    due_ticks,
    jitter_delay,
    next_tick,
    parse_schedule,
    tick_idempotency_key,
    validate_window,
)

H = timedelta(hours=1)
MIN = timedelta(minutes=1)
US = timedelta(microseconds=1)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def ticks_from(spec: CronSpec, after: str, n: int) -> list[str]:
    out, t = [], at(after)
    for _ in range(n):
        t = next_tick(spec, t)
        out.append(t.isoformat())
    return out


# --- parsing ---------------------------------------------------------------------------------


def test_parse_normalizes_and_exposes_the_fields() -> None:
    spec = parse_schedule("  0   9 * *  mon-FRI ", "Europe/Paris")
    assert spec.expr == "0 9 * * mon-FRI" and spec.tz == "Europe/Paris"
    assert spec.zone.key == "Europe/Paris"
    assert spec.minutes == {0} and spec.hours == {9} and spec.weekdays == {1, 2, 3, 4, 5}
    assert len(spec.days) == 31 and len(spec.months) == 12 and not spec.day_or
    assert parse_schedule("@DAILY") == parse_schedule("0 0 * * *", "UTC") == CronSpec("@midnight")
    assert hash(parse_schedule("@hourly")) == hash(parse_schedule("0 * * * *"))


@pytest.mark.parametrize(
    ("expr", "attr", "values"),
    [
        ("5/15 * * * *", "minutes", {5, 20, 35, 50}),
        ("0-10/5,59 * * * *", "minutes", {0, 5, 10, 59}),
        ("0 0 1 jan,JUL-aug *", "months", {1, 7, 8}),
        ("0 0 * * 5-7", "weekdays", {5, 6, 0}),
        ("0 0 * * FRI-SUN", "weekdays", {5, 6, 0}),
        ("0 0 * * SUN-SUN,0-0", "weekdays", {0}),
        ("0 0 * * 7/2", "weekdays", {0, 2, 4, 6}),
        ("0 0 * * 7", "weekdays", {0}),
        ("0 0 * * */2", "weekdays", {0, 2, 4, 6}),
        ("0 0 * * 1/2", "weekdays", {1, 3, 5}),
        ("0 */6 * * *", "hours", {0, 6, 12, 18}),
    ],
)
def test_field_syntax(expr: str, attr: str, values: set[int]) -> None:
    assert getattr(parse_schedule(expr), attr) == values


def test_a_day_field_matching_every_day_restricts_nothing() -> None:
    for expr in ("0 0 1-31 * MON", "0 0 */1 * MON", "0 0 * * MON"):
        spec = parse_schedule(expr)
        assert not spec.day_or
        assert ticks_from(spec, "2026-03-01T00:00Z", 2) == [
            "2026-03-02T00:00:00+00:00",
            "2026-03-09T00:00:00+00:00",
        ]
    assert not parse_schedule("0 0 */2 * 0-6").day_or
    assert next_tick(parse_schedule("0 0 */2 * 0-6"), at("2026-03-01T00:00Z")) == at(
        "2026-03-03T00:00Z"
    )


def test_both_day_fields_restricted_means_either() -> None:
    spec = parse_schedule("0 0 1 * MON")
    assert spec.day_or
    assert ticks_from(spec, "2026-03-01T00:00Z", 3) == [
        "2026-03-02T00:00:00+00:00",  # a Monday
        "2026-03-09T00:00:00+00:00",
        "2026-03-16T00:00:00+00:00",
    ]
    assert ticks_from(spec, "2026-03-30T00:00Z", 1) == ["2026-04-01T00:00:00+00:00"]  # the 1st
    # 31 Feb never happens, but Mondays do: valid
    assert parse_schedule("0 0 31 2 MON").day_or


def test_29_february_skips_2100() -> None:
    spec = parse_schedule("0 0 29 2 *")
    assert next_tick(spec, at("2026-03-01T00:00Z")) == at("2028-02-29T00:00Z")
    assert next_tick(spec, at("2096-03-01T00:00Z")) == at("2104-02-29T00:00Z")


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("* 25 * * *", "field 2 (hour) '25' is out of range 0-23"),
        ("60 * * * *", "field 1 (minute) '60' is out of range 0-59"),
        ("0 0 0 * *", "field 3 (day of month) '0' is out of range 1-31"),
        ("0 0 * 13 *", "field 4 (month) '13' is out of range 1-12"),
        ("0 0 * * 8", "field 5 (day of week) '8' is out of range 0-7"),
        ("0 0 * FOO *", "field 4 (month) 'FOO' is not valid"),
        ("0 0 * * MON-FOO", "field 5 (day of week) 'MON-FOO' is not valid"),
        ("*/0 * * * *", "field 1 (minute) step '0' in '*/0' must be a whole number from 1 to 60"),
        ("*/61 * * * *", "from 1 to 60"),
        ("0 22-2 * * *", "field 2 (hour) range '22-2' is reversed"),
        ("1,,2 * * * *", "field 1 (minute) '' is not valid"),
        ("-5 * * * *", "field 1 (minute) '-5' is not valid"),
        ("\u0663 * * * *", "field 1 (minute)"),  # an Arabic-Indic digit
        ("0 0 L * *", "field 3 (day of month) 'L' is not valid"),
        ("0 0 * * 1#2", "field 5 (day of week) '1#2' is not valid"),
        ("H * * * *", "field 1 (minute) 'H' is not valid"),
        ("0 0 ? * *", "field 3 (day of month) '?' is not valid"),
        ("0 0 31 2,4 *", "field 3 (day of month) '31' never occurs in field 4 (month) '2,4'"),
        ("0 0 30 2 *", "never occurs"),
        ("0 0 9 * * *", "has 6 fields; use 5"),
        ("0 9 * *", "has 4 fields"),
        ("", "has 0 fields"),
        ("@reboot", "unknown cron macro '@reboot'"),
        ("*/5", "has 1 field;"),
    ],
)
def test_invalid_expressions_name_the_field(expr: str, message: str) -> None:
    with pytest.raises(ScheduleInvalid) as info:
        parse_schedule(expr, "UTC")
    assert message in info.value.message
    assert info.value.error_code == "SCHEDULE_INVALID"


@pytest.mark.parametrize(
    "tz", ["Europe/Pariss", "utc", "", "../etc/passwd", "/etc/localtime", "Europe", "localtime"]
)
def test_unknown_zones_are_named(tz: str) -> None:
    with pytest.raises(ScheduleInvalid, match="unknown time zone") as info:
        parse_schedule("0 9 * * *", tz)
    assert repr(tz) in info.value.message


def test_non_strings_are_refused() -> None:
    with pytest.raises(ScheduleInvalid, match="IANA name string"):
        parse_schedule("0 9 * * *", 5)  # type: ignore[arg-type]
    with pytest.raises(ScheduleInvalid, match="must be a string"):
        parse_schedule(None)  # type: ignore[arg-type]


def test_the_error_is_a_coded_flow_error() -> None:
    with pytest.raises(FlowError) as info:
        parse_schedule("* 25 * * *")
    again = FlowError.from_dict(info.value.to_dict())
    assert type(again) is ScheduleInvalid and again.error_code == "SCHEDULE_INVALID"


def test_validate_window() -> None:
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    start, end = validate_window(datetime(2026, 1, 1, tzinfo=paris), at("2026-02-01T00:00Z"))
    assert start == at("2025-12-31T23:00Z") and start.tzinfo is UTC and end is not None
    assert validate_window(None, None) == (None, None)
    with pytest.raises(ScheduleInvalid, match="start_at must be an aware datetime"):
        validate_window(datetime(2026, 1, 1), None)
    with pytest.raises(ScheduleInvalid, match="end_at must be an aware datetime"):
        validate_window(None, datetime(2026, 1, 1))
    with pytest.raises(ScheduleInvalid, match="must be after start_at"):
        validate_window(at("2026-01-01T00:00Z"), at("2026-01-01T00:00Z"))


# --- next_tick and DST -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "tz", "after", "expected"),
    [
        ("0 9 * * MON-FRI", "UTC", "2026-01-02T09:00Z", ["2026-01-05T09:00:00+00:00"]),
        # Paris: 09:00 local is 08:00 UTC in winter and 07:00 UTC in summer
        ("0 9 * * MON-FRI", "Europe/Paris", "2026-01-05T00:00Z", ["2026-01-05T08:00:00+00:00"]),
        ("0 9 * * MON-FRI", "Europe/Paris", "2026-07-06T00:00Z", ["2026-07-06T07:00:00+00:00"]),
        # strictly after, to the microsecond
        ("0 9 * * *", "Europe/Paris", "2026-01-05T08:00Z", ["2026-01-06T08:00:00+00:00"]),
        ("0 9 * * *", "Europe/Paris", "2026-01-05T07:59:59.999999Z", ["2026-01-05T08:00:00+00:00"]),
        # Paris spring forward (29 March 2026, 02:00 -> 03:00): 02:30 runs once at 03:00 local
        (
            "30 2 * * *",
            "Europe/Paris",
            "2026-03-28T12:00Z",
            ["2026-03-29T01:00:00+00:00", "2026-03-30T00:30:00+00:00"],
        ),
        # four ticks inside the gap collapse into one run
        (
            "*/15 2 * * *",
            "Europe/Paris",
            "2026-03-28T12:00Z",
            ["2026-03-29T01:00:00+00:00", "2026-03-30T00:00:00+00:00"],
        ),
        # ... and with the 03:00 tick too
        (
            "*/30 * * * *",
            "Europe/Paris",
            "2026-03-28T23:45Z",
            [
                "2026-03-29T00:00:00+00:00",
                "2026-03-29T00:30:00+00:00",
                "2026-03-29T01:00:00+00:00",
                "2026-03-29T01:30:00+00:00",
            ],
        ),
        # Paris fall back (25 October 2026, 03:00 -> 02:00): 02:30 runs once, the first time
        (
            "30 2 * * *",
            "Europe/Paris",
            "2026-10-24T12:00Z",
            ["2026-10-25T00:30:00+00:00", "2026-10-26T01:30:00+00:00"],
        ),
        # from inside the second 02:xx hour: 02:20 and 02:40 already ran the first time
        ("*/20 2 * * *", "Europe/Paris", "2026-10-25T01:10Z", ["2026-10-26T01:00:00+00:00"]),
        # New York: spring forward 8 March 2026 at 02:00 EST, fall back 1 November at 02:00 EDT
        ("30 2 * * *", "America/New_York", "2026-03-07T12:00Z", ["2026-03-08T07:00:00+00:00"]),
        (
            "30 1 * * *",
            "America/New_York",
            "2026-10-31T12:00Z",
            ["2026-11-01T05:30:00+00:00", "2026-11-02T06:30:00+00:00"],
        ),
        (
            "*/20 1 * * *",
            "America/New_York",
            "2026-11-01T04:00Z",
            [
                "2026-11-01T05:00:00+00:00",
                "2026-11-01T05:20:00+00:00",
                "2026-11-01T05:40:00+00:00",
                "2026-11-02T06:00:00+00:00",
            ],
        ),
        # half-hour zone without DST
        ("0 9 * * *", "Asia/Kolkata", "2026-03-29T00:00Z", ["2026-03-29T03:30:00+00:00"]),
        # Adelaide (+09:30/+10:30): spring forward 4 October 2026, fall back 5 April 2026
        (
            "15 2 * * *",
            "Australia/Adelaide",
            "2026-10-02T17:00Z",
            ["2026-10-03T16:30:00+00:00", "2026-10-04T15:45:00+00:00"],
        ),
        (
            "15 2 * * *",
            "Australia/Adelaide",
            "2026-04-03T16:00Z",
            ["2026-04-04T15:45:00+00:00", "2026-04-05T16:45:00+00:00"],
        ),
        # Lord Howe moves its clocks by 30 minutes: 02:15 on 4 October 2026 does not exist
        ("15 2 * * *", "Australia/Lord_Howe", "2026-10-02T17:00Z", ["2026-10-03T15:30:00+00:00"]),
        # Samoa skipped 30 December 2011 entirely: its noon runs once, when the day would start
        (
            "0 12 * * *",
            "Pacific/Apia",
            "2011-12-29T12:00Z",
            ["2011-12-29T22:00:00+00:00", "2011-12-30T10:00:00+00:00", "2011-12-30T22:00:00+00:00"],
        ),
    ],
)
def test_next_tick(expr: str, tz: str, after: str, expected: list[str]) -> None:
    assert ticks_from(parse_schedule(expr, tz), after, len(expected)) == expected


def test_next_tick_accepts_any_aware_datetime_and_refuses_naive() -> None:
    spec = parse_schedule("0 9 * * *", "Europe/Paris")
    tokyo = datetime(2026, 1, 5, 12, tzinfo=zoneinfo.ZoneInfo("Asia/Tokyo"))  # 03:00 UTC
    assert next_tick(spec, tokyo) == at("2026-01-05T08:00Z")
    assert next_tick(spec, tokyo).tzinfo is UTC
    with pytest.raises(ScheduleInvalid, match="after must be an aware datetime"):
        next_tick(spec, datetime(2026, 1, 5))


def test_no_tick_after_the_end_of_time() -> None:
    with pytest.raises(ScheduleInvalid, match="has no tick after"):
        next_tick(parse_schedule("0 * * * *", "Pacific/Kiritimati"), at("9999-12-31T09:59Z"))


# --- due_ticks -------------------------------------------------------------------------------

WEEKDAYS_9 = parse_schedule("0 9 * * MON-FRI", "Europe/Paris")
HOURLY = parse_schedule("0 * * * *")


def test_a_new_schedule_has_nothing_due() -> None:
    now = at("2026-01-05T08:00Z")  # exactly on a tick: not due, the schedule is new
    plan = due_ticks(WEEKDAYS_9, last_tick=None, now=now)
    assert plan == TickPlan((), (), 0, now, at("2026-01-06T08:00Z"))
    later = due_ticks(WEEKDAYS_9, last_tick=None, now=now, start_at=at("2026-02-01T00:00Z"))
    assert later.next_tick == at("2026-02-02T08:00Z") and later.last_tick == now
    on = due_ticks(WEEKDAYS_9, last_tick=None, now=now, start_at=at("2026-02-02T08:00Z"))
    assert on.next_tick == at("2026-02-02T08:00Z")  # start_at is inclusive


def test_a_tick_on_time() -> None:
    now = at("2026-01-06T08:00:05Z")
    plan = due_ticks(WEEKDAYS_9, last_tick=at("2026-01-05T08:30Z"), now=now)
    assert plan == TickPlan((at("2026-01-06T08:00Z"),), (), 0, now, at("2026-01-07T08:00Z"))


def test_down_for_a_week_runs_the_latest_tick_once_by_default() -> None:
    now = at("2026-01-08T00:30Z")
    plan = due_ticks(HOURLY, last_tick=at("2026-01-01T00:00Z"), now=now)
    assert plan.start == (at("2026-01-08T00:00Z"),)
    assert plan.skipped_count == 7 * 24 - 1 and len(plan.skipped) == 100
    assert plan.skipped[0] == at("2026-01-01T01:00Z") and plan.skipped[-1] == at(
        "2026-01-05T04:00Z"
    )
    assert plan.next_tick == at("2026-01-08T01:00Z") and plan.last_tick == now and not plan.more


def test_catchup_starts_the_window_oldest_first_and_skips_older_ticks() -> None:
    now = at("2026-01-08T00:30Z")
    plan = due_ticks(HOURLY, last_tick=at("2026-01-01T00:00Z"), now=now, catchup=3 * H)
    assert plan.start == tuple(at(f"2026-01-{t}:00Z") for t in ("07T22", "07T23", "08T00"))
    assert plan.skipped_count == 7 * 24 - 3 and plan.skipped[-1] < plan.start[0]
    exact = due_ticks(HOURLY, last_tick=at("2026-01-01T00:00Z"), now=now, catchup=150 * MIN)
    assert exact.start[0] == at("2026-01-07T22:00Z")  # exactly catchup old: still started


def test_limit_spreads_a_backlog_over_calls_without_losing_any() -> None:
    now, last = at("2026-01-08T00:30Z"), at("2026-01-01T00:00Z")
    started: list[datetime] = []
    plans = []
    while True:
        plan = due_ticks(HOURLY, last_tick=last, now=now, catchup=timedelta(days=1), limit=10)
        plans.append(plan)
        started += plan.start
        last = plan.last_tick
        if not plan.more:
            break
    assert [len(p.start) for p in plans] == [10, 10, 4]
    assert [p.skipped_count for p in plans] == [144, 0, 0]
    assert plans[0].last_tick == at("2026-01-07T10:00Z") == plans[0].start[-1]
    assert plans[0].next_tick == at("2026-01-07T11:00Z")  # due now: call again
    assert started == [at("2026-01-07T01:00Z") + i * H for i in range(24)]
    assert plans[-1].next_tick == at("2026-01-08T01:00Z") and plans[-1].last_tick == now


def test_start_at_and_end_at_bound_the_ticks() -> None:
    last, now = at("2026-01-01T00:00Z"), at("2026-01-08T00:30Z")
    ended = due_ticks(HOURLY, last_tick=last, now=now, end_at=at("2026-01-03T00:00Z"))
    assert ended.start == (at("2026-01-03T00:00Z"),)  # end_at is inclusive
    assert ended.skipped_count == 47 and ended.next_tick is None
    window = due_ticks(
        HOURLY,
        last_tick=last,
        now=now,
        catchup=timedelta(days=30),
        start_at=at("2026-01-07T23:00Z"),
        end_at=at("2026-01-09T00:00Z"),
    )
    assert window.start == (at("2026-01-07T23:00Z"), at("2026-01-08T00:00Z"))
    assert window.skipped_count == 0 and window.next_tick == at("2026-01-08T01:00Z")


def test_a_stale_now_changes_nothing() -> None:
    last = at("2026-01-08T00:30Z")
    plan = due_ticks(HOURLY, last_tick=last, now=at("2026-01-07T00:00Z"), catchup=H)
    assert plan == TickPlan((), (), 0, last, at("2026-01-08T01:00Z"))


def test_spring_forward_gap_runs_once_in_the_sweep() -> None:
    spec = parse_schedule("*/15 2 * * *", "Europe/Paris")
    plan = due_ticks(spec, last_tick=at("2026-03-28T12:00Z"), now=at("2026-03-29T01:05Z"))
    assert plan.start == (at("2026-03-29T01:00Z"),) and plan.skipped_count == 0
    again = due_ticks(spec, last_tick=plan.last_tick, now=at("2026-03-29T05:00Z"), catchup=H)
    assert again.start == () and again.next_tick == at("2026-03-30T00:00Z")


def test_a_year_down_is_counted_not_listed() -> None:
    spec = parse_schedule("* * * * *", "Europe/Paris")
    began = time.perf_counter()
    plan = due_ticks(spec, last_tick=at("2025-01-01T00:00Z"), now=at("2026-01-01T00:00Z"))
    assert time.perf_counter() - began < 1.0
    # 525,600 minutes in 2025, less the 60 instants of Paris's second 02:xx hour in October
    assert plan.skipped_count + len(plan.start) == 525_600 - 60
    assert len(plan.skipped) == 100 and plan.start == (at("2026-01-01T00:00Z"),)
    windowed = due_ticks(
        spec, last_tick=at("2025-01-01T00:00Z"), now=at("2026-01-01T00:00Z"), catchup=H
    )
    assert len(windowed.start) == 61 and windowed.skipped_count == 525_540 - 61


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"catchup": timedelta(0)}, "catchup must be a positive timedelta"),
        ({"catchup": -H}, "catchup must be a positive timedelta"),
        ({"catchup": 60}, "catchup must be a positive timedelta"),
        ({"limit": 0}, "limit must be an int of at least 1"),
        ({"max_listed": -1}, "max_listed"),
        ({"now": datetime(2026, 1, 1)}, "now must be an aware datetime"),
        ({"last_tick": datetime(2026, 1, 1)}, "last_tick must be an aware datetime"),
        ({"start_at": at("2026-02-01T00:00Z"), "end_at": at("2026-01-01T00:00Z")}, "after"),
    ],
)
def test_due_ticks_refuses_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"last_tick": at("2026-01-01T00:00Z"), "now": at("2026-01-02T00:00Z")}
    with pytest.raises(ScheduleInvalid, match=message):
        due_ticks(HOURLY, **{**args, **kwargs})  # type: ignore[arg-type]


# --- backfill, jitter, keys, overlap ---------------------------------------------------------


def test_backfill_is_inclusive_and_bounded() -> None:
    week = backfill_ticks(WEEKDAYS_9, at("2026-01-05T08:00Z"), at("2026-01-11T08:00Z"))
    assert week == tuple(at(f"2026-01-{d:02d}T08:00Z") for d in range(5, 10))
    assert backfill_ticks(WEEKDAYS_9, at("2026-01-05T08:00Z"), at("2026-01-05T08:00Z")) == (
        at("2026-01-05T08:00Z"),
    )
    with pytest.raises(ScheduleInvalid, match="more than 4 ticks"):
        backfill_ticks(WEEKDAYS_9, at("2026-01-05T08:00Z"), at("2026-01-11T08:00Z"), limit=4)
    with pytest.raises(ScheduleInvalid, match="is before start"):
        backfill_ticks(WEEKDAYS_9, at("2026-01-05T08:00Z"), at("2026-01-04T08:00Z"))
    gap = backfill_ticks(
        parse_schedule("*/30 * * * *", "Europe/Paris"),
        at("2026-03-29T00:00Z"),
        at("2026-03-29T01:30Z"),
    )
    # 01:00, 01:30, then 02:00 + 02:30 + 03:00 as one run, then 03:30 (local)
    assert gap == tuple(at(f"2026-03-29T{t}Z") for t in ("00:00", "00:30", "01:00", "01:30"))


def test_jitter_is_deterministic_uniform_and_bounded() -> None:
    tick, jitter = at("2026-03-29T01:00Z"), timedelta(minutes=10)
    # pinned: a change would move every deployed schedule's start times
    assert jitter_delay("reports", tick, jitter) == timedelta(seconds=210, microseconds=683154)
    paris = tick.astimezone(zoneinfo.ZoneInfo("Europe/Paris"))
    assert jitter_delay("reports", paris, jitter) == jitter_delay("reports", tick, jitter)
    assert jitter_delay("reports", tick, timedelta(0)) == timedelta(0)
    delays = [jitter_delay("reports", tick + i * H, jitter) for i in range(2000)]
    assert all(timedelta(0) <= d < jitter for d in delays)
    assert len(set(delays)) > 1990
    mean = sum(delays, timedelta(0)) / len(delays)
    assert abs(mean - jitter / 2) < jitter * 0.05
    assert jitter_delay("other", tick, jitter) != jitter_delay("reports", tick, jitter)
    with pytest.raises(ScheduleInvalid, match="jitter must be a timedelta"):
        jitter_delay("reports", tick, -MIN)
    with pytest.raises(ScheduleInvalid, match="tick must be an aware datetime"):
        jitter_delay("reports", datetime(2026, 1, 1), MIN)


def test_idempotency_key() -> None:
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    tick = datetime(2026, 3, 29, 3, 0, tzinfo=paris)
    assert tick_idempotency_key("reports", tick) == "schedule:reports@2026-03-29T01:00:00Z"
    odd = at("2026-03-29T01:00:00.000250Z")
    assert tick_idempotency_key("r", odd) == "schedule:r@2026-03-29T01:00:00.000250Z"
    fits = "x" * (200 - len("schedule:@2026-03-29T01:00:00Z"))
    assert tick_idempotency_key(fits, tick) == f"schedule:{fits}@2026-03-29T01:00:00Z"
    long_a, long_b = "a" * 199 + "1", "a" * 199 + "2"
    key_a = tick_idempotency_key(long_a, tick)
    assert len(key_a) <= 200 and key_a.startswith("schedule~aaa")
    assert key_a.endswith("@2026-03-29T01:00:00Z") and key_a == tick_idempotency_key(long_a, tick)
    assert key_a != tick_idempotency_key(long_b, tick)
    assert len(tick_idempotency_key(fits + "x", odd)) <= 200
    for bad in ("", "a\x00b", "\ud800", "a" * 201, 5):
        with pytest.raises(ScheduleInvalid, match="schedule id"):
            tick_idempotency_key(bad, tick)  # type: ignore[arg-type]
        with pytest.raises(ScheduleInvalid, match="schedule id"):
            jitter_delay(bad, tick, timedelta(seconds=1))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("policy", "live", "buffered", "expected"),
    [
        ("skip", False, False, "start"),
        ("skip", True, False, "skip"),
        ("allow", False, False, "start"),
        ("allow", True, False, "start"),
        ("cancel_previous", False, False, "start"),
        ("cancel_previous", True, False, "cancel+start"),
        ("buffer_one", False, False, "start"),
        ("buffer_one", True, False, "buffer"),
        ("buffer_one", True, True, "skip"),
        ("buffer_one", False, True, "skip"),  # the buffered tick goes first
    ],
)
def test_overlap(policy: OverlapPolicy, live: bool, buffered: bool, expected: str) -> None:
    d = decide_overlap(policy, previous_live=live, buffered=buffered)
    shown = "cancel+" * d.cancel_previous + ("start" if d.start else "buffer" if d.buffer else "")
    assert (shown or "skip") == expected and d.skip == (expected == "skip")
    assert d.reason and len(d.reason) < 80
    assert not (d.start and d.buffer)


def test_unknown_overlap_policy() -> None:
    assert OVERLAP_POLICIES == ("skip", "buffer_one", "allow", "cancel_previous")
    with pytest.raises(ScheduleInvalid, match="unknown overlap policy 'queue'"):
        decide_overlap("queue", previous_live=True, buffered=False)  # type: ignore[arg-type]


# --- properties ------------------------------------------------------------------------------

MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
FIELDS = ((0, 59, ()), (0, 23, ()), (1, 31, ()), (1, 12, MONTHS), (0, 7, DAYS))
Match = Callable[[datetime], bool]


@st.composite
def crons(draw: st.DrawFn, croniter_safe: bool = False) -> tuple[str, Match, bool]:
    """A valid-looking expression from random field values, its independent matcher, and
    whether it can ever fire."""
    texts: list[str] = []
    sets: list[set[int]] = []
    for index, (lo, hi, names) in enumerate(FIELDS):
        if draw(st.integers(0, 99)) < (30, 45, 65, 75, 50)[index]:  # "*": ticks often
            texts.append("*")
            sets.append(set(range(lo, hi + 1)))
            continue
        items, values = [], set()
        for _ in range(draw(st.integers(1, 3))):
            a = draw(st.integers(lo, hi))
            b = draw(st.integers(a, hi))
            if croniter_safe and b == a:  # croniter reads a one-value range 'a-a' as '*'
                b = a + 1 if a < hi else b
                a = a if a < hi else a - 1
            n = draw(st.integers(1, 7 if index == 4 else hi - lo + 1))
            kind = draw(st.sampled_from(["one", "range", "star-step", "range-step", "from-step"]))
            if croniter_safe and index == 4 and kind == "from-step":
                kind = "range-step"
            if kind == "one":
                item, new = str(a), {a}
                if a - lo < len(names) and draw(st.booleans()):
                    item = names[a - lo].lower()
            elif kind == "range":
                item, new = f"{a}-{b}", set(range(a, b + 1))
            elif kind == "star-step":
                top = 6 if index == 4 else hi
                item, new = f"*/{n}", set(range(lo, top + 1, n))
            elif kind == "range-step":
                item, new = f"{a}-{b}/{n}", set(range(a, b + 1, n))
            else:
                top, first = (6, a % 7) if index == 4 else (hi, a)
                item, new = f"{a}/{n}", set(range(first, top + 1, n))
            items.append(item)
            values |= new
        texts.append(",".join(items))
        sets.append({0 if v == 7 else v for v in values} if index == 4 else values)
    minutes, hours, days, months, weekdays = sets
    either = len(days) < 31 and len(weekdays) < 7

    def match(wall: datetime) -> bool:
        if wall.minute not in minutes or wall.hour not in hours or wall.month not in months:
            return False
        dom, dow = wall.day in days, wall.isoweekday() % 7 in weekdays
        return (dom or dow) if either else (dom and dow)

    month_days = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
    fires = either or len(days) == 31 or min(days) <= max(month_days[m - 1] for m in months)
    return " ".join(texts), match, fires


_UNSTABLE = {"localtime", "posixrules", "Factory"}
ZONES = sorted(
    {
        "UTC",
        "Europe/Paris",
        "America/New_York",
        "Asia/Kolkata",
        "Australia/Adelaide",
        "Australia/Lord_Howe",
        "America/St_Johns",
        "America/Santiago",  # DST changes at midnight
        "America/Havana",
        "Asia/Kathmandu",
        "Pacific/Chatham",
        "Africa/Casablanca",
        "Europe/Dublin",  # "negative" DST in tzdata
    }
    | set(sorted(zoneinfo.available_timezones() - _UNSTABLE)[::20])
)


@functools.cache
def transitions(tz: str) -> tuple[datetime, ...]:
    """UTC offset changes of a zone in 2016-2034, found to the second."""
    zone, out = zoneinfo.ZoneInfo(tz), []
    t, step = at("2016-01-01T00:00Z"), timedelta(hours=12)
    while t < at("2034-12-31T00:00Z"):
        if t.astimezone(zone).utcoffset() != (t + step).astimezone(zone).utcoffset():
            lo, hi = int(t.timestamp()), int((t + step).timestamp())
            target = (t + step).astimezone(zone).utcoffset()
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if datetime.fromtimestamp(mid, zone).utcoffset() == target:
                    hi = mid
                else:
                    lo = mid
            out.append(datetime.fromtimestamp(hi, UTC))
        t += step
    return tuple(out)


def is_tick(t: datetime, zone: zoneinfo.ZoneInfo, match: Match) -> bool:
    """Independent oracle: ``t`` is the first occurrence of a matching wall time, or the end of
    a spring-forward gap that swallowed a matching wall time."""
    local = t.astimezone(zone)
    if local.fold == 0 and local.second == 0 and match(local.replace(tzinfo=None)):
        return True
    before, after = (t - US).astimezone(zone).utcoffset(), local.utcoffset()
    if before is None or after is None or after <= before:
        return False
    wall, end = t.replace(tzinfo=None) + before, t.replace(tzinfo=None) + after
    while wall < end:
        if match(wall):
            return True
        wall += MIN
    return False


@st.composite
def clocks(draw: st.DrawFn, tz: str) -> tuple[datetime, list[timedelta]]:
    """A starting ``now`` (often a few hours before a UTC offset change) and increasing jumps."""
    near = transitions(tz)
    if len(near) > 0 and draw(st.booleans()):
        start = draw(st.sampled_from(near)) - draw(st.integers(0, 6 * 3600)) * timedelta(seconds=1)
    else:
        start = at("2016-01-01T00:00Z") + timedelta(seconds=draw(st.integers(0, 18 * 365 * 86400)))
    start = start.replace(second=draw(st.sampled_from([0, 0, 7])))
    jump = st.one_of(
        st.integers(0, 600), st.integers(600, 8 * 3600), st.integers(86400, 400 * 86400)
    ).map(lambda s: timedelta(seconds=s))
    return start, draw(st.lists(jump, min_size=1, max_size=6))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), cron=crons(), tz=st.sampled_from(ZONES))
def test_sweeps_across_clock_jumps(
    data: st.DataObject, cron: tuple[str, Match, bool], tz: str
) -> None:
    expr, match, fires = cron
    if not fires:
        with pytest.raises(ScheduleInvalid, match="never occurs"):
            parse_schedule(expr, tz)
        return
    spec = parse_schedule(expr, tz)
    zone = spec.zone
    now, jumps = data.draw(clocks(tz))
    catchup = data.draw(st.none() | st.integers(1, 180).map(lambda m: m * MIN))
    limit = data.draw(st.sampled_from([3, 100]))
    start_at = end_at = None
    if data.draw(st.booleans()):
        start_at = now + data.draw(st.integers(-86400, 86400)) * timedelta(seconds=1)
        end_at = start_at + data.draw(st.integers(1, 200 * 86400)) * timedelta(seconds=1)
    window = {"catchup": catchup, "start_at": start_at, "end_at": end_at}

    plan = due_ticks(spec, last_tick=None, now=now, limit=limit, **window)  # type: ignore[arg-type]
    assert plan.start == plan.skipped == () and plan.last_tick == now
    seen: set[datetime] = set()
    started: set[datetime] = set()
    for jump in jumps:
        now += jump
        handled = plan.last_tick  # ticks up to here were handled, or predate the schedule
        for _ in range(200):  # the sweep calls again while ``more``
            watermark = plan.last_tick
            if plan.next_tick is not None:
                assert plan.next_tick > watermark and is_tick(plan.next_tick, zone, match)
                assert start_at is None or plan.next_tick >= start_at
                assert end_at is None or plan.next_tick <= end_at
            plan = due_ticks(spec, last_tick=watermark, now=now, limit=limit, **window)  # type: ignore[arg-type]
            produced = plan.skipped + plan.start
            assert list(produced) == sorted(set(produced)), "ticks strictly increase"
            assert all(watermark < t <= now for t in produced)
            assert not seen & set(produced), "a tick was produced twice"
            seen |= set(produced)
            started |= set(plan.start)
            for t in produced:
                assert is_tick(t, zone, match), (t, t.astimezone(zone))
                assert (start_at is None or t >= start_at) and (end_at is None or t <= end_at)
                if not match(t.astimezone(zone).replace(tzinfo=None)):
                    event("a tick moved out of a spring-forward gap")
            if any(watermark < t <= now for t in transitions(tz)):
                event("a call across a UTC offset change")
            if plan.skipped_count > 100:
                event("skipped ticks counted beyond those listed")
            if plan.more:
                event("start cut by limit")
            assert len(plan.skipped) == min(plan.skipped_count, 100)
            assert len(plan.start) <= limit and plan.last_tick >= watermark
            if not plan.more:
                assert plan.last_tick == max(watermark, now)
                assert plan.next_tick is None or plan.next_tick > now
                break
            assert plan.next_tick is not None and plan.next_tick <= now
        else:
            raise AssertionError("the sweep never caught up")
        hi = now if end_at is None else min(now, end_at)
        event(f"runs started: {'0' if not started else '1-9' if len(started) < 10 else '10+'}")
        if catchup is None:
            # the latest due tick started, or none was due: nothing due after it
            lo = plan.start[-1] if plan.start else max(handled, (start_at or handled) - US)
            assert next_tick(spec, lo) > hi and len(plan.start) <= 1
        else:
            # nothing inside the window is lost: brute force over its minutes
            first = now - catchup
            x = first.replace(second=0, microsecond=0)
            x = x if x >= first else x + MIN
            while x <= hi:
                if x > handled and (start_at is None or x >= start_at) and is_tick(x, zone, match):
                    assert x in started, ("lost", x, x.astimezone(zone))
                x += MIN


@settings(max_examples=150, deadline=None)
@given(
    cron=crons(croniter_safe=True), start=st.datetimes(datetime(2000, 1, 1), datetime(2099, 1, 1))
)
def test_utc_ticks_agree_with_croniter(cron: tuple[str, Match, bool], start: datetime) -> None:
    """In UTC there is no DST: the ticks are croniter's, with the same day-of-month/day-of-week
    rule (either, when both are restricted)."""
    expr, _, fires = cron
    if not fires:
        return
    spec = parse_schedule(expr)
    parts = expr.split()
    if (parts[2] != "*" and len(spec.days) == 31) or (parts[4] != "*" and len(spec.weekdays) == 7):
        # croniter is inconsistent with a day field matching every day written other than '*':
        # '0 0 1-31 * MON' and '0 0 1 * */1' run every day, '0 0 */2 * */1' odd days only;
        # iterflow reads such a field as '*' (every Monday, the 1st, odd days)
        return
    theirs = croniter(expr, start)
    t = start.replace(tzinfo=UTC)
    for _ in range(5):
        t = next_tick(spec, t)
        assert t == theirs.get_next(datetime).replace(tzinfo=UTC), expr


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), cron=crons(), tz=st.sampled_from(ZONES))
def test_skipped_count_is_exact_across_offset_changes(
    data: st.DataObject, cron: tuple[str, Match, bool], tz: str
) -> None:
    """``skipped_count`` is computed day by day; it equals the ticks enumerated one by one."""
    expr, _, fires = cron
    if not fires:
        return
    spec = parse_schedule(expr, tz)
    near = transitions(tz) or (at("2026-03-29T01:00Z"),)
    middle = data.draw(st.sampled_from(near))
    last = middle - data.draw(st.integers(0, 3 * 86400)) * timedelta(seconds=1)
    now = middle + data.draw(st.integers(0, 3 * 86400)) * timedelta(seconds=1)
    plan = due_ticks(
        spec,
        last_tick=last,
        now=now,
        max_listed=0,
        catchup=data.draw(st.none() | st.integers(1, 600).map(lambda m: m * MIN)),
    )
    assert plan.skipped == ()
    end = plan.start[0] - US if plan.start else now
    listed = backfill_ticks(spec, last + US, end, limit=10_000) if end > last else ()
    assert plan.skipped_count == len(listed)


@settings(max_examples=100, deadline=None)
@given(
    sid=st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=400),
    seconds=st.integers(0, 10**10),
    jitter=st.integers(0, 10**10).map(lambda us: timedelta(microseconds=us)),
)
def test_keys_and_jitter(sid: str, seconds: int, jitter: timedelta) -> None:
    tick = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    key = tick_idempotency_key(sid, tick)
    assert len(key) <= 200 and key == tick_idempotency_key(sid, tick)
    assert key != tick_idempotency_key(sid, tick + timedelta(seconds=1))
    delay = jitter_delay(sid, tick, jitter)
    assert delay == jitter_delay(sid, tick, jitter)
    assert timedelta(0) <= delay <= jitter and (delay < jitter or jitter == timedelta(0))


DST_ZONES = [
    "Europe/Paris",
    "America/New_York",
    "Australia/Adelaide",
    "Australia/Lord_Howe",
    "America/St_Johns",
    "America/Santiago",
    "America/Havana",
    "Pacific/Chatham",
    "Africa/Casablanca",
    "Europe/Dublin",
]


@settings(max_examples=80, deadline=None)
@given(data=st.data(), cron=crons(), tz=st.sampled_from(DST_ZONES))
def test_ticks_around_offset_changes_are_exactly_the_cron_matches(
    data: st.DataObject, cron: tuple[str, Match, bool], tz: str
) -> None:
    """Two days around a UTC offset change, the ticks are exactly the instants the independent
    oracle accepts: first occurrences of matching wall times, plus the end of each gap that
    swallowed one; none twice."""
    expr, match, fires = cron
    if not fires:
        return
    spec = parse_schedule(expr, tz)
    change = data.draw(st.sampled_from(transitions(tz)))
    first, last = change - timedelta(days=1), change + timedelta(days=1)
    ticks = backfill_ticks(spec, first, last, limit=3000)
    expected, x = [], first
    while x <= last:
        if is_tick(x, spec.zone, match):
            expected.append(x)
        x += MIN
    assert list(ticks) == expected
    for t in ticks:
        if not match(t.astimezone(spec.zone).replace(tzinfo=None)):
            event("a tick moved out of a spring-forward gap")
