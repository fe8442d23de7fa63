"""Every ``ctx`` implementation conforms to the core's Protocols.

Never executed; checked by mypy --strict and pyright strict (``tests/typing/check.py``). An
assignment fails the check when an implementation drifts from :class:`iterflow.core.ctx.Ctx` (a
method missing, a parameter renamed or narrowed, an overload lost, a return type widened) or its
logger from :class:`iterflow.core.ctx.FlowLogger`.
"""

from __future__ import annotations

from typing import Any

from iterflow.core.ctx import Ctx, FlowLogger
from iterflow.core.describe import DryRunContext
from iterflow.core.nodes import StepContext
from iterflow.runtime.context import FlowContext


def runtime_context(ctx: FlowContext) -> Ctx:
    """The runtime's interpreter of the ctx API."""
    return ctx


def dry_run_context(ctx: DryRunContext) -> Ctx:
    """The describer's recorder (``iterflow.describe``)."""
    return ctx


def step_context_log(step: StepContext[Any]) -> FlowLogger:
    """A builder step's context hands out the run's logger."""
    return step.log


def runtime_log(ctx: FlowContext) -> FlowLogger:
    return ctx.log


def dry_run_log(ctx: DryRunContext) -> FlowLogger:
    return ctx.log
