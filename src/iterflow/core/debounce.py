"""Debounce and singletons: how a start with ``key=`` joins a run instead of starting one.

* ``start(input, debounce="5s", key="cart-1")``: the run waits for a quiet period of 5 s.
  Another debounced start of the same flow version with the same key before it begins joins
  it (``created=False``), restarts the quiet period, and replaces the run's input
  (``debounce_keep="last"``, the default) or leaves the first one (``"first"``). Once a worker
  has begun the run, the next debounced start starts a new run.
* ``start(input, singleton=True, key="nightly")``: while a run of the flow with that key is
  live (not done, failed or canceled), a start returns it (``created=False``) instead of
  starting a second.

Both together: starts during the quiet period join the waiting run, starts while it runs
return it. Without ``key`` the flow itself is the key. The store serializes the starts of one
(flow, key) (a transaction-level advisory lock on PostgreSQL), so concurrent callers agree. Pure:
:func:`start_control` checks the arguments; the store decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from iterflow.core import codec
from iterflow.core.durations import DurationLike, parse_duration
from iterflow.core.errors import InputInvalid

__all__ = ["DEBOUNCE_META_KEY", "DebounceKeep", "StartControl", "start_control"]

#: Which input a debounced run keeps: the latest start's, or the first.
DebounceKeep = Literal["last", "first"]

#: ``runs.meta`` key marking a debounced run (its value: the ``DebounceKeep`` of its start).
DEBOUNCE_META_KEY = "debounce"


@dataclass(frozen=True, slots=True)
class StartControl:
    """A start's checked ``key``/``debounce``/``singleton`` arguments. ``key`` is the run key
    stored with the run ("" for the flow itself) when ``debounce`` or ``singleton`` is given,
    else None."""

    key: str | None = None
    debounce: timedelta | None = None
    keep: DebounceKeep | None = None
    singleton: bool = False


def start_control(
    *,
    key: object,
    debounce: DurationLike | None,
    debounce_keep: object,
    singleton: object,
    idempotency_key: object,
    delay: object,
    max_key_chars: int,
) -> StartControl:
    """Check a start's ``key``, ``debounce``, ``debounce_keep`` and ``singleton`` (and their
    combinations with ``idempotency_key`` and ``delay``): ``INPUT_INVALID`` or
    ``DURATION_INVALID`` naming the argument."""
    if not isinstance(singleton, bool):
        raise InputInvalid("singleton must be True or False")
    if debounce_keep not in ("last", "first"):
        raise InputInvalid(
            f"debounce_keep must be 'last' or 'first', got {codec.shown(debounce_keep)}"
        )
    window = None if debounce is None else parse_duration(debounce)
    if window is not None and window <= timedelta(0):
        raise InputInvalid("debounce must be a positive duration (the quiet period), e.g. '5s'")
    if key is not None:
        key = codec.check_text(key, what="key", max_chars=max_key_chars)
    if window is None and not singleton:
        if key is not None:
            raise InputInvalid(
                "key= names the run for debounce= or singleton=True; pass one of them (or "
                "idempotency_key= to make one start idempotent)"
            )
        return StartControl()
    if window is not None and delay is not None:
        raise InputInvalid(
            "debounce= already delays the run (until the quiet period ends); drop delay="
        )
    if window is not None and idempotency_key is not None:
        raise InputInvalid(
            "debounce= joins starts into one run, which keeps one idempotency key; drop "
            "idempotency_key= (the key= of the debounce identifies the run)"
        )
    keep: DebounceKeep | None = None
    if window is not None:
        keep = "first" if debounce_keep == "first" else "last"
    return StartControl(
        key=key if key is not None else "", debounce=window, keep=keep, singleton=singleton
    )
