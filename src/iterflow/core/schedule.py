"""Cron schedules: which ticks are due, pure (time is always a parameter, never read).

**Expressions.** Five fields, ``minute hour day-of-month month day-of-week``: ``*``, numbers,
ranges ``a-b``, lists ``a,b``, steps ``*/n``, ``a-b/n`` and ``a/n`` (``a`` to the end of the
field), month names ``JAN``-``DEC`` and day names ``SUN``-``SAT`` (any case); day of week 0-7,
0 and 7 are Sunday, ``FRI-SUN`` means 5-7. The macros ``@yearly``, ``@annually``, ``@monthly``,
``@weekly``, ``@daily``, ``@midnight`` and ``@hourly`` are accepted. As in croniter and most crons,
when both day fields are restricted a day matches if *either* does (``0 0 1 * MON`` is the 1st
and every Monday); a field matching every value (``*``, ``*/1``, ``1-31``, ``0-6``) restricts
nothing, so ``0 0 1-31 * MON`` is every Monday. There is no seconds field: a sixth field means
seconds-last to croniter, seconds-first to Quartz and a year to others, so it is refused rather
than guessed. Reversed ranges (``22-2``), ``L``, ``W``, ``#``, ``H``, ``?`` and ``@reboot`` are
refused too, as is an expression that can never fire (``0 0 31 2 *``); refusing leaves room to
accept them later. Errors are :class:`ScheduleInvalid` (code ``SCHEDULE_INVALID``) and name the
field: ``field 2 (hour) '25' is out of range 0-23``.

**Wall-clock ticks.** A tick is a wall-clock time of the schedule's IANA zone (``tz``, default
``UTC``); ``0 9 * * MON-FRI`` in ``Europe/Paris`` is 09:00 in Paris all year, 08:00 UTC in winter
and 07:00 UTC in summer. Every function returns aware UTC datetimes. Each wall-clock tick runs
once, and no instant runs twice:

* spring forward: a time that does not exist that day (02:30 when clocks jump from 02:00 to 03:00)
  runs once, at the first instant after the gap (03:00 local). Several ticks inside the gap
  (``*/15 2 * * *``) collapse into that one run, and into the 03:00 tick if there is one;
* fall back: a time that happens twice (01:30 when clocks go from 02:00 back to 01:00) runs once,
  at its first occurrence (``fold=0``).

The rules hold for any zone and offset: half-hour zones (Asia/Kolkata), half-hour DST shifts
(Australia/Lord_Howe), DST with a half-hour base offset (Australia/Adelaide) and skipped days.

**Sweep.** A schedule row stores ``last_tick`` and ``next_tick``; a periodic sweep picks the rows
whose ``next_tick <= now`` and calls :func:`due_ticks` with the database's ``now``, starts
``plan.start`` (oldest first), records ``plan.skipped``/``plan.skipped_count``, and stores
``plan.last_tick`` and ``plan.next_tick`` (``None``: the schedule has ended). ``last_tick`` is a
watermark: every tick at or before it has been started or skipped, so no tick is due twice, and
changing the expression never replays the past.

* ``last_tick=None`` is a new schedule: nothing in the past is due, the first tick is the first
  one strictly after ``now`` (and at or after ``start_at``). To resume a paused schedule without
  catching up, pass the resume time as ``last_tick``.
* Every tick in ``(last_tick, now]`` inside ``[start_at, end_at]`` is due. ``catchup=None`` (the
  default) starts only the most recent one and skips the others: a schedule down for a week runs
  once, not 10,000 times. ``catchup=timedelta(hours=6)`` starts every due tick at most 6 hours
  old, oldest first, and skips older ones. It must be positive and should exceed the sweep
  interval: a tick is always a little late. A backlog is never started beyond the window. At
  most ``limit`` ticks start per call; then ``plan.more`` is true, ``plan.next_tick`` is the next
  pending tick (not after ``now``) and the sweep calls again: nothing in the window is lost.
* Skipped ticks are counted without listing them all: ``plan.skipped`` holds the oldest
  ``max_listed`` and ``plan.skipped_count`` all of them, computed day by day (a per-minute
  schedule down for a year is 525,600 skips, counted in tens of milliseconds).

**Backfill.** :func:`backfill_ticks` lists every tick in ``[start, end]`` (ignoring catch-up),
refusing more than ``limit``. Backfilled runs get the same idempotency keys as the sweep's, so a
backfill over ticks that already ran starts nothing new.

**Jitter.** :func:`jitter_delay` spreads the starts of many schedules ticking at the same time:
a run is started at ``tick + jitter_delay(id, tick, jitter)``, uniform in ``[0, jitter)`` and
derived from a SHA-256 of the schedule id and the tick, so every worker and every replay computes
the same delay. The tick itself (and its idempotency key) does not move.

**Idempotency key.** :func:`tick_idempotency_key` is ``schedule:<id>@<tick in UTC>``, e.g.
``schedule:reports@2026-03-29T01:00:00Z``: two sweeps racing on one tick start one run. An id
too long for the 200-character key is shortened to a prefix plus a hash (``schedule~…``).
A schedule id is 1 to 200 characters of text PostgreSQL stores (no NUL, no lone surrogate):
:func:`check_schedule_id`.

**Overlap.** :func:`decide_overlap` says what to do with a tick when the previous run may still
be live: ``skip`` (default), ``buffer_one`` (start it when the previous run ends; at most one
buffered, later ticks are skipped), ``allow`` or ``cancel_previous``.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from itertools import islice, takewhile
from typing import Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from iterflow.core.codec import check_text, shown
from iterflow.core.errors import InputInvalid, ScheduleInvalid

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_ID_CHARS",
    "MAX_KEY_CHARS",
    "MAX_LISTED",
    "OVERLAP_POLICIES",
    "CronSpec",
    "OverlapDecision",
    "OverlapPolicy",
    "ScheduleInvalid",
    "TickPlan",
    "backfill_ticks",
    "check_schedule_id",
    "decide_overlap",
    "due_ticks",
    "jitter_delay",
    "next_tick",
    "parse_schedule",
    "tick_idempotency_key",
    "validate_window",
]


OverlapPolicy = Literal["skip", "buffer_one", "allow", "cancel_previous"]
OVERLAP_POLICIES: tuple[OverlapPolicy, ...] = get_args(OverlapPolicy)
DEFAULT_LIMIT = 100
"""Ticks :func:`due_ticks` starts per call at most."""
MAX_LISTED = 100
"""Skipped ticks :func:`due_ticks` lists at most (all are counted)."""
MAX_KEY_CHARS = 200
"""The longest idempotency key a tick gets (:func:`tick_idempotency_key`)."""
MAX_ID_CHARS = 200
"""The longest schedule id (:func:`check_schedule_id`)."""

_DAY = timedelta(days=1)
_US = timedelta(microseconds=1)
_MIN = datetime.min.replace(tzinfo=UTC)
_MAX = datetime.max.replace(tzinfo=UTC)
_MAX_MISSES = 366 * 9  # the sparsest expression, 29 Feb, can skip 8 years (2096 to 2104)
_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_WEEKDAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
# (name, lowest, highest, names of lowest, lowest + 1, ...)
_FIELDS: tuple[tuple[str, int, int, list[str]], ...] = (
    ("minute", 0, 59, []),
    ("hour", 0, 23, []),
    ("day of month", 1, 31, []),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _WEEKDAYS),
)
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_UNSTABLE_ZONES = {"localtime", "posixrules", "Factory"}  # machine-dependent or meaningless


@dataclass(frozen=True)
class CronSpec:
    """A validated cron expression in an IANA zone; build it with :func:`parse_schedule`.

    ``expr`` is normalized (single spaces, macros expanded); the field sets hold the matching
    values (``weekdays``: 0 is Sunday). Equal specs tick identically.
    """

    expr: str
    tz: str = "UTC"
    minutes: frozenset[int] = field(init=False, repr=False, compare=False)
    hours: frozenset[int] = field(init=False, repr=False, compare=False)
    days: frozenset[int] = field(init=False, repr=False, compare=False)
    months: frozenset[int] = field(init=False, repr=False, compare=False)
    weekdays: frozenset[int] = field(init=False, repr=False, compare=False)
    day_or: bool = field(init=False, repr=False, compare=False)
    zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _times: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.expr, str):
            raise ScheduleInvalid(f"a cron expression must be a string, got {shown(self.expr)}")
        text = " ".join(self.expr.split())
        text = _MACROS.get(text.lower(), text)
        parts = text.split(" ") if text else []
        if len(text) > 1000:
            raise ScheduleInvalid(f"cron expression is {len(text)} characters, over 1000")
        if text.startswith("@"):
            raise ScheduleInvalid(
                f"unknown cron macro {text[:50]!r}; use one of {', '.join(_MACROS)} or 5 fields"
            )
        if len(parts) != 5:
            fields = f"{len(parts)} field" + "s" * (len(parts) != 1)
            raise ScheduleInvalid(
                f"cron expression {text[:100]!r} has {fields}; use 5: minute hour day-of-month "
                "month day-of-week (no seconds field), e.g. '0 9 * * MON-FRI'"
            )
        sets = [_parse_field(i, part) for i, part in enumerate(parts)]
        day_or = len(sets[2]) < 31 and len(sets[4]) < 7
        if len(sets[2]) < 31 and not day_or:
            longest = max(_MONTH_DAYS[m - 1] for m in sets[3])
            if min(sets[2]) > longest:
                raise ScheduleInvalid(
                    f"field 3 (day of month) {parts[2]!r} never occurs in field 4 (month) "
                    f"{parts[3]!r}: the expression would never fire"
                )
        put = object.__setattr__
        put(self, "expr", text)
        put(self, "zone", _zone(self.tz))
        for name, values in zip(
            ("minutes", "hours", "days", "months", "weekdays"), sets, strict=True
        ):
            put(self, name, values)
        put(self, "day_or", day_or)
        put(self, "_times", tuple(sorted(h * 60 + m for h in sets[1] for m in sets[0])))

    def day_matches(self, day: date) -> bool:
        """Whether the expression fires on this calendar day."""
        if day.month not in self.months:
            return False
        dom, dow = day.day in self.days, day.isoweekday() % 7 in self.weekdays
        return (dom or dow) if self.day_or else (dom and dow)


def parse_schedule(expr: str, tz: str = "UTC") -> CronSpec:
    """Validate a 5-field cron expression and an IANA zone (see the module docstring)."""
    return CronSpec(expr, tz)


def _zone(tz: object) -> ZoneInfo:
    if not isinstance(tz, str):
        raise ScheduleInvalid(f"a time zone must be an IANA name string, got {shown(tz)}")
    try:
        if tz in _UNSTABLE_ZONES:
            raise ValueError(tz)
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleInvalid(
            f"unknown time zone {tz[:100]!r}: use an IANA name such as 'Europe/Paris' or 'UTC'"
        ) from None


def _parse_field(index: int, text: str) -> frozenset[int]:
    name, lo, hi, names = _FIELDS[index]
    where = f"field {index + 1} ({name})"
    span = 7 if names is _WEEKDAYS else hi - lo + 1
    values: set[int] = set()
    for item in text.split(","):
        base, slash, step_text = item.partition("/")
        top = 6 if names is _WEEKDAYS else hi  # '*' and 'a/n' in day of week stop at Saturday
        if base == "*":
            start, end = lo, top
        else:
            first, dash, last = base.partition("-")
            start = _value(where, first, item, lo, hi, names)
            if names is _WEEKDAYS and start == 7 and not dash:
                start = 0  # '7' and '7/2' start on Sunday
            end = _value(where, last, item, lo, hi, names) if dash else top if slash else start
            if names is _WEEKDAYS and dash and end == 0 < start:
                end = 7  # FRI-SUN
            if start > end:
                raise ScheduleInvalid(
                    f"{where} range {item[:50]!r} is reversed; split it, e.g. '22-23,0-2'"
                )
        step = 1
        if slash:
            digits = step_text.isascii() and step_text.isdigit() and len(step_text) < 5
            if not (digits and 0 < int(step_text) <= span):
                raise ScheduleInvalid(
                    f"{where} step {step_text[:50]!r} in {item[:50]!r} must be a whole number "
                    f"from 1 to {span}"
                )
            step = int(step_text)
        values.update(range(start, end + 1, step))
    if names is _WEEKDAYS and 7 in values:
        values = (values - {7}) | {0}
    return frozenset(values)


def _value(where: str, token: str, item: str, lo: int, hi: int, names: list[str]) -> int:
    if token.isascii() and token.isdigit():
        if len(token) > 4 or not lo <= int(token) <= hi:
            raise ScheduleInvalid(f"{where} {token[:50]!r} is out of range {lo}-{hi}")
        return int(token)
    if token.upper() in names:
        return names.index(token.upper()) + lo
    named = f" or a name {names[0]}-{names[-1]}" if names else ""
    raise ScheduleInvalid(
        f"{where} {item[:50]!r} is not valid: use a number {lo}-{hi}{named}, '*', ranges 'a-b', "
        "lists 'a,b' and steps '*/n'"
    )


def validate_window(
    start_at: datetime | None, end_at: datetime | None
) -> tuple[datetime | None, datetime | None]:
    """Check ``start_at``/``end_at`` (aware, end after start); returns them in UTC."""
    start = None if start_at is None else _utc(start_at, "start_at")
    end = None if end_at is None else _utc(end_at, "end_at")
    if start is not None and end is not None and end <= start:
        raise ScheduleInvalid(
            f"end_at {end.isoformat()} must be after start_at {start.isoformat()}"
        )
    return start, end


def _check_int(value: object, what: str, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ScheduleInvalid(f"{what} must be an int of at least {least}, got {shown(value)}")


def _utc(value: object, what: str) -> datetime:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise ScheduleInvalid(f"{what} must be an aware datetime, got {shown(value)}")
    return value.astimezone(UTC)


def _walls(spec: CronSpec, wall: datetime, forward: bool) -> Iterator[datetime]:
    """Matching naive wall-clock times: after ``wall`` ascending, or at/before it descending."""
    times, day, misses = spec._times, wall.date(), 0
    cut = bisect_right(times, wall.hour * 60 + wall.minute)
    todays = times[cut:] if forward else times[cut - 1 :: -1] if cut else ()
    while misses < _MAX_MISSES:
        if spec.day_matches(day):
            misses = 0
            for m in todays:
                yield datetime.combine(day, time(m // 60, m % 60))
        else:
            misses += 1
        todays = times if forward else times[::-1]
        try:
            day = day + _DAY if forward else day - _DAY
        except OverflowError:
            return


def _instant(zone: ZoneInfo, wall: datetime) -> datetime:
    """The UTC instant of a wall-clock time: its first occurrence if it happens twice, the end
    of the gap (the transition) if it does not exist."""
    after = wall.replace(tzinfo=zone).astimezone(UTC)  # fold=0: offset before the transition
    if after.astimezone(zone).replace(tzinfo=None) == wall:
        return after
    # In a gap, fold=1 (the offset after) lands before the transition and fold=0 after it.
    lo = int(wall.replace(tzinfo=zone, fold=1).astimezone(UTC).timestamp())
    hi = int(after.timestamp())
    target = after.astimezone(zone).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, zone).utcoffset() == target:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def _ticks(spec: CronSpec, after: datetime) -> Iterator[datetime]:
    """Distinct tick instants strictly after ``after`` (UTC), ascending."""
    try:
        last = after
        for wall in _walls(spec, after.astimezone(spec.zone).replace(tzinfo=None), True):
            tick = _instant(spec.zone, wall)
            if tick > last:  # skips ticks already run in a repeated hour, and collapsed gaps
                yield tick
                last = tick
    except OverflowError:
        return


def _latest(spec: CronSpec, at: datetime) -> datetime | None:
    """The last tick at or before ``at`` (UTC), or None."""
    local = at.astimezone(spec.zone)
    # In the second occurrence of a repeated hour, its later wall times already ran (fold=0).
    zero = timedelta(0)
    shift = (local.replace(fold=0).utcoffset() or zero) - (
        local.replace(fold=1).utcoffset() or zero
    )
    try:
        for wall in _walls(spec, local.replace(tzinfo=None) + max(shift, zero), False):
            tick = _instant(spec.zone, wall)
            if tick <= at:
                return tick
    except OverflowError:
        pass
    return None


def _count(spec: CronSpec, after: datetime, before: datetime) -> int:
    """How many ticks lie strictly between ``after`` and ``before``, a day at a time: a whole
    day without a UTC offset change counts its times at once, others are enumerated."""
    if before <= after:
        return 0
    zone, times, count, last = spec.zone, spec._times, 0, None
    day = max(after, _MIN + 2 * _DAY).astimezone(zone).date() - _DAY
    end = min(before, _MAX - 2 * _DAY).astimezone(zone).date() + _DAY
    while day <= end:
        if spec.day_matches(day):
            first = _instant(zone, datetime.combine(day, time()))
            nxt = _instant(zone, datetime.combine(day + _DAY, time()))
            steady = (
                nxt - first == _DAY
                and first.astimezone(zone).utcoffset() == nxt.astimezone(zone).utcoffset()
            )
            if steady and after < first and nxt < before:
                count += len(times)
            else:
                for m in times:
                    tick = _instant(zone, datetime.combine(day, time(m // 60, m % 60)))
                    if after < tick < before and tick != last:
                        count, last = count + 1, tick
        day += _DAY
    return count


def next_tick(spec: CronSpec, after: datetime) -> datetime:
    """The first tick strictly after ``after`` (aware), in UTC."""
    tick = next(_ticks(spec, _utc(after, "after")), None)
    if tick is None:
        raise ScheduleInvalid(f"{spec.expr!r} has no tick after {after.isoformat()}")
    return tick


@dataclass(frozen=True)
class TickPlan:
    """What a sweep does now: start ``start``, record ``skipped``, store ``last_tick`` and
    ``next_tick`` (see the module docstring)."""

    start: tuple[datetime, ...]
    """Ticks to start now, oldest first."""
    skipped: tuple[datetime, ...]
    """The oldest skipped ticks (missed, older than the catch-up window), at most ``max_listed``."""
    skipped_count: int
    """All skipped ticks, listed or not."""
    last_tick: datetime
    """The new watermark, passed back as ``last_tick``: every tick at or before it is handled."""
    next_tick: datetime | None
    """The first pending tick: after ``now`` unless ``more``; None when past ``end_at``."""
    more: bool = False
    """``limit`` cut ``start``: more ticks are due now, call again."""


def due_ticks(
    spec: CronSpec,
    *,
    last_tick: datetime | None,
    now: datetime,
    catchup: timedelta | None = None,
    start_at: datetime | None = None,
    end_at: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
    max_listed: int = MAX_LISTED,
) -> TickPlan:
    """Plan the ticks due at ``now`` after ``last_tick`` (see the module docstring)."""
    now = _utc(now, "now")
    start_at, end_at = validate_window(start_at, end_at)
    if catchup is not None and (not isinstance(catchup, timedelta) or catchup <= timedelta(0)):
        raise ScheduleInvalid(
            f"catchup must be a positive timedelta or None (run only the latest missed tick), "
            f"got {shown(catchup)}"
        )
    _check_int(limit, "limit", 1)
    _check_int(max_listed, "max_listed", 0)
    floor = _MIN if start_at is None else start_at - _US  # ticks strictly after it may run
    start: tuple[datetime, ...] = ()
    skipped: tuple[datetime, ...] = ()
    count, more = 0, False
    mark = now if last_tick is None else max(_utc(last_tick, "last_tick"), now)
    if last_tick is not None:
        lo = max(_utc(last_tick, "last_tick"), floor)
        hi = now if end_at is None else min(now, end_at)
        if catchup is None:
            latest = _latest(spec, hi) if hi > lo else None
            start = (latest,) if latest is not None and latest > lo else ()
            cut = start[0] if start else lo
        else:
            window = now - min(catchup, now - _MIN)
            due = _ticks(spec, max(lo, window - _US) if window > _MIN else lo)
            start = tuple(islice(takewhile(lambda t: t <= hi, due), limit + 1))
            more = len(start) > limit
            start = start[:limit]
            cut = min(window, hi + _US) if hi < _MAX else window
        skipped = tuple(islice(takewhile(lambda t: t < cut, _ticks(spec, lo)), max_listed + 1))
        count = len(skipped) if len(skipped) <= max_listed else _count(spec, lo, cut)
        skipped = skipped[:max_listed]
        if more:
            mark = start[-1]
    following = next(_ticks(spec, max(mark, floor)), None)
    if following is not None and end_at is not None and following > end_at:
        following = None
    return TickPlan(start, skipped, count, mark, following, more)


def backfill_ticks(
    spec: CronSpec, start: datetime, end: datetime, *, limit: int = 1000
) -> tuple[datetime, ...]:
    """Every tick in ``[start, end]``, oldest first; more than ``limit`` is refused."""
    first, last = _utc(start, "start"), _utc(end, "end")
    if last < first:
        raise ScheduleInvalid(
            f"backfill end {last.isoformat()} is before start {first.isoformat()}"
        )
    _check_int(limit, "limit", 0)
    ticks = tuple(islice(takewhile(lambda t: t <= last, _ticks(spec, first - _US)), limit + 1))
    if len(ticks) > limit:
        raise ScheduleInvalid(
            f"backfill from {first.isoformat()} to {last.isoformat()} has more than {limit} "
            "ticks; narrow the range or raise the limit"
        )
    return ticks


def _tick_text(tick: datetime) -> str:
    tick = _utc(tick, "tick")
    fraction = f".{tick.microsecond:06d}" if tick.microsecond else ""
    return f"{tick:%Y-%m-%dT%H:%M:%S}{fraction}Z"


def check_schedule_id(schedule_id: object) -> str:
    """A schedule id: a string of 1 to :data:`MAX_ID_CHARS` characters that PostgreSQL stores as
    text (no NUL, no lone surrogate); anything else raises ``SCHEDULE_INVALID``."""
    try:
        return check_text(schedule_id, what="a schedule id", max_chars=MAX_ID_CHARS)
    except InputInvalid as exc:
        raise ScheduleInvalid(f"{exc.message} (got {shown(schedule_id)})") from None


def tick_idempotency_key(schedule_id: str, tick: datetime) -> str:
    """``schedule:<id>@<tick in UTC>``, at most 200 characters; a long id becomes
    ``schedule~<prefix>~<sha256>@<tick>``."""
    text, sid = _tick_text(tick), check_schedule_id(schedule_id)
    key = f"schedule:{sid}@{text}"
    if len(key) <= MAX_KEY_CHARS:
        return key
    digest = hashlib.sha256(sid.encode()).hexdigest()[:40]
    return f"schedule~{sid[: MAX_KEY_CHARS - len(text) - 52]}~{digest}@{text}"


def jitter_delay(schedule_id: str, tick: datetime, jitter: timedelta) -> timedelta:
    """A delay uniform in ``[0, jitter)``, the same for every caller of one (schedule, tick)."""
    if not isinstance(jitter, timedelta) or jitter < timedelta(0):
        raise ScheduleInvalid(f"jitter must be a timedelta of at least 0, got {shown(jitter)}")
    seed = f"{check_schedule_id(schedule_id)}\x00{_tick_text(tick)}".encode()
    draw = int.from_bytes(hashlib.sha256(seed).digest()[:8], "big")
    return timedelta(microseconds=(jitter // _US * draw) >> 64)


@dataclass(frozen=True)
class OverlapDecision:
    """What to do with a tick: ``cancel_previous`` then ``start``, ``buffer`` it, or skip it."""

    start: bool
    cancel_previous: bool
    buffer: bool
    reason: str

    @property
    def skip(self) -> bool:
        return not (self.start or self.buffer)


def decide_overlap(
    policy: OverlapPolicy, *, previous_live: bool, buffered: bool
) -> OverlapDecision:
    """Apply an overlap policy to a tick. ``previous_live``: a run of this schedule is still
    live; ``buffered``: a tick is already buffered (only ``buffer_one`` buffers)."""
    if policy not in OVERLAP_POLICIES:
        raise ScheduleInvalid(
            f"unknown overlap policy {shown(policy)}; use one of {', '.join(OVERLAP_POLICIES)}"
        )
    if policy == "buffer_one" and buffered:
        return OverlapDecision(False, False, False, "skipped: a tick is already buffered")
    if not previous_live:
        return OverlapDecision(True, False, False, "started: no previous run is live")
    if policy == "allow":
        return OverlapDecision(True, False, False, "started alongside the live previous run")
    if policy == "cancel_previous":
        return OverlapDecision(True, True, False, "started after canceling the previous run")
    if policy == "buffer_one":
        return OverlapDecision(False, False, True, "buffered until the previous run ends")
    return OverlapDecision(False, False, False, "skipped: the previous run is still live")
