"""Runs one step body: async on the loop, sync in a thread, with an optional timeout; formats
what user code raised for the stored error (:func:`format_traceback`)."""

from __future__ import annotations

import asyncio
import inspect
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from iterflow.core.errors import MAX_TRACEBACK_CHARS, FlowError, StepTimeout

__all__ = ["TRACEBACK_FRAMES", "execute", "format_traceback", "keep_traceback"]

#: Frames kept per exception of a stored traceback (the innermost ones).
TRACEBACK_FRAMES = 20


async def execute(fn: Callable[..., Any], args: tuple[Any, ...], timeout: timedelta | None) -> Any:
    """Call ``fn(*args)`` once and return its result (awaiting it if needed)."""

    async def call() -> Any:
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        result = await asyncio.to_thread(fn, *args)
        if inspect.isawaitable(result):
            result = await result
        return result

    if timeout is None:
        return await call()
    try:
        async with asyncio.timeout(timeout.total_seconds()):
            return await call()
    except TimeoutError as exc:
        raise StepTimeout(
            f"step attempt exceeded its timeout of {timeout.total_seconds():g}s"
        ) from exc


def format_traceback(exc: BaseException) -> str:
    """``exc``'s traceback (with its chained causes) as stored with a failed step or run: the
    innermost :data:`TRACEBACK_FRAMES` frames of each exception, and at most
    ``MAX_TRACEBACK_CHARS`` characters, keeping the end (where the exception was raised)."""
    text = "".join(traceback.format_exception(exc, limit=-TRACEBACK_FRAMES))
    if len(text) > MAX_TRACEBACK_CHARS:
        marker = "… (traceback truncated)\n"
        text = marker + text[-(MAX_TRACEBACK_CHARS - len(marker)) :]
    return text


def keep_traceback(error: FlowError, raised: BaseException) -> None:
    """Attach ``raised``'s traceback to ``error`` (what is stored), unless it carries one (an
    error re-raised from a step's memo keeps the step's own)."""
    if error.traceback is None and raised.__traceback__ is not None:
        error.traceback = format_traceback(raised)
