"""Runs one step body: async on the loop, sync in a thread, with an optional timeout."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from iterflow.core.errors import StepTimeout

__all__ = ["execute"]


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
