"""Flow control on PostgreSQL (a mixin of :class:`~iterflow.store.postgres.PostgresStore`).

A claim the one-statement fast claim refused is looked at in one transaction on a hot
connection (:meth:`~iterflow.store.connections.HotConnections.transaction`). Its first statement
(:attr:`Statements.limit_probe`) says why it was refused and, for a limited run, takes the
advisory lock of its flow and key. A flow version the worker does not serve is left queued (moved
to its own queue if it sat in the base queue); for a limited run, the live attempts, the rate
window and the held line are read (:attr:`Statements.limit_state`),
:func:`iterflow.core.limits.admit` decides, and the claim or the hold, the window and the
wake-ups of the line are written. The lock serializes every claim and release of one flow and
key across all workers, so the count is exact; unlimited runs never take it. The end of an
attempt takes it only when a run of its key is held: a lock-free look first
(:meth:`PostgresLimits.release_limit`), which a claim that holds its run makes safe by looking
again once its hold is committed.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa

from iterflow.core.limits import Admission, Gate, Limits, LimitState, admit, release
from iterflow.store.connections import Fetch, HotConnections, Row
from iterflow.store.outbox import flow_queue
from iterflow.store.queries import Statements, json_param

__all__ = ["PostgresLimits"]


class PostgresLimits:
    """Routing and limits of claims (see the module docstring); mixed into ``PostgresStore``."""

    _queue: str
    _q: Statements
    _conns: HotConnections
    schema: str
    _one: Callable[[sa.TextClause, dict[str, Any]], Awaitable[Row | None]]

    async def _claim_refused(
        self, run_id: uuid.UUID, gate: Gate | None, params: dict[str, Any]
    ) -> Row | None:
        """The claim of a run the fast claim refused (or would have: ``Gate.all_limited``): the
        claimed row, or None."""
        async with self._conns.transaction() as fetch:
            # why it was refused; a limited run's probe also takes the lock of its flow and key
            probe = await fetch(self._q.limit_probe, {"run_id": run_id, "ns": self._lock_ns})
            if probe is None or not probe["claimable"]:
                return None
            name, version, key = probe["name"], probe["version"], probe["limit_key"]
            if gate is not None and not gate.serves(name, version):
                route = {"run_queue": flow_queue(self._queue, name, version), "queue": self._queue}
                await fetch(self._q.route, {"run_id": run_id, **route})
                return None
            claim = {**params, "admitted": True}
            limits = None if gate is None else gate.limits_of(name, version)
            if key is None or limits is None:  # not limited here: claim it as it is
                return await fetch(self._q.claim, claim)
            decision = await _decide(self, fetch, name, key, run_id, limits, admitting=True)
            row = None
            if decision.admitted:
                row = await fetch(self._q.claim, claim)
                if row is None:
                    return None
            else:
                held = {"run_id": run_id, "held": json_param(decision.held)}
                await fetch(self._q.limit_hold, held)
            await _apply(self, fetch, name, key, run_id, limits, decision)
        if row is None:  # held: an attempt that ended meanwhile may have missed it (see below)
            await self._release(name, key, limits, run_id)
        return row

    async def release_limit(self, name: str, key: str, limits: Limits) -> int:
        # Most ends find no run of their key held: one lock-free look then. A run held after
        # this look is not missed: its claim looks again once its hold is committed, and that
        # look (after this attempt's end was committed) sees this attempt's slot free.
        held = await self._one(self._q.limit_any_held, {"name": name, "key": key})
        if held is None or not held["held"]:
            return 0
        return await self._release(name, key, limits, None)

    async def _release(
        self, name: str, key: str, limits: Limits, just_held: uuid.UUID | None
    ) -> int:
        """Wake the held runs of the key there is room for; ``just_held``: a run this worker has
        just held, whose wake-up is still running (it counts as held, not as woken)."""
        async with self._conns.transaction() as fetch:
            lock = {"ns": self._lock_ns, "name": name, "key": key}
            await fetch(self._q.limit_lock, lock)
            decision = await _decide(self, fetch, name, key, just_held, limits, admitting=False)
            return await _apply(self, fetch, name, key, just_held, limits, decision)

    @property
    def _lock_ns(self) -> str:
        """The advisory locks' namespace: one per schema."""
        return f"iterflow.limits.{self.schema}"


async def _decide(
    host: PostgresLimits,
    fetch: Fetch,
    name: str,
    key: str,
    run_id: uuid.UUID | None,
    limits: Limits,
    *,
    admitting: bool,
) -> Admission:
    """Read the state of (``name``, ``key``), whose lock is held, and decide."""
    row = await fetch(host._q.limit_state, {"name": name, "key": key, "run_id": run_id})
    assert row is not None  # one row, always
    state = LimitState(
        live=int(row["live"]),
        starts=tuple(row["starts"] or ()),
        woken=int(row["woken"]),
        held=int(row["held"]),
    )
    if admitting:
        return admit(limits, state, row["db_now"], key=key)
    if run_id is not None:  # a run just held, left out of the counts: it waits in line
        state = dataclasses.replace(state, held=state.held + 1)
    return release(limits, state, row["db_now"])


async def _apply(
    host: PostgresLimits,
    fetch: Fetch,
    name: str,
    key: str,
    run_id: uuid.UUID | None,
    limits: Limits,
    decision: Admission,
) -> int:
    """Write the rate window and wake the line as ``decision`` says; the number woken."""
    p = {"name": name, "key": key, "run_id": run_id, "queue": host._queue}
    if limits.rate is not None and decision.admitted:
        await fetch(host._q.limit_window, {**p, "starts": list(decision.starts)})
    n, at = decision.wake_now, None
    if not n and decision.wake_at is not None:
        n, at = 1, decision.wake_at
    if not n:
        return 0
    row = await fetch(host._q.limit_wake, {**p, "n": n, "wake_at": at})
    return 0 if row is None else int(row["woken"])
