"""Live updates: the ``/changes`` poll and the ``/events`` stream (Server-Sent Events fed by the
engine's LISTEN connection), on real PostgreSQL with an in-process worker."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from iterflow import Engine, FlowContext
from iterflow.contrib.web import dashboard, live

from .test_pages import Kit, _kit, build_engine


@pytest.fixture
def kit(database_url: str) -> Iterator[Kit]:
    yield from _kit(database_url)


def test_changes_poll_reports_runs_changed_since_a_token(kit: Kit) -> None:
    token = kit.get("/changes").json()["token"]
    assert re.fullmatch(r"\d+\.\d+", token)
    run_id = kit.start("mail", "poll")
    kit.wait_status(run_id, "done")
    body = kit.get(f"/changes?since={token}").json()
    assert body["runs"][-1] == {"run_id": str(run_id), "status": "done"}
    assert int(body["token"].split(".")[0]) > int(token.split(".")[0])
    again = kit.get(f"/changes?since={body['token']}").json()
    assert again["runs"] == []
    only = kit.get(f"/changes?since={token}&run={uuid.uuid4()}").json()
    assert only["runs"] == []
    bare = kit.get(f"/changes?since={token.split('.')[0]}").json()  # an older page's token
    assert {"run_id": str(run_id), "status": "done"} in bare["runs"]
    for bad in ("abc", "1.2.3", "1.", "1." + "9" * 18, "-1"):
        assert kit.get(f"/changes?since={bad}").status_code == 400, bad


async def asgi_get(app: Any, path: str, query: str = "") -> str:
    """The body of a GET of ``path`` on ``app`` (a plain ASGI call on this event loop)."""
    body: list[bytes] = []
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    await app(_scope(path, query), receive, send)
    assert status == [200], (path, status)
    return b"".join(body).decode()


def _scope(path: str, query: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(b"host", b"testserver")],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
        "state": {},
    }


class Stream:
    """``/events`` of ``app`` driven as a raw ASGI call (a TestClient would buffer the endless
    stream): :meth:`statuses` collects the ``run`` events' statuses."""

    def __init__(self, app: Any, query: str) -> None:
        self.chunks: asyncio.Queue[str] = asyncio.Queue()
        self.started: dict[str, Any] = {}
        self.seen: list[dict[str, Any]] = []
        self._disconnect = asyncio.Event()
        self.task = asyncio.create_task(app(_scope("/events", query), self._receive, self._send))

    async def _receive(self) -> dict[str, Any]:
        await self._disconnect.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.started.update(message)
        elif message["type"] == "http.response.body":
            await self.chunks.put(message.get("body", b"").decode())

    async def until(self, status: str, *, timeout: float = 15) -> list[str]:
        """Read events until one has ``status``; every status seen so far, in order."""
        while not any(e["status"] == status for e in self.seen):
            chunk = await asyncio.wait_for(self.chunks.get(), timeout)
            for block in chunk.split("\n\n"):
                if "event: run" in block:
                    self.seen.append(json.loads(block.split("data: ", 1)[1]))
        return [e["status"] for e in self.seen]

    async def close(self) -> None:
        self._disconnect.set()
        await asyncio.wait_for(self.task, 10)


async def test_sse_stream_emits_an_event_when_a_run_finishes(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream's own poll is slowed to a minute: the event within the deadline comes from
    the engine's LISTEN connection (the terminal NOTIFY)."""
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

        stream = Stream(app, f"run={run_id}")
        try:
            first = await asyncio.wait_for(stream.chunks.get(), 10)
            assert ": connected" in first
            assert stream.started["status"] == 200
            headers = dict(stream.started["headers"])
            assert headers[b"content-type"].startswith(b"text/event-stream")
            assert headers[b"cache-control"] == b"no-store"
            await engine.signal(run_id, "approve", {"by": "ops"})
            await stream.until("done")
            assert all(e["run_id"] == str(run_id) for e in stream.seen)
        finally:
            await stream.close()


class Job(BaseModel):
    job_id: str


async def test_a_claim_shows_live_as_pending_then_running_then_done(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim writes no event and sends no NOTIFY: the run page's stream and the poll still
    show the run going from pending to running (held in its step, so the status is read while
    it runs) and then to done, without reloading."""
    monkeypatch.setattr(live, "POLL_SECONDS", 0.2)
    gate = asyncio.Event()
    engine = Engine(database_url, pool_size=4)

    @engine.flow("held", input=Job, output=str)
    async def held(ctx: FlowContext, job: Job) -> str:
        async def work() -> str:
            await gate.wait()
            return f"did {job.job_id}"

        return await ctx.step("work", work)

    app = dashboard(engine)
    async with engine:
        run_id = (await held.start(Job(job_id="j-1"))).run_id  # no worker yet: pending
        page = await asgi_get(app, f"/runs/{run_id}")
        assert re.search(r'data-testid="run-status"[^>]*>pending<', page)
        found = re.search(r'data-since="(\d+\.\d+)"', page)
        assert found is not None
        since = found.group(1)
        stream = Stream(app, f"run={run_id}&since={since}")
        try:
            await engine.listen(concurrency=1)  # the worker claims the run; its step waits
            assert await stream.until("running") == ["running"]
            assert (await engine.status(run_id)).run.status.value == "running"
            poll = json.loads(await asgi_get(app, "/changes", f"since={since}&run={run_id}"))
            assert poll["runs"][-1] == {"run_id": str(run_id), "status": "running"}
            gate.set()
            assert await stream.until("done") == ["running", "done"]  # each status sent once
            query = f"since={poll['token']}&run={run_id}"
            poll = json.loads(await asgi_get(app, "/changes", query))
            assert poll["runs"][-1] == {"run_id": str(run_id), "status": "done"}
        finally:
            gate.set()
            await stream.close()


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
