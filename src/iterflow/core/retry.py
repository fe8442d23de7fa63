"""Retry policy math (pure): how long to wait before attempt ``n + 1``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from iterflow.core.durations import DurationLike, parse_duration

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter.

    ``retries`` is the number of *extra* attempts after the first (``retries=3`` → up to 4
    attempts). The wait before attempt ``n + 1`` is ``base * factor**(n - 1)``, capped at ``cap``,
    then spread by up to ``jitter`` (a fraction) using a random number supplied by the caller, so
    the math stays pure.
    """

    retries: int = 0
    base: float = 1.0
    factor: float = 2.0
    cap: float = 300.0
    jitter: float = 0.1
    kind: Literal["exponential", "linear", "fixed"] = "exponential"

    @staticmethod
    def of(retries: int = 0, backoff: DurationLike | RetryPolicy | None = None) -> RetryPolicy:
        """Build a policy from the ``retries=`` / ``backoff=`` arguments of ``ctx.step``."""
        if isinstance(backoff, RetryPolicy):
            return backoff if retries == 0 else _replace(backoff, retries=retries)
        base = parse_duration(backoff).total_seconds() if backoff is not None else 1.0
        return RetryPolicy(retries=retries, base=base)

    @property
    def max_attempts(self) -> int:
        """Total attempts allowed (first attempt included)."""
        return self.retries + 1

    def delay(self, attempt: int, rand: float) -> timedelta:
        """The wait after failed attempt ``attempt`` (1-based); ``rand`` is uniform in [0, 1)."""
        n = max(attempt, 1)
        if self.kind == "fixed":
            raw = self.base
        elif self.kind == "linear":
            raw = self.base * n
        else:
            raw = self.base * self.factor ** (n - 1)
        raw = min(raw, self.cap)
        return timedelta(seconds=raw * (1.0 + self.jitter * rand))


def _replace(policy: RetryPolicy, *, retries: int) -> RetryPolicy:
    return RetryPolicy(
        retries=retries,
        base=policy.base,
        factor=policy.factor,
        cap=policy.cap,
        jitter=policy.jitter,
        kind=policy.kind,
    )
