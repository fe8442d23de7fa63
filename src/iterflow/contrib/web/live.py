"""Live updates: ``/events`` (Server-Sent Events) and ``/changes`` (the polling fallback).

Both read the engine's two change feeds: :meth:`iterflow.Engine.changed_runs` (a range scan of
the events' primary key after a change token, so a poll costs an index probe whatever the
number of runs) and :meth:`iterflow.Engine.claimed_runs` (the running runs claimed since a
mark: a claim writes no event, so this is how ``pending`` or waiting becomes ``running`` live;
a read of the few running runs, nothing added to the claim). The page carries both positions in
one token, ``<events token>.<claims mark in microseconds>`` (:class:`Position`).

``/events`` holds the connection open and re-reads the feeds as soon as the engine's ``LISTEN``
connection reports a run reaching a terminal status (:meth:`iterflow.Engine.on_terminal`), and
every :data:`POLL_SECONDS` otherwise (claims, suspensions, retries and signals send no NOTIFY).
``app.js`` falls back to ``/changes`` when ``EventSource`` fails (a proxy that buffers or cuts
streams).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from iterflow.contrib.web.state import DashboardEngine, get_state
from iterflow.core.models import RunStatus

__all__ = ["POLL_SECONDS", "Position", "live_routes"]

#: How often an open ``/events`` stream re-reads the change feeds without a notification.
POLL_SECONDS = 2.0
#: A comment line is sent after this many quiet seconds so proxies keep the stream open.
KEEPALIVE_SECONDS = 15.0
_BATCH = 500
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
#: An open stream forgets the statuses it sent beyond this many runs (it may repeat one then).
_REMEMBERED = 10_000
_BAD_TOKEN = "since must be a change token returned by /changes or /events"


@dataclass(frozen=True)
class Position:
    """Where a page or a stream is in the two feeds: the events token and the claims mark."""

    events: int
    claims: datetime

    def __str__(self) -> str:
        return f"{self.events}.{(self.claims - _EPOCH) // _MICROSECOND}"

    @staticmethod
    async def now(engine: DashboardEngine) -> Position:
        """The current position: a page is rendered after it, so later changes reach it."""
        _, events = await engine.changed_runs(None)
        _, claims = await engine.claimed_runs(None)
        return Position(events, claims)

    @staticmethod
    async def parse(engine: DashboardEngine, raw: str | None) -> Position | None:
        """A token from a page, ``/changes`` or ``Last-Event-ID`` (``ValueError`` when it is
        not one); None for none. A bare events token (an older page) reads claims from now."""
        if raw is None or not raw.strip():
            return None
        parts = raw.strip().split(".")
        if len(parts) > 2 or not all(p.isdigit() and len(p) <= 18 for p in parts):
            raise ValueError(_BAD_TOKEN)
        if len(parts) == 1:
            _, mark = await engine.claimed_runs(None)
            return Position(int(parts[0]), mark)
        try:
            return Position(int(parts[0]), _EPOCH + int(parts[1]) * _MICROSECOND)
        except OverflowError:
            raise ValueError(_BAD_TOKEN) from None

    async def read(self, engine: DashboardEngine) -> tuple[list[tuple[str, str]], Position]:
        """The ``(run_id, status)`` changes after this position (events first, then claims:
        the later read is the fresher), and the position after them."""
        changed, events = await engine.changed_runs(self.events, limit=_BATCH)
        claimed, claims = await engine.claimed_runs(self.claims, limit=_BATCH)
        found = [(str(rid), status.value) for rid, status in changed]
        found += [(str(rid), RunStatus.RUNNING.value) for rid in claimed]
        return found, Position(events, claims)


def _run_filter(request: Request) -> str | None:
    raw = request.query_params.get("run", "").strip()
    if not raw:
        return None
    return str(uuid.UUID(raw))  # ValueError for a bad id


def _bad_request(message: str) -> Response:
    return JSONResponse({"error": message}, status_code=400)


async def changes(request: Request) -> Response:
    """GET ``/changes?since=<token>[&run=<id>]``: ``{"token", "runs": [{"run_id", "status"}]}``,
    the runs changed after ``since`` (none without ``since``: just the current token). A run
    may be listed twice (a claim is read with a margin); the last entry is its status now."""
    engine = get_state(request).engine
    try:
        since = await Position.parse(engine, request.query_params.get("since"))
        only = _run_filter(request)
    except ValueError as exc:
        return _bad_request(str(exc))
    if since is None:
        return JSONResponse({"token": str(await Position.now(engine)), "runs": []})
    found, after = await since.read(engine)
    runs = [
        {"run_id": rid, "status": status} for rid, status in found if only is None or rid == only
    ]
    return JSONResponse({"token": str(after), "runs": runs})


async def events(request: Request) -> Response:
    """GET ``/events[?run=<id>][&since=<token>]``: a ``text/event-stream`` of ``event: run``
    messages, each ``data: {"run_id", "status"}`` with the change token as its ``id`` (a
    reconnecting ``EventSource`` resumes from ``Last-Event-ID``; ``since`` is the token the page
    was rendered at, its ``data-since``). A run's status is sent when it differs from the last
    one this stream sent for it."""
    engine = get_state(request).engine
    try:
        only = _run_filter(request)
        # a reconnect resumes after its last event; a page's first connection after the change
        # token the page was rendered at, so a change in between is not missed
        raw = request.headers.get("last-event-id") or request.query_params.get("since")
        resume = await Position.parse(engine, raw)
    except ValueError as exc:
        return _bad_request(str(exc))
    wake = asyncio.Event()

    def notified(run_id: str) -> None:
        if only is None or run_id in ("", only):
            wake.set()

    loop = asyncio.get_running_loop()

    async def stream() -> AsyncIterator[str]:
        position = resume or await Position.now(engine)
        unsubscribe = engine.on_terminal(notified)  # changes before it are in the feeds
        sent: dict[str, str] = {}
        try:
            yield f"retry: 3000\nid: {position}\n: connected\n\n"
            quiet_since = loop.time()
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(POLL_SECONDS):  # not wait_for (runtime/notify.py)
                        await wake.wait()
                wake.clear()
                found, position = await position.read(engine)
                fresh = False
                for rid, status in found:
                    if (only is not None and rid != only) or sent.get(rid) == status:
                        continue
                    if len(sent) >= _REMEMBERED:
                        sent.clear()
                    sent[rid] = status
                    data = json.dumps({"run_id": rid, "status": status})
                    yield f"id: {position}\nevent: run\ndata: {data}\n\n"
                    fresh = True
                if fresh:
                    quiet_since = loop.time()
                elif loop.time() - quiet_since >= KEEPALIVE_SECONDS:
                    quiet_since = loop.time()
                    yield f"id: {position}\n: keepalive\n\n"
        finally:
            unsubscribe()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def live_routes() -> list[BaseRoute]:
    """``/events`` and ``/changes``."""
    return [
        Route("/events", events, methods=["GET"], name="events"),
        Route("/changes", changes, methods=["GET"], name="changes"),
    ]
