"""Durations: ``"3d"``, ``"1h30m"``, ``"250ms"``, ``timedelta`` or seconds; and due times."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from .errors import FlowError

__all__ = ["DurationLike", "WhenLike", "due_at", "parse_duration"]

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
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


class DurationInvalid(FlowError):
    """A duration string or value could not be understood."""

    code = "DURATION_INVALID"


def parse_duration(value: DurationLike) -> timedelta:
    """Parse ``"3d"``, ``"1h30m"``, ``"250ms"``, a ``timedelta`` or a number of seconds."""
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, bool):
        raise DurationInvalid(f"a duration cannot be a bool: {value!r}")
    elif isinstance(value, int | float):
        result = timedelta(seconds=value)
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        pos = 0
        result = timedelta(0)
        for match in _PART.finditer(text):
            if match.start() != pos:
                break
            result += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if not text or pos != len(text):
            raise DurationInvalid(
                f"cannot parse duration {value!r}; use e.g. '30s', '5m', '1h30m', '3d', '250ms'"
            )
    else:
        raise DurationInvalid(f"unsupported duration type {type(value).__name__}")
    if result < timedelta(0):
        raise DurationInvalid(f"a duration must not be negative: {value!r}")
    return result


def due_at(when: WhenLike, now: datetime) -> datetime:
    """The absolute due time of ``when`` (a duration from ``now`` or an aware datetime)."""
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise DurationInvalid("absolute times must be timezone-aware datetimes")
        return when
    return now + parse_duration(when)
