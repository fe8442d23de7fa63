"""iterflow: durable, replay-based workflows on the PostgreSQL you already have."""

from .builder import BuiltFlow, StepContext, flow
from .context import FlowContext
from .definition import FlowDef
from .engine import Engine, FlowHandle
from .errors import FlowError, NonRetryable
from .models import (
    CancelResult,
    RetryResult,
    RunDetail,
    RunStatus,
    SignalResult,
    StartResult,
)
from .retry import RetryPolicy
from .settings import Settings

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
