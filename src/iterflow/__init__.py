"""iterflow: durable, replay-based workflows on the PostgreSQL you already have."""

from iterflow.core.builder import BuiltFlow, StepContext, flow
from iterflow.core.definition import FlowDef
from iterflow.core.errors import FlowError, NonRetryable
from iterflow.core.models import (
    CancelResult,
    RetryResult,
    RunDetail,
    RunStatus,
    SignalResult,
    StartResult,
)
from iterflow.core.retry import RetryPolicy
from iterflow.core.settings import Settings
from iterflow.runtime.context import FlowContext
from iterflow.runtime.engine import Engine, FlowHandle

__all__ = [
    "BuiltFlow",
    "CancelResult",
    "Engine",
    "FlowContext",
    "FlowDef",
    "FlowError",
    "FlowHandle",
    "NonRetryable",
    "RetryPolicy",
    "RetryResult",
    "RunDetail",
    "RunStatus",
    "Settings",
    "SignalResult",
    "StartResult",
    "StepContext",
    "flow",
]

__version__ = "0.1.0"
