"""Per-flow routing and limits: which runs a worker may claim, and whether a claim is admitted.

Pure decisions; the stores apply them (on PostgreSQL under an advisory lock per flow and key, so
every worker sees the same count):

- :class:`Gate`: the flow versions a worker serves and their :class:`Limits`. A run of a flow
  version the gate does not serve is never claimed: it stays queued for a worker that serves it.
- :func:`admit`: a claim of a limited run is admitted when the flow and key have fewer than
  ``concurrency`` live attempts and fewer than ``rate.n`` attempt starts in the last ``rate.per``;
  otherwise the run is **held**: it keeps its status, has no wake-up queued (nothing spins) and
  is woken when a slot frees (:func:`release`: the end of a live attempt of the same flow and
  key, or the time the rate window frees). Held runs are woken highest priority first, then
  oldest first, one line per key: a hot key's backlog waits out of the queue, so it cannot
  starve the other keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from iterflow.core import codec
from iterflow.core.durations import DurationLike, parse_duration
from iterflow.core.errors import FlowDefinitionError, InputInvalid

__all__ = [
    "DEFAULT_QUEUE",
    "Admission",
    "Gate",
    "LimitState",
    "Limits",
    "RateLimit",
    "RateLimitLike",
    "admit",
    "flow_limits",
    "held_summary",
    "release",
]

#: The queue of a flow that names none.
DEFAULT_QUEUE = "default"
#: A concurrency key is stored in ``runs.limit_key``: at most this many characters.
MAX_KEY_CHARS = 200
_UNLIMITED = 2**62


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``n`` attempt starts per ``per`` (a sliding window), per flow or per key."""

    n: int
    per: timedelta

    def __post_init__(self) -> None:
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise FlowDefinitionError(f"rate_limit: n must be a positive integer, got {self.n!r}")
        if not isinstance(self.per, timedelta) or self.per <= timedelta(0):
            raise FlowDefinitionError(
                f"rate_limit: per must be a positive duration, got {self.per!r}"
            )

    @classmethod
    def of(cls, value: RateLimitLike) -> RateLimit:
        """``RateLimit(10, timedelta(minutes=1))`` or the tuple ``(10, "1m")``."""
        if isinstance(value, RateLimit):
            return value
        if not isinstance(value, tuple) or len(value) != 2:
            raise FlowDefinitionError(
                f"rate_limit must be RateLimit(n, per) or a tuple (n, per) such as (10, '1m'), "
                f"got {codec.shown(value)}"
            )
        n, per = value
        try:
            period = parse_duration(per)
        except Exception as exc:
            raise FlowDefinitionError(f"rate_limit: invalid period {codec.shown(per)}") from exc
        return cls(n, period)


#: What ``rate_limit=`` accepts.
RateLimitLike = RateLimit | tuple[int, DurationLike]


@dataclass(frozen=True, slots=True)
class Limits:
    """A flow's limits: ``concurrency`` live attempts and/or ``rate`` attempt starts, per flow,
    or per value of ``key`` (a function of the validated input) when it is given."""

    concurrency: int | None = None
    key: Callable[[Any], Any] | None = field(default=None, compare=False)
    rate: RateLimit | None = None

    def __post_init__(self) -> None:
        c = self.concurrency
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
            raise FlowDefinitionError(f"concurrency must be a positive integer, got {c!r}")
        if self.key is not None and not callable(self.key):
            raise FlowDefinitionError("concurrency_key must be a function of the input")
        if self.key is not None and c is None and self.rate is None:
            raise FlowDefinitionError("concurrency_key needs concurrency= or rate_limit=")

    def key_of(self, value: Any) -> str:
        """The key of a run with input ``value`` ("" for flow-wide limits); ``INPUT_INVALID``
        if the key function raises or returns something that is not short text or an int."""
        if self.key is None:
            return ""
        try:
            key = self.key(value)
        except Exception as exc:
            raise InputInvalid(f"concurrency_key raised {type(exc).__name__}: {exc}") from exc
        if isinstance(key, int) and not isinstance(key, bool):
            key = str(key)
        return codec.check_text(key, what="concurrency_key", max_chars=MAX_KEY_CHARS, empty=True)


def flow_limits(
    concurrency: int | None,
    key: Callable[[Any], Any] | None,
    rate_limit: RateLimitLike | None,
) -> Limits | None:
    """The :class:`Limits` of ``@engine.flow(concurrency=, concurrency_key=, rate_limit=)``
    (None when none is set; ``FLOW_DEFINITION_INVALID`` for a bad one)."""
    if concurrency is None and key is None and rate_limit is None:
        return None
    rate = None if rate_limit is None else RateLimit.of(rate_limit)
    return Limits(concurrency=concurrency, key=key, rate=rate)


@dataclass(frozen=True)
class Gate:
    """What a worker may claim: ``served`` flow versions (``name@version``; None: any) and the
    limits of each (by ``name@version``)."""

    served: frozenset[str] | None = None
    limits: Mapping[str, Limits] = field(default_factory=dict)

    def serves(self, name: str, version: int) -> bool:
        """True when this worker runs ``name@version``."""
        return self.served is None or f"{name}@{version}" in self.served

    def limits_of(self, name: str, version: int) -> Limits | None:
        """The limits ``name@version`` declares here, None when it declares none."""
        return self.limits.get(f"{name}@{version}")

    @property
    def all_limited(self) -> bool:
        """True when every flow version served declares limits (a worker dedicated to limited
        flows): a store can go straight to the limited claim."""
        served = self.served
        return served is not None and len(served) > 0 and served <= self.limits.keys()


@dataclass(frozen=True, slots=True)
class LimitState:
    """What the store read about one flow and key (the claimed run itself left out)."""

    #: Attempts ``running`` now.
    live: int = 0
    #: Attempt starts recorded in the rate window (any age: :func:`admit` prunes).
    starts: tuple[datetime, ...] = ()
    #: Held runs with a wake-up queued (woken, not yet claimed).
    woken: int = 0
    #: Held runs waiting without a wake-up.
    held: int = 0


@dataclass(frozen=True, slots=True)
class Admission:
    """A decision: admit the claim (or not), the rate window to store, what to record on a
    held run, and which held runs of the key to wake (``wake_now`` at once, or the first in line
    at ``wake_at``)."""

    admitted: bool
    starts: tuple[datetime, ...] = ()
    held: dict[str, Any] | None = None
    wake_now: int = 0
    wake_at: datetime | None = None


def admit(limits: Limits, state: LimitState, now: datetime, *, key: str) -> Admission:
    """Admit a claim, or hold the run, under ``limits`` with ``state`` at ``now``."""
    window = _window(limits, state.starts, now)
    cap = limits.concurrency if limits.concurrency is not None else _UNLIMITED
    if state.live >= cap:
        held: dict[str, Any] | None = {
            "limit": "concurrency",
            "key": key,
            "live": state.live,
            "max": cap,
        }
    elif limits.rate is not None and len(window) >= limits.rate.n:
        held = {
            "limit": "rate",
            "key": key,
            "starts": len(window),
            "max": limits.rate.n,
            "per": limits.rate.per.total_seconds(),
            "until": (min(window) + limits.rate.per).isoformat(),
        }
    else:
        held = None
    if held is None:
        window = (*window, now) if limits.rate is not None else window
        plan = _wakes(limits, LimitState(state.live + 1, window, state.woken, state.held), now)
        return Admission(True, window, None, plan.wake_now, plan.wake_at)
    plan = _wakes(limits, LimitState(state.live, window, state.woken, state.held + 1), now)
    return Admission(False, window, held, plan.wake_now, plan.wake_at)


def release(limits: Limits, state: LimitState, now: datetime) -> Admission:
    """After a live attempt of the key ended: the held runs to wake."""
    return _wakes(
        limits,
        LimitState(state.live, _window(limits, state.starts, now), state.woken, state.held),
        now,
    )


def _window(limits: Limits, starts: tuple[datetime, ...], now: datetime) -> tuple[datetime, ...]:
    if limits.rate is None:
        return ()
    since = now - limits.rate.per
    return tuple(sorted(s for s in starts if s > since))


def _wakes(limits: Limits, state: LimitState, now: datetime) -> Admission:
    """Wake as many held runs as there are free slots now (counting those already woken); when
    only the rate window is full, wake the first in line when it frees."""
    cap = limits.concurrency if limits.concurrency is not None else _UNLIMITED
    free = cap - state.live - state.woken
    rate_free = _UNLIMITED
    if limits.rate is not None:
        rate_free = limits.rate.n - len(state.starts) - state.woken
    now_n = max(0, min(free, rate_free, state.held))
    wake_at = None
    if now_n == 0 and state.held and free > 0 and rate_free <= 0 and state.woken == 0:
        assert limits.rate is not None  # rate_free is bounded only by a rate limit
        wake_at = min(state.starts) + limits.rate.per
    return Admission(False, state.starts, None, now_n, wake_at)


def held_summary(name: str, held: Mapping[str, Any]) -> str:
    """``held back by concurrency limit of flow X key K (5/5 live)`` (explain's line)."""
    key = held.get("key") or ""
    scope = f"flow {name}" + (f" key {key}" if key else "")
    kind: Literal["concurrency", "rate"] = "rate" if held.get("limit") == "rate" else "concurrency"
    if kind == "concurrency":
        return (
            f"held back by concurrency limit of {scope} ({held.get('live')}/{held.get('max')} live)"
        )
    per = timedelta(seconds=float(held.get("per") or 0))
    return (
        f"held back by rate limit of {scope} ({held.get('starts')}/{held.get('max')} starts "
        f"per {per})"
    )
