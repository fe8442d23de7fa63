"""What a flow body sees: the ``ctx`` API, shared by the runtime and the pure core.

The runtime's :class:`~iterflow.runtime.context.FlowContext` sets the step attempt before each
attempt of a step body; builder nodes and user code read it with :func:`step_attempt`.
"""

from __future__ import annotations

import contextvars

__all__ = ["STEP_ATTEMPT", "step_attempt"]

#: The 1-based attempt of the step body running now (set by the runtime before each attempt;
#: copied into the thread of a sync step).
STEP_ATTEMPT: contextvars.ContextVar[int] = contextvars.ContextVar("iterflow_step", default=1)


def step_attempt() -> int:
    """Inside a step body: which attempt of that step is running (1 = the first)."""
    return STEP_ATTEMPT.get()
