"""Live updates: the ``/changes`` poll and the ``/events`` stream (Server-Sent Events fed by the
engine's LISTEN connection), on real PostgreSQL with an in-process worker."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from iterflow.contrib.web import dashboard, live

from .test_pages import Kit, _kit, build_engine


@pytest.fixture
def kit(database_url: str) -> Iterator[Kit]:
    yield from _kit(database_url)


def test_changes_poll_reports_runs_changed_since_a_token(kit: Kit) -> None:
    token = kit.get("/changes").json()["token"]
    run_id = kit.start("mail", "poll")
    kit.wait_status(run_id, "done")
    body = kit.get(f"/changes?since={token}").json()
    assert {"run_id": str(run_id), "status": "done"} in body["runs"]
    assert body["token"] > token
    again = kit.get(f"/changes?since={body['token']}").json()
    assert again["runs"] == []
    only = kit.get(f"/changes?since={token}&run={uuid.uuid4()}").json()
    assert only["runs"] == []
    assert kit.get("/changes?since=abc").status_code == 400


async def test_sse_stream_emits_an_event_when_a_run_finishes(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ASGI app is driven directly (a TestClient would buffer the endless stream). The
    stream's own poll is slowed to a minute: the event within the deadline comes from the
    engine's LISTEN connection (the terminal NOTIFY)."""
    monkeypatch.setattr(live, "POLL_SECONDS", 60.0)

    engine = build_engine(database_url)
    app = dashboard(engine)
    async with engine:
        await engine.listen(concurrency=2)
        run_id = (await engine.start("order", {"order_id": "sse"})).run_id
        deadline = asyncio.get_running_loop().time() + 20
        while (await engine.status(run_id)).run.status.value != "awaiting_signal":
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)

        chunks: asyncio.Queue[str] = asyncio.Queue()
        disconnect = asyncio.Event()
        started: dict[str, Any] = {}

        async def receive() -> dict[str, Any]:
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                started.update(message)
            elif message["type"] == "http.response.body":
                await chunks.put(message.get("body", b"").decode())

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/events",
            "raw_path": b"/events",
            "root_path": "",
            "query_string": f"run={run_id}".encode(),
            "headers": [(b"host", b"testserver")],
            "client": ("127.0.0.1", 1),
            "server": ("testserver", 80),
            "state": {},
        }
        task = asyncio.create_task(app(scope, receive, send))
        try:
            first = await asyncio.wait_for(chunks.get(), 10)
            assert ": connected" in first
            assert started["status"] == 200
            headers = dict(started["headers"])
            assert headers[b"content-type"].startswith(b"text/event-stream")
            assert headers[b"cache-control"] == b"no-store"
            await engine.signal(run_id, "approve", {"by": "ops"})
            seen: list[dict[str, Any]] = []
            while not any(e["status"] == "done" for e in seen):
                chunk = await asyncio.wait_for(chunks.get(), 15)
                for block in chunk.split("\n\n"):
                    if "event: run" in block:
                        data = block.split("data: ", 1)[1]
                        seen.append(json.loads(data))
            assert all(e["run_id"] == str(run_id) for e in seen)
        finally:
            disconnect.set()
            await asyncio.wait_for(task, 10)


async def test_on_terminal_observers_hear_every_ending_run_in_memory_too() -> None:
    from iterflow import Engine

    engine = build_engine("unused")
    memory = Engine.in_memory()
    for definition in engine.registry.all():
        memory.registry.add(definition)
    heard: list[str] = []
    async with memory:
        stop = memory.on_terminal(heard.append)
        first = (await memory.start("mail", {"order_id": "m-1"})).run_id
        await memory.drain()
        stop()
        second = (await memory.start("mail", {"order_id": "m-2"})).run_id
        await memory.drain()
        assert (await memory.status(second)).run.status.value == "done"
    assert heard == [str(first)]
