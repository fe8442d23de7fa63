"""A run record for tests of pure logic and replay: every field set, a test gives the ones it
cares about."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any

from iterflow.core.models import RunRecord, RunStatus

AT = datetime(2026, 3, 1, 11, 0, tzinfo=UTC)


def run_record(status: RunStatus = RunStatus.RUNNING, **changes: Any) -> RunRecord:
    """A run of flow ``order@2``, created and updated at :data:`AT`, claimed once, with
    ``changes`` applied."""
    run = RunRecord(
        id=uuid.UUID(int=1),
        name="order",
        version=2,
        status=status,
        input={},
        output=None,
        error=None,
        idempotency_key=None,
        parent_run_id=None,
        parent_cursor_key=None,
        tags=(),
        priority=0,
        lease_owner=None,
        lease_expires_at=None,
        claims=1,
        stalled_claims=0,
        waiting_for=None,
        wake_at=None,
        created_at=AT,
        updated_at=AT,
        started_at=None,
        finished_at=None,
        seq=1,
    )
    return dataclasses.replace(run, **changes)
