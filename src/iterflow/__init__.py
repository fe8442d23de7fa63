"""iterflow: durable, replay-based workflows on the PostgreSQL you already have.

Every public name is importable from here (``from iterflow import Engine, FlowContext, flow``).
The facade is lazy (PEP 562): ``import iterflow`` loads nothing else, and a name's module is
imported on first access, so tools that only need the pure core (``flowctl --help``, the builder,
``describe``) never pay for SQLAlchemy, asyncpg or procrastinate. Type checkers and editors see
the names through the ``TYPE_CHECKING`` imports below, which must list the same names as
``_EXPORTS`` (``tests/unit/test_layers.py`` checks it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from iterflow.core.builder import BuiltFlow, FlowBuilder, StepContext, flow
    from iterflow.core.ctx import Ctx, FlowLogger, step_attempt
    from iterflow.core.decisions import AttemptOutcome
    from iterflow.core.definition import DriftPolicy, FlowDef
    from iterflow.core.describe import describe, graph_of
    from iterflow.core.errors import (
        FlowError,
        FlowFailed,
        NonRetryable,
        ResultTimeout,
        RunCanceled,
        RunNotFound,
        SignalTimeout,
        StepFailed,
        StepTimeout,
    )
    from iterflow.core.events import PublishedRun, PublishResult, SignalWithStartResult
    from iterflow.core.graph import FlowGraph, RunOverlay, render
    from iterflow.core.hooks import (
        AttemptEndInfo,
        AttemptInfo,
        Hook,
        PurgeInfo,
        RecoveryInfo,
        RunFinishedInfo,
        SignalInfo,
        StartInfo,
        StepEndInfo,
        StepInfo,
        SuspendInfo,
    )
    from iterflow.core.models import (
        BulkResult,
        CancelResult,
        EventRecord,
        RetryResult,
        RunDetail,
        RunPage,
        RunRecord,
        RunStatus,
        SignalResult,
        StartResult,
        StepKind,
        StepRecord,
        StepStatus,
        WorkerRecord,
    )
    from iterflow.core.progress import graph_from_history, overlay
    from iterflow.core.retry import RetryPolicy
    from iterflow.core.scheduling import ScheduleEvent, ScheduleRecord, Tick
    from iterflow.core.settings import Settings
    from iterflow.core.signals import Signal
    from iterflow.runtime.context import FlowContext
    from iterflow.runtime.engine import Engine, FlowHandle
    from iterflow.testing import FakeClock, TestEngine

#: public name -> the module defining it
_EXPORTS: dict[str, str] = {
    # defining flows
    "flow": "iterflow.core.builder",
    "BuiltFlow": "iterflow.core.builder",
    "FlowBuilder": "iterflow.core.builder",
    "StepContext": "iterflow.core.builder",
    "FlowDef": "iterflow.core.definition",
    "DriftPolicy": "iterflow.core.definition",
    "Ctx": "iterflow.core.ctx",
    "FlowLogger": "iterflow.core.ctx",
    "step_attempt": "iterflow.core.ctx",
    "RetryPolicy": "iterflow.core.retry",
    "Settings": "iterflow.core.settings",
    "Signal": "iterflow.core.signals",
    # running them
    "Engine": "iterflow.runtime.engine",
    "FlowHandle": "iterflow.runtime.engine",
    "FlowContext": "iterflow.runtime.context",
    # hooks: the base class and the record each event receives
    "Hook": "iterflow.core.hooks",
    "AttemptEndInfo": "iterflow.core.hooks",
    "AttemptInfo": "iterflow.core.hooks",
    "AttemptOutcome": "iterflow.core.decisions",
    "PurgeInfo": "iterflow.core.hooks",
    "RecoveryInfo": "iterflow.core.hooks",
    "RunFinishedInfo": "iterflow.core.hooks",
    "SignalInfo": "iterflow.core.hooks",
    "StartInfo": "iterflow.core.hooks",
    "StepEndInfo": "iterflow.core.hooks",
    "StepInfo": "iterflow.core.hooks",
    "SuspendInfo": "iterflow.core.hooks",
    # errors
    "FlowError": "iterflow.core.errors",
    "NonRetryable": "iterflow.core.errors",
    "StepFailed": "iterflow.core.errors",
    "StepTimeout": "iterflow.core.errors",
    "SignalTimeout": "iterflow.core.errors",
    "FlowFailed": "iterflow.core.errors",
    "RunCanceled": "iterflow.core.errors",
    "RunNotFound": "iterflow.core.errors",
    "ResultTimeout": "iterflow.core.errors",
    # results and records
    "BulkResult": "iterflow.core.models",
    "CancelResult": "iterflow.core.models",
    "EventRecord": "iterflow.core.models",
    "RetryResult": "iterflow.core.models",
    "RunDetail": "iterflow.core.models",
    "RunPage": "iterflow.core.models",
    "RunRecord": "iterflow.core.models",
    "RunStatus": "iterflow.core.models",
    "SignalResult": "iterflow.core.models",
    "StartResult": "iterflow.core.models",
    "StepKind": "iterflow.core.models",
    "StepRecord": "iterflow.core.models",
    "StepStatus": "iterflow.core.models",
    "WorkerRecord": "iterflow.core.models",
    "PublishResult": "iterflow.core.events",
    "PublishedRun": "iterflow.core.events",
    "SignalWithStartResult": "iterflow.core.events",
    # schedules
    "Tick": "iterflow.core.scheduling",
    "ScheduleRecord": "iterflow.core.scheduling",
    "ScheduleEvent": "iterflow.core.scheduling",
    # graphs
    "describe": "iterflow.core.describe",
    "graph_of": "iterflow.core.describe",
    "FlowGraph": "iterflow.core.graph",
    "RunOverlay": "iterflow.core.graph",
    "render": "iterflow.core.graph",
    "graph_from_history": "iterflow.core.progress",
    "overlay": "iterflow.core.progress",
    # testing
    "FakeClock": "iterflow.testing",
    "TestEngine": "iterflow.testing",
}

__all__ = [
    "AttemptEndInfo",
    "AttemptInfo",
    "AttemptOutcome",
    "BuiltFlow",
    "BulkResult",
    "CancelResult",
    "Ctx",
    "DriftPolicy",
    "Engine",
    "EventRecord",
    "FakeClock",
    "FlowBuilder",
    "FlowContext",
    "FlowDef",
    "FlowError",
    "FlowFailed",
    "FlowGraph",
    "FlowHandle",
    "FlowLogger",
    "Hook",
    "NonRetryable",
    "PublishResult",
    "PublishedRun",
    "PurgeInfo",
    "RecoveryInfo",
    "ResultTimeout",
    "RetryPolicy",
    "RetryResult",
    "RunCanceled",
    "RunDetail",
    "RunFinishedInfo",
    "RunNotFound",
    "RunOverlay",
    "RunPage",
    "RunRecord",
    "RunStatus",
    "ScheduleEvent",
    "ScheduleRecord",
    "Settings",
    "Signal",
    "SignalInfo",
    "SignalResult",
    "SignalTimeout",
    "SignalWithStartResult",
    "StartInfo",
    "StartResult",
    "StepContext",
    "StepEndInfo",
    "StepFailed",
    "StepInfo",
    "StepKind",
    "StepRecord",
    "StepStatus",
    "StepTimeout",
    "SuspendInfo",
    "TestEngine",
    "Tick",
    "WorkerRecord",
    "describe",
    "flow",
    "graph_from_history",
    "graph_of",
    "overlay",
    "render",
    "step_attempt",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
