"""Durations: ``"3d"``, ``"1h30m"``, ``"250ms"``, ``timedelta`` or seconds; and due times."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta

from iterflow.core.codec import shown
from iterflow.core.errors import DurationInvalid

__all__ = ["DurationInvalid", "DurationLike", "WhenLike", "due_at", "parse_duration"]

DurationLike = str | timedelta | int | float
WhenLike = DurationLike | datetime

_UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}
#: The longest duration accepted (about 100 years): anything longer is a mistake, and would not
#: fit the calendar arithmetic of due times.
_MAX = timedelta(days=36_500)
_MAX_SECONDS = _MAX.total_seconds()
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(value: DurationLike) -> timedelta:
    """Parse ``"3d"``, ``"1h30m"``, ``"250ms"``, a ``timedelta`` or a number of seconds."""
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, bool):
        raise DurationInvalid(f"a duration cannot be a bool: {value!r}")
    elif isinstance(value, int | float):
        # abs() first: math.isfinite(10**5000) raises OverflowError, the comparison does not
        if abs(value) > _MAX_SECONDS or not math.isfinite(value):
            raise DurationInvalid(
                f"a duration in seconds must be finite and at most {_MAX_SECONDS:.0f}, "
                f"got {shown(value)}"
            )
        result = timedelta(seconds=value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        pos = 0
        result = timedelta(0)
        for match in _PART.finditer(text):
            if match.start() != pos:
                break
            try:
                result += float(match.group(1)) * _UNITS[match.group(2)]
            except OverflowError:
                raise DurationInvalid(f"duration {value[:100]!r} is too long") from None
            pos = match.end()
        if not text or pos != len(text):
            raise DurationInvalid(
                f"cannot parse duration {value[:100]!r}; use e.g. '30s', '5m', '1h30m', '3d', "
                "'250ms'"
            )
    else:
        raise DurationInvalid(f"unsupported duration type {type(value).__name__}")
    if result < timedelta(0):
        raise DurationInvalid(f"a duration must not be negative: {shown(value)}")
    if result > _MAX:
        raise DurationInvalid(f"a duration must be at most {_MAX.days} days: {shown(value)}")
    return result


def due_at(when: WhenLike, now: datetime) -> datetime:
    """The absolute due time of ``when`` (a duration from ``now`` or an aware datetime)."""
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise DurationInvalid("absolute times must be timezone-aware datetimes")
        return when
    try:
        return now + parse_duration(when)
    except OverflowError:
        raise DurationInvalid(f"{when!r} from now is past the year 9999") from None
