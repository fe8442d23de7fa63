"""Checks of the public API's arguments: typed errors before anything is read or written.

Pure functions shared by every entry point (``start``, ``signal``, ``cancel``, ``status``,
``list_runs``, ``result``): a caller's value is accepted, coerced to its one canonical form, or
refused with ``INPUT_INVALID`` naming the argument. Payloads are the codec's business
(:mod:`iterflow.core.codec`); this module checks everything else.
"""

from __future__ import annotations

import itertools
import math
import sys
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

from iterflow.core import codec
from iterflow.core.durations import parse_duration
from iterflow.core.errors import InputInvalid
from iterflow.core.states import TERMINAL_STATUSES, RunStatus, ordered

__all__ = [
    "DURATION_TYPES",
    "INT4_MAX",
    "INT4_MIN",
    "check_cursor",
    "check_deadline",
    "check_id_prefix",
    "check_key",
    "check_limit",
    "check_priority",
    "check_tags",
    "check_time",
    "check_timeout",
    "check_version",
    "run_id",
    "statuses",
    "terminal_statuses",
]

INT4_MIN, INT4_MAX = -(2**31), 2**31 - 1
_MAX_FLOAT = sys.float_info.max
_STATUS_VALUES = frozenset(s.value for s in RunStatus)
_MAX_STATUSES = 100


#: What a duration argument may be (``iterflow.core.durations.DurationLike``).
DURATION_TYPES = (str, timedelta, int, float)


def run_id(value: object) -> uuid.UUID:
    """A run id: a ``UUID`` or its text."""
    if isinstance(value, uuid.UUID):
        return value
    if not isinstance(value, str):
        raise InputInvalid(f"run id must be a UUID or its text, got {type(value).__name__}")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InputInvalid(f"run id {value[:100]!r} is not a UUID") from None


def check_key(key: object, *, max_chars: int) -> str | None:
    """An idempotency key: ``None`` or text of 1..``max_chars`` characters PostgreSQL stores."""
    if key is None:
        return None
    return codec.check_text(key, what="idempotency_key", max_chars=max_chars)


def check_tags(tags: object, *, cap: int, max_chars: int) -> tuple[str, ...]:
    """Tags: ``None`` or a list of at most ``cap`` strings (never a string's characters)."""
    if tags is None:
        return ()
    if isinstance(tags, str | bytes | bytearray | Mapping) or not isinstance(tags, Iterable):
        raise InputInvalid(
            f"tags must be a list of strings, got {type(tags).__name__}; e.g. tags=['customer:42']"
        )
    tag_list = _listed(tags, "tags", cap)
    if len(tag_list) > cap:
        raise InputInvalid(f"a run may carry at most {cap} tags (Settings.max_tags_per_run)")
    return tuple(codec.check_text(tag, what="tag", max_chars=max_chars) for tag in tag_list)


def check_priority(priority: object) -> int:
    """A priority: an ``int`` in PostgreSQL's ``integer`` range."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InputInvalid(f"priority must be an integer, got {type(priority).__name__}")
    if not INT4_MIN <= priority <= INT4_MAX:
        raise InputInvalid(f"priority must be between {INT4_MIN} and {INT4_MAX}")
    return priority


def check_limit(limit: object, *, most: int = 1000) -> int:
    """A page size: an ``int`` in 1..``most``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= most:
        raise InputInvalid(f"limit must be an integer between 1 and {most}")
    return limit


def check_cursor(cursor: object) -> int | None:
    """A keyset cursor: ``None`` or the integer ``next_cursor`` of a previous page."""
    if cursor is None:
        return None
    if isinstance(cursor, bool) or not isinstance(cursor, int) or not 0 <= cursor < 2**63:
        raise InputInvalid(
            f"cursor must be the integer next_cursor of a previous page, got {codec.shown(cursor)}"
        )
    return cursor


def check_timeout(timeout: object) -> float | None:
    """A timeout: ``None`` (wait for ever) or a finite number of seconds >= 0."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise InputInvalid(f"timeout must be a number of seconds, got {type(timeout).__name__}")
    # the deadline is float arithmetic: an int too large for a float is not a usable timeout
    if not -_MAX_FLOAT <= timeout <= _MAX_FLOAT or not math.isfinite(timeout) or timeout < 0:
        raise InputInvalid(
            f"timeout must be a finite number of seconds >= 0, got {codec.shown(timeout)}"
        )
    return float(timeout)


def statuses(status: object) -> list[RunStatus]:
    """A status filter: one status (text or :class:`RunStatus`), an iterable of them, or None."""
    if status is None:
        return []
    known = ", ".join(s.value for s in RunStatus)
    if isinstance(status, str | RunStatus):
        raw: list[object] = [status]
    elif isinstance(status, bytes | bytearray | Mapping) or not isinstance(status, Iterable):
        raise InputInvalid(
            f"status must be a status or a list of them ({known}), got {type(status).__name__}"
        )
    else:
        raw = _listed(status, "status", _MAX_STATUSES)
        if len(raw) > _MAX_STATUSES:
            raise InputInvalid(f"status lists at most {_MAX_STATUSES} statuses ({known})")
    out: list[RunStatus] = []
    for item in raw:
        if not isinstance(item, str) or item not in _STATUS_VALUES:
            raise InputInvalid(f"unknown status {codec.shown(item)}; use one of: {known}")
        out.append(RunStatus(item))
    return out


def terminal_statuses(status: object) -> list[RunStatus]:
    """A purge's status filter: like :func:`statuses`, terminal statuses only (None: all)."""
    chosen = statuses(status) or list(ordered(TERMINAL_STATUSES))
    live = [s.value for s in chosen if s not in TERMINAL_STATUSES]
    if live:
        raise InputInvalid(
            f"only finished runs can be purged; {', '.join(live)} is not a terminal status "
            "(use done, failed, canceled or compensation_failed)"
        )
    return list(dict.fromkeys(chosen))


def check_deadline(value: object) -> timedelta:
    """A run deadline: a positive duration (``"2d"``, a ``timedelta``, seconds)."""
    if value is None or isinstance(value, bool) or not isinstance(value, DURATION_TYPES):
        raise InputInvalid(
            f"deadline must be a duration like '2d', a timedelta or seconds, got "
            f"{type(value).__name__}"
        )
    deadline = parse_duration(value)
    if deadline <= timedelta(0):
        raise InputInvalid(f"deadline must be longer than zero, got {codec.shown(value)}")
    return deadline


def check_version(version: object) -> int | None:
    """A flow version filter: ``None`` or an ``int`` in PostgreSQL's ``integer`` range."""
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, int):
        raise InputInvalid(f"version must be an integer, got {type(version).__name__}")
    if not INT4_MIN <= version <= INT4_MAX:
        raise InputInvalid(f"version must be between {INT4_MIN} and {INT4_MAX}")
    return version


def check_time(value: object, *, what: str) -> datetime | None:
    """A time bound: ``None`` or a timezone-aware ``datetime`` (a naive one is ambiguous)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InputInvalid(f"{what} must be a datetime, got {type(value).__name__}")
    if value.utcoffset() is None:
        raise InputInvalid(
            f"{what} must be timezone-aware, e.g. datetime(2026, 1, 1, tzinfo=timezone.utc)"
        )
    return value


_HEX = frozenset("0123456789abcdef")


def check_id_prefix(prefix: object) -> str | None:
    """A run id prefix: ``None`` or 1..36 characters of a run id's text (dashes ignored,
    any case); returned as lowercase hex without dashes."""
    if prefix is None:
        return None
    if not isinstance(prefix, str):
        raise InputInvalid(f"id_prefix must be text, got {type(prefix).__name__}")
    digits = prefix.strip().replace("-", "").lower()
    if not 1 <= len(digits) <= 32 or not _HEX.issuperset(digits) or len(prefix) > 40:
        raise InputInvalid(
            f"id_prefix {codec.shown(prefix)} is not the start of a run id (hex digits, e.g. "
            "'3fa85f64')"
        )
    return digits


def _listed(values: Iterable[object], what: str, cap: int) -> list[object]:
    """At most ``cap + 1`` items of a caller's iterable; one that fails to iterate is invalid
    input (``INPUT_INVALID`` with the failure as its cause), not a crash."""
    try:
        return list(itertools.islice(values, cap + 1))
    except Exception as exc:
        raise InputInvalid(
            f"{what} could not be iterated: {type(exc).__name__}; pass a list"
        ) from exc
