"""Replay a recorded history with current code, in process: ``FlowContext`` on a stub store.

The stub implements only what ``FlowContext`` calls (``checkpoint``, ``spawn_child``) and
records it, so a test sees exactly what an attempt would write. The outcome is classified by the
worker's own function (:func:`iterflow.core.decisions.classify_attempt`): the body returned
(``done``), suspended, drifted, or failed.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, cast

from iterflow.core import decisions
from iterflow.core.definition import FlowDef
from iterflow.core.errors import Aborted, Drifted, LeaseLost, Suspended
from iterflow.core.models import (
    NewRun,
    SignalRecord,
    StepRecord,
    TimerRecord,
)
from iterflow.core.settings import Settings
from iterflow.runtime.context import FlowContext
from iterflow.store.base import Claim, Lease, Store
from tests.records import run_record

RUN_ID = uuid.UUID("00000000-0000-4000-8000-000000000001")


@dataclass
class StubStore:
    """What one attempt wrote."""

    written: list[StepRecord] = field(default_factory=list)
    consumed: list[int] = field(default_factory=list)
    fired: list[str] = field(default_factory=list)
    spawned: list[NewRun] = field(default_factory=list)

    async def checkpoint(
        self,
        lease: Lease,
        record: StepRecord,
        *,
        consume_signal: int | None = None,
        fire_timer: str | None = None,
        renew: bool = True,
    ) -> None:
        self.written.append(record)
        if consume_signal is not None:
            self.consumed.append(consume_signal)
        if fire_timer is not None:
            self.fired.append(fire_timer)

    async def spawn_child(self, lease: Lease, child: NewRun) -> bool:
        self.spawned.append(child)
        return True


@dataclass
class Outcome:
    """How the attempt ended and what it wrote."""

    kind: Literal["done", "suspended", "drift", "failed"]
    store: StubStore
    output: Any = None
    status: str | None = None
    cursor_key: str | None = None
    error: dict[str, Any] | None = None

    @property
    def written_keys(self) -> list[str]:
        return [r.cursor_key for r in self.store.written]


async def replay(
    flow: FlowDef[Any, Any],
    *,
    input: Any,
    history: list[StepRecord],
    now: datetime,
    timers: list[TimerRecord] | None = None,
    inbox: list[SignalRecord] | None = None,
) -> Outcome:
    """One attempt of ``flow`` over ``history`` at time ``now``."""
    store = StubStore()
    run = run_record(
        id=RUN_ID,
        name=flow.name,
        version=flow.version,
        input=input,
        lease_owner="replay",
        created_at=now,
        updated_at=now,
        started_at=now,
    )
    claim = Claim(
        run=run,
        lease=Lease(RUN_ID, uuid.uuid4(), "replay", 30.0),
        history=history,
        timers={t.cursor_key: t for t in timers or []},
        inbox=list(inbox or []),
        db_now=now,
    )
    ctx = FlowContext(
        claim,
        store=cast(Store, store),
        settings=Settings(max_payload_bytes=1 << 20, inline_retry_max_seconds=0),
        signal_models=flow.signals,
        clock=lambda: now,
        rng=random.Random(0),
    )
    result: Any = None
    raised: Suspended | Drifted | Aborted | LeaseLost | Exception | None = None
    try:
        result = await flow.body(ctx, flow.validate_input(input))
        ctx.check_complete()
    except (Suspended, Drifted, Aborted, LeaseLost, Exception) as exc:
        raised = exc
    end = decisions.classify_attempt(raised, ctx.interrupted)
    match end:
        case decisions.EndReturned():
            return Outcome("done", store, output=flow.encode_output(result))
        case decisions.EndSuspended(plan=plan):
            return Outcome("suspended", store, status=plan.status.value, cursor_key=plan.cursor_key)
        case decisions.EndDrifted(error=error):
            return Outcome("drift", store, error=error.to_dict())
        case decisions.EndFailed(error=error):
            return Outcome("failed", store, error=error.to_dict())
    raise AssertionError(f"a replay on a stub store cannot end with {end}")
