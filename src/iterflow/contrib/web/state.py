"""The dashboard's per-app state: the engine, the authorize hook, redact mode and the title.

Stored on ``app.state.iterflow`` by :func:`iterflow.contrib.web.dashboard` (no globals, so two
dashboards on two engines can live in one process). The engine is typed by :class:`DashboardEngine`,
the part of :class:`iterflow.Engine`'s public API the dashboard uses: contrib depends on the API,
not on the engine's module (an import-linter contract forbids ``iterflow.contrib`` reaching
``iterflow.store``, which the engine's module imports).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol, TypeAlias, Unpack

from starlette.requests import Request

from iterflow.core.definition import Registry
from iterflow.core.models import (
    BulkResult,
    CancelResult,
    RetryResult,
    RunDetail,
    RunPage,
    RunQuery,
    RunStatus,
    SignalResult,
    StartResult,
    WorkerRecord,
)
from iterflow.core.scheduling import ScheduleEvent, ScheduleRecord
from iterflow.core.settings import Settings

__all__ = ["Action", "Authorize", "DashboardEngine", "DashboardState", "get_state"]


Action: TypeAlias = Literal[
    "view",
    "cancel",
    "retry",
    "signal",
    "start",
    "bulk_cancel",
    "bulk_retry",
    "schedule_pause",
    "schedule_resume",
    "schedule_trigger",
]
"""What a request wants to do; ``authorize`` receives it."""

Authorize: TypeAlias = Callable[[Request, Action], bool | Awaitable[bool]]
"""``authorize(request, action)``, sync or async: ``True`` allows, anything else denies."""


class DashboardEngine(Protocol):
    """The part of :class:`iterflow.Engine`'s public API the dashboard uses (an ``Engine`` is
    one)."""

    registry: Registry

    @property
    def settings(self) -> Settings:
        """The engine's settings."""
        ...

    async def status(self, run_id: uuid.UUID | str) -> RunDetail:
        """A run with its steps, signals, timers and events."""
        ...

    async def list_runs(
        self,
        *,
        name: str | None = ...,
        status: RunStatus | str | Iterable[RunStatus | str] | None = ...,
        tag: str | None = ...,
        idempotency_key: str | None = ...,
        limit: int = ...,
        cursor: int | None = ...,
        version: int | None = ...,
        tags: Iterable[str] = ...,
        created_after: datetime | None = ...,
        created_before: datetime | None = ...,
        finished_after: datetime | None = ...,
        finished_before: datetime | None = ...,
        parent: uuid.UUID | str | None = ...,
        schedule: str | None = ...,
        id_prefix: str | None = ...,
        oldest_first: bool = ...,
    ) -> RunPage:
        """One keyset page of runs."""
        ...

    async def count_runs(
        self,
        *,
        name: str | None = ...,
        status: RunStatus | str | Iterable[RunStatus | str] | None = ...,
        tag: str | None = ...,
        idempotency_key: str | None = ...,
        version: int | None = ...,
        tags: Iterable[str] = ...,
        created_after: datetime | None = ...,
        created_before: datetime | None = ...,
        finished_after: datetime | None = ...,
        finished_before: datetime | None = ...,
        parent: uuid.UUID | str | None = ...,
        schedule: str | None = ...,
        id_prefix: str | None = ...,
    ) -> Mapping[RunStatus, int]:
        """How many runs match, per status."""
        ...

    async def bulk(
        self,
        action: Literal["retry", "cancel"],
        *,
        dry_run: bool = ...,
        resume: bool = ...,
        reason: str | None = ...,
        compensate: bool = ...,
        progress: Callable[[int, int], None] | None = ...,
        limit: int | None = ...,
        **filters: Unpack[RunQuery],
    ) -> BulkResult:
        """Retry or cancel every run the filters select, each as its single-run call does."""
        ...

    async def changed_runs(
        self, since: int | None = ..., *, limit: int = ...
    ) -> tuple[list[tuple[uuid.UUID, RunStatus]], int]:
        """Runs whose row changed after the change token ``since``, and the new token."""
        ...

    async def claimed_runs(
        self, since: datetime | None = ..., *, limit: int = ...
    ) -> tuple[list[uuid.UUID], datetime]:
        """Runs running now that were claimed at or after ``since``, and the next mark."""
        ...

    def on_terminal(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(run_id)`` whenever a run ends; returns the unsubscribe function."""
        ...

    async def workers(self) -> list[WorkerRecord]:
        """The registered workers with the ``name@version`` flows each runs."""
        ...

    async def cancel(
        self, run_id: uuid.UUID | str, *, reason: str | None = ..., compensate: bool = ...
    ) -> CancelResult:
        """Cancel a live run and its non-detached live children (``compensate=True``: run the
        saga's compensations first)."""
        ...

    async def retry(self, run_id: uuid.UUID | str, *, resume: bool = ...) -> RetryResult:
        """Replay a failed (or parked) run; ``resume=True`` also resumes a canceled one."""
        ...

    async def signal(
        self,
        run_id: uuid.UUID | str,
        name: str,
        payload: Any,
        *,
        idempotency_key: str | None = ...,
    ) -> SignalResult:
        """Deliver a signal to a run."""
        ...

    async def start(
        self,
        name: str,
        input: Any,
        *,
        idempotency_key: str | None = ...,
        tags: Iterable[str] = ...,
        delay: str | timedelta | int | float | None = ...,
        priority: int = ...,
        conn: Any = ...,
        version: int | None = ...,
    ) -> StartResult:
        """Start a run of the newest registered version of flow ``name`` (or of ``version``)."""
        ...

    async def list_schedules(self) -> list[ScheduleRecord]:
        """Every schedule, by id."""
        ...

    async def get_schedule(self, schedule_id: str) -> ScheduleRecord:
        """One schedule."""
        ...

    async def schedule_events(self, schedule_id: str, *, limit: int = ...) -> list[ScheduleEvent]:
        """A schedule's newest decisions."""
        ...

    async def pause(self, schedule_id: str) -> ScheduleRecord:
        """Pause a schedule."""
        ...

    async def resume(self, schedule_id: str) -> ScheduleRecord:
        """Resume a schedule."""
        ...

    async def trigger(self, schedule_id: str) -> StartResult:
        """Start one run of the schedule now."""
        ...


@dataclass(frozen=True)
class DashboardState:
    """What every dashboard route reads: built once by ``dashboard(...)``."""

    engine: DashboardEngine
    #: ``authorize(request, action)``; None: read-only dashboard (every action is refused).
    authorize: Authorize | None
    #: Hide every payload (inputs, outputs, step values, signal payloads, error details).
    redact: bool
    title: str


def get_state(request: Request) -> DashboardState:
    """The dashboard state of the app serving ``request`` (``app.state.iterflow``)."""
    state: DashboardState = request.app.state.iterflow
    return state
