"""Shared flow models and DB inspection helpers for integration tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from pydantic import BaseModel

from iterflow.urls import libpq_url

TABLES = (
    "iterflow.runs",
    "iterflow.steps",
    "iterflow.signals",
    "iterflow.timers",
    "iterflow.events",
    "procrastinate_jobs",
)


class OrderIn(BaseModel):
    order_id: str
    amount: int


class Approval(BaseModel):
    approved: bool
    by: str = "ops"


class Receipt(BaseModel):
    order_id: str
    charged: int
    approved_by: str


def sql(url: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one query on the test database (autocommit) and return all rows."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        cur = conn.execute(query, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def counts(url: str) -> dict[str, int]:
    """Row counts of every iterflow table and procrastinate's jobs."""
    return {t: sql(url, f"SELECT count(*) FROM {t}")[0][0] for t in TABLES}


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 15.0, what: str = "condition"
) -> None:
    """Poll ``check`` with a deadline (never a bare sleep as synchronisation)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
