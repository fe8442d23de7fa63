"""Helpers for unit-testing your flows without PostgreSQL (``Engine.in_memory``)."""

from __future__ import annotations

from datetime import UTC, datetime

from iterflow.core.durations import DurationLike, parse_duration

__all__ = ["FakeClock"]


class FakeClock:
    """A clock that only moves when told to: ``clock.advance("3d")`` fires a 3-day sleep."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self._now

    def advance(self, duration: DurationLike) -> datetime:
        """Move time forward and return the new now."""
        self._now += parse_duration(duration)
        return self._now
