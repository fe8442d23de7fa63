"""Live updates: ``/events`` (Server-Sent Events) and ``/changes`` (the polling fallback).

Both read the engine's change feed, :meth:`iterflow.Engine.changed_runs`: a range scan of the
events' primary key after a change token, so a poll costs an index probe whatever the number of
runs. ``/events`` holds the connection open and re-reads the feed as soon as the engine's
``LISTEN`` connection reports a run reaching a terminal status
(:meth:`iterflow.Engine.on_terminal`), and every :data:`POLL_SECONDS` otherwise (suspensions,
retries and signals write an event but no NOTIFY). ``app.js`` falls back to ``/changes`` when
``EventSource`` fails (a proxy that buffers or cuts streams).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from iterflow.contrib.web.state import get_state

__all__ = ["POLL_SECONDS", "live_routes"]

#: How often an open ``/events`` stream re-reads the change feed without a notification.
POLL_SECONDS = 2.0
#: A comment line is sent after this many quiet seconds so proxies keep the stream open.
KEEPALIVE_SECONDS = 15.0
_BATCH = 500


def _token(raw: str | None) -> int | None:
    if raw is None or not raw.strip():
        return None
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > 18:
        raise ValueError("since must be a change token returned by /changes or /events")
    return int(raw)


def _run_filter(request: Request) -> str | None:
    raw = request.query_params.get("run", "").strip()
    if not raw:
        return None
    return str(uuid.UUID(raw))  # ValueError for a bad id


def _bad_request(message: str) -> Response:
    return JSONResponse({"error": message}, status_code=400)


async def changes(request: Request) -> Response:
    """GET ``/changes?since=<token>[&run=<id>]``: ``{"token", "runs": [{"run_id", "status"}]}``,
    the runs changed after ``since`` (none without ``since``: just the current token)."""
    try:
        since = _token(request.query_params.get("since"))
        only = _run_filter(request)
    except ValueError as exc:
        return _bad_request(str(exc))
    engine = get_state(request).engine
    changed, token = await engine.changed_runs(since, limit=_BATCH)
    runs = [
        {"run_id": str(rid), "status": status.value}
        for rid, status in changed
        if only is None or str(rid) == only
    ]
    return JSONResponse({"token": token, "runs": runs})


async def events(request: Request) -> Response:
    """GET ``/events[?run=<id>][&since=<token>]``: a ``text/event-stream`` of ``event: run``
    messages, each ``data: {"run_id", "status"}`` with the change token as its ``id`` (a
    reconnecting ``EventSource`` resumes from ``Last-Event-ID``; ``since`` is the token the page
    was rendered at, its ``data-since``)."""
    try:
        only = _run_filter(request)
        # a reconnect resumes after its last event; a page's first connection after the change
        # token the page was rendered at, so a change in between is not missed
        resume = _token(request.headers.get("last-event-id") or request.query_params.get("since"))
    except ValueError as exc:
        return _bad_request(str(exc))
    engine = get_state(request).engine
    wake = asyncio.Event()

    def notified(run_id: str) -> None:
        if only is None or run_id in ("", only):
            wake.set()

    loop = asyncio.get_running_loop()

    async def stream() -> AsyncIterator[str]:
        token = resume
        if token is None:
            _, token = await engine.changed_runs(None)
        unsubscribe = engine.on_terminal(notified)  # changes before it are in the feed
        try:
            yield f"retry: 3000\nid: {token}\n: connected\n\n"
            quiet_since = loop.time()
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), POLL_SECONDS)
                wake.clear()
                changed, token = await engine.changed_runs(token, limit=_BATCH)
                sent = False
                for rid, status in changed:
                    if only is not None and str(rid) != only:
                        continue
                    data = json.dumps({"run_id": str(rid), "status": status.value})
                    yield f"id: {token}\nevent: run\ndata: {data}\n\n"
                    sent = True
                if sent:
                    quiet_since = loop.time()
                elif loop.time() - quiet_since >= KEEPALIVE_SECONDS:
                    quiet_since = loop.time()
                    yield f"id: {token}\n: keepalive\n\n"
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
