"""One frozen, documented configuration object, passed explicitly to ``Engine``.

Every path that changes it validates: constructing it, ``Settings.model_copy(update=...)`` (which
raises ``ConfigInvalid``) and ``Engine.configure(...)``. The only environment the library reads is
the database URL, resolved at ``Engine.open()`` by :func:`iterflow.store.urls.resolve_database_url`
(explicit ``database_url``, ``$ITERFLOW_DATABASE_URL``, ``$DATABASE_URL``, else embedded), the
same rule ``flowctl`` uses.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from iterflow.core.codec import check_text, validation_message
from iterflow.core.durations import parse_duration
from iterflow.core.errors import ConfigInvalid, DurationInvalid, FlowError
from iterflow.core.states import RunStatus

__all__ = ["CONNECTION_SETTINGS", "Retention", "RetentionPolicy", "RetentionRule", "Settings"]

CONNECTION_SETTINGS = frozenset(
    {"database_url", "read_database_url", "db_schema", "data_dir", "pool_size"}
)
"""Settings that take effect when an engine opens its connections (see ``Engine.configure``)."""

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True, slots=True)
class RetentionRule:
    """One purge a retention sweep makes: top-level runs finished with ``status`` more than
    ``older_than`` ago, of flow ``flow`` (None: of every flow not in ``exclude``)."""

    status: RunStatus
    older_than: timedelta
    flow: str | None = None
    exclude: tuple[str, ...] = ()


def _age(value: Any) -> timedelta | None:
    """A retention age: None (keep for ever) or a duration (``"30d"``, a ``timedelta``, seconds)."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except DurationInvalid as exc:
        raise ValueError(exc.message) from None


class RetentionPolicy(BaseModel):
    """How long finished runs are kept, per terminal status: a duration (``"30d"``, ``"12h"``,
    a ``timedelta`` or seconds) counted from the run's end; None keeps them forever."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    done: timedelta | None = Field(default=None, description="Keep ``done`` runs this long.")
    failed: timedelta | None = Field(default=None, description="Keep ``failed`` runs this long.")
    canceled: timedelta | None = Field(
        default=None, description="Keep ``canceled`` runs this long."
    )

    @field_validator("done", "failed", "canceled", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta | None:
        return _age(value)

    def ages(self) -> dict[RunStatus, timedelta]:
        """The statuses this policy purges, with their age."""
        ages = {RunStatus.DONE: self.done, RunStatus.FAILED: self.failed}
        ages[RunStatus.CANCELED] = self.canceled
        return {status: age for status, age in ages.items() if age is not None}


class Retention(RetentionPolicy):
    """``Settings(retention=...)``: finished runs older than their status's age are deleted by
    a periodic task on the workers, in small batches, with their children, steps, signals,
    timers and events. ``flows`` gives some flows their own policy, which replaces this one
    for them (an unset status there is kept forever)."""

    flows: dict[str, RetentionPolicy] = Field(
        default_factory=dict, description="Per-flow policies, by flow name."
    )
    schedule_events: timedelta | None = Field(
        default=None,
        description=(
            "Keep schedules' decisions (``engine.schedule_events``: started, skipped, ...) this "
            "long; None keeps them for ever (a schedule ticking every minute adds 525,600 a "
            "year). A schedule's events also go when the schedule is deleted."
        ),
    )
    batch: int = Field(
        default=500, ge=1, le=10_000, description="Top-level runs deleted per transaction."
    )
    every_seconds: int = Field(
        default=30, ge=1, le=59, description="How often the workers' periodic sweep runs."
    )
    pace: float = Field(
        default=0.1,
        gt=0,
        le=1,
        description=(
            "Share of its time a sweep spends deleting: after a batch that took t seconds it "
            "pauses t * (1 / pace - 1), so a big backlog never crowds out the workload "
            "(1: flat out)."
        ),
    )

    @field_validator("schedule_events", mode="before")
    @classmethod
    def _events_age(cls, value: Any) -> timedelta | None:
        return _age(value)

    @field_validator("flows")
    @classmethod
    def _flow_names(cls, flows: dict[str, RetentionPolicy]) -> dict[str, RetentionPolicy]:
        for name in flows:
            try:
                check_text(name, what="retention flow name", max_chars=200)
            except FlowError as exc:
                raise ValueError(exc.message) from None
        return flows

    def rules(self) -> list[RetentionRule]:
        """The purges of one sweep: each flow's own policy, then this one for the others."""
        rules = [
            RetentionRule(status, age, flow=name)
            for name, policy in sorted(self.flows.items())
            for status, age in policy.ages().items()
        ]
        others = tuple(sorted(self.flows))
        rules += [RetentionRule(s, age, exclude=others) for s, age in self.ages().items()]
        return rules


class Settings(BaseModel):
    """Engine configuration. Every field has a safe default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL. None starts the embedded server in ``data_dir``.",
    )
    read_database_url: str | None = Field(
        default=None,
        description=(
            "A second PostgreSQL URL (a streaming replica, or a read-only role) for the "
            "engine's read-only inspection: list_runs, find_run, count_runs, status, "
            "changed_runs. None: the primary. Everything else (the hot path, signals, the "
            "reconciler, result polling) stays on database_url; a replica's reads may lag the "
            "primary's writes."
        ),
    )
    db_schema: str = Field(default="iterflow", description="Schema holding iterflow's tables.")
    data_dir: Path = Field(
        default=Path(".iterflow"), description="Where the embedded PostgreSQL keeps its data."
    )
    lease_seconds: float = Field(
        default=20.0,
        gt=0,
        description=(
            "How long a claim is owned without renewal (renewed every lease/3 and at an "
            "attempt's first checkpoint). A dead worker's run is recovered within lease_seconds + "
            "reconcile_every_seconds (25 s by default)."
        ),
    )
    max_stalled_claims: int = Field(
        default=10, ge=1, description="Claims without progress before RUN_ATTEMPTS_EXHAUSTED."
    )
    max_payload_bytes: int = Field(
        default=1_000_000, ge=1, description="Cap on inputs, outputs, step results and signals."
    )
    max_signals_per_run: int = Field(
        default=10_000,
        ge=1,
        description=(
            "Signals one run may hold (consumed or buffered); more raise SIGNAL_LIMIT_EXCEEDED, "
            "so a webhook flood cannot fill the database."
        ),
    )
    max_tags_per_run: int = Field(default=64, ge=0, description="Tags one run may carry.")
    max_tag_chars: int = Field(default=200, ge=1, le=10_000, description="Longest tag.")
    max_key_chars: int = Field(
        default=200, ge=1, le=10_000, description="Longest idempotency key (starts and signals)."
    )
    max_label_chars: int = Field(
        default=200, ge=1, le=10_000, description="Longest step/sleep label or patch id."
    )
    pool_size: int = Field(
        default=10,
        ge=1,
        description=(
            "SQLAlchemy pool size (asyncpg); up to twice as many connections plus 4 kept for the "
            "hot path may be open at peak."
        ),
    )
    worker_poll_interval: float = Field(
        default=0.5,
        gt=0,
        le=1.0,
        description="Worker fetch polling; bounds timer lateness (scheduled jobs never NOTIFY).",
    )
    inline_retry_max_seconds: float = Field(
        default=5.0,
        ge=0,
        description="Step-retry backoffs up to this wait in process; longer ones suspend the run.",
    )
    reconcile_every_seconds: int = Field(
        default=5,
        ge=1,
        le=59,
        description="How often the reconciler sweeps (a procrastinate periodic task).",
    )
    reconcile_batch: int = Field(default=500, ge=1, description="Runs per reconciler batch.")
    group_commit: bool = Field(
        default=True,
        description=(
            "Commit the step checkpoints of concurrent runs together when they are due at "
            "the same time (one statement and one commit for several runs; each step still "
            "waits for the commit of its own memo). A quiet worker commits each alone, at "
            "once. False: every checkpoint in its own statement."
        ),
    )
    max_invoke_depth: int = Field(default=10, ge=1, description="Maximum child-flow nesting.")
    max_children_per_run: int = Field(
        default=1000, ge=1, description="Maximum child runs one run may start."
    )
    result_poll_max_seconds: float = Field(
        default=1.0, gt=0, description="Upper bound of handle.result's polling floor."
    )
    retention: Retention | None = Field(
        default=None,
        description=(
            "Delete finished runs after an age per status (and per flow): see Retention. "
            "None keeps every run."
        ),
    )

    @field_validator("db_schema")
    @classmethod
    def _check_schema(cls, value: str) -> str:
        if not _IDENT.match(value):
            raise ValueError("db_schema must be a lowercase SQL identifier, e.g. 'iterflow'")
        return value

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy with ``update`` applied and **validated** (pydantic's own ``model_copy`` skips
        validation). Raises ``ConfigInvalid`` for unknown fields or invalid values."""
        if not update:
            return super().model_copy(deep=deep)
        data = {name: getattr(self, name) for name in self.model_fields_set}
        try:
            return self.model_validate({**data, **update})
        except ValidationError as exc:
            raise ConfigInvalid(f"invalid engine settings: {validation_message(exc)}") from exc

    @property
    def queue_name(self) -> str:
        """The procrastinate queue used for this schema's wake-ups."""
        return f"iterflow.{self.db_schema}"
