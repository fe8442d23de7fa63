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
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from iterflow.core.codec import validation_message
from iterflow.core.errors import ConfigInvalid

__all__ = ["CONNECTION_SETTINGS", "Settings"]

CONNECTION_SETTINGS = frozenset({"database_url", "db_schema", "data_dir", "pool_size"})
"""Settings that take effect when an engine opens its connections (see ``Engine.configure``)."""

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class Settings(BaseModel):
    """Engine configuration. Every field has a safe default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    database_url: str | None = Field(
        default=None,
        description="PostgreSQL URL. None starts the embedded server in ``data_dir``.",
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
    max_invoke_depth: int = Field(default=10, ge=1, description="Maximum child-flow nesting.")
    max_children_per_run: int = Field(
        default=1000, ge=1, description="Maximum child runs one run may start."
    )
    result_poll_max_seconds: float = Field(
        default=1.0, gt=0, description="Upper bound of handle.result's polling floor."
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
