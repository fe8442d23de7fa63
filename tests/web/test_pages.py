"""The dashboard's read pages through Starlette's TestClient, on real PostgreSQL with an
in-process worker, mounted under a path prefix in a parent app.

The app (and so the engine) runs on the TestClient's event loop, in its portal thread: the tests
are synchronous and reach the engine with ``kit.call``; waits poll with a deadline.
"""

from __future__ import annotations

import html
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient

from iterflow import Engine, FlowContext, RunDetail, flow
from iterflow.contrib.starlette import iterflow_lifespan
from iterflow.contrib.web import dashboard

PREFIX = "/iterflow"


class Order(BaseModel):
    order_id: str
    note: str = ""


class Approval(BaseModel):
    by: str


class Receipt(BaseModel):
    order_id: str
    by: str


def build_engine(url: str) -> Engine:
    engine = Engine(url, pool_size=6)

    @engine.flow("order", input=Order, output=Receipt, signals={"approve": Approval})
    async def order(ctx: FlowContext, order: Order) -> Receipt:
        await ctx.step("charge", lambda: {"order": order.order_id, "blob": order.note})
        approval = await ctx.signal("approve", Approval)
        return Receipt(order_id=order.order_id, by=approval.by)

    @engine.flow("mail", input=Order, output=str)
    async def mail(ctx: FlowContext, order: Order) -> str:
        return await ctx.step("send", lambda: f"sent {order.order_id}")

    @engine.flow("parent", input=Order, output=str)
    async def parent(ctx: FlowContext, order: Order) -> str:
        await ctx.invoke(mail, Order(order_id=f"{order.order_id}-child"))
        return "ok"

    @engine.flow("boom", input=Order, output=str)
    async def boom(ctx: FlowContext, order: Order) -> str:
        def explode_with_markup() -> str:
            raise RuntimeError(f"<b>kaboom</b> {order.order_id}")

        return await ctx.step("explode", explode_with_markup)

    async def pack(order: Order) -> str:
        return f"packed {order.order_id}"

    engine.register(flow("ship").input(Order).step("pack", pack).sleep("1h", label="wait").build())
    return engine


@dataclass
class Kit:
    client: TestClient
    engine: Engine

    def call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        async def run() -> Any:
            return await fn(*args, **kw)

        return self.client.portal.call(run)  # type: ignore[union-attr]

    def get(self, path: str, **kw: Any) -> Any:
        response = self.client.get(PREFIX + path, **kw)
        assert response.headers["cache-control"] == "no-store", path
        return response

    def start(self, name: str, order_id: str, **kw: Any) -> uuid.UUID:
        result = self.call(
            self.engine.start, name, {"order_id": order_id, **kw.pop("inp", {})}, **kw
        )
        return result.run_id  # type: ignore[no-any-return]

    def wait_status(self, run_id: uuid.UUID, *statuses: str, timeout: float = 20) -> RunDetail:
        deadline = time.monotonic() + timeout
        while True:
            detail: RunDetail = self.call(self.engine.status, run_id)
            if detail.run.status.value in statuses:
                return detail
            assert time.monotonic() < deadline, f"run stayed {detail.run.status}"
            time.sleep(0.02)


def _kit(url: str, **options: Any) -> Iterator[Kit]:
    engine = build_engine(url)
    app = Starlette(
        lifespan=iterflow_lifespan(engine, worker=True, concurrency=4),
        routes=[Mount(PREFIX, app=dashboard(engine, **options))],
    )
    with TestClient(app) as client:
        kit = Kit(client, engine)
        deadline = time.monotonic() + 20
        while not kit.call(engine.workers):  # the worker registers as it starts
            assert time.monotonic() < deadline, "the in-process worker never registered"
            time.sleep(0.02)
        yield kit


@pytest.fixture
def kit(database_url: str) -> Iterator[Kit]:
    yield from _kit(database_url)


@pytest.fixture
def redacted(database_url: str) -> Iterator[Kit]:
    yield from _kit(database_url, redact=True)


def rows(text: str) -> list[str]:
    return re.findall(r'<tr data-run-id="([0-9a-f-]{36})"', text)


def count(text: str, status: str) -> int:
    match = re.search(rf'data-status="{status}">(\d+)<', text)
    assert match is not None, status
    return int(match.group(1))


# -- the runs list ---------------------------------------------------------------------------


def test_runs_list_filters_counts_and_keyset_pages_keeping_the_filter(kit: Kit) -> None:
    orders = [kit.start("order", f"o-{i}", tags=["vip"] if i % 2 else []) for i in range(5)]
    mails = [kit.start("mail", f"m-{i}") for i in range(2)]
    for run_id in mails:
        kit.wait_status(run_id, "done")
    for run_id in orders:
        kit.wait_status(run_id, "awaiting_signal")

    everything = kit.get("/")
    assert everything.status_code == 200
    assert set(rows(everything.text)) == {str(r) for r in orders + mails}
    assert count(everything.text, "done") == 2
    assert count(everything.text, "awaiting_signal") == 5
    assert 'form id="filters"' in everything.text

    first = kit.get("/?flow=order&limit=2")
    assert rows(first.text) == [str(r) for r in orders[::-1][:2]]
    assert count(first.text, "done") == 0  # the counts follow the filter
    nxt = re.search(r'<a rel="next" href="([^"]+)"', first.text)
    assert nxt is not None
    link = html.unescape(nxt.group(1))
    assert link.startswith(f"{PREFIX}/?") and "flow=order" in link and "limit=2" in link
    second = kit.client.get(link)
    assert rows(second.text) == [str(r) for r in orders[::-1][2:4]]

    oldest = kit.get("/?flow=order&sort=created&limit=3")
    assert rows(oldest.text) == [str(r) for r in orders[:3]]
    vip = kit.get("/?tag=vip")
    assert rows(vip.text) == [str(orders[3]), str(orders[1])]
    several = kit.get("/?status=done&status=awaiting_signal&flow=mail")
    assert set(rows(several.text)) == {str(r) for r in mails}
    by_prefix = kit.get(f"/?q={str(orders[2])[:8]}")
    assert str(orders[2]) in rows(by_prefix.text)
    created = kit.call(kit.engine.status, orders[2])
    window = (created.run.created_at - timedelta(microseconds=1)).isoformat()
    after = kit.get("/", params={"created_after": window, "flow": "order"})
    assert rows(after.text) == [str(r) for r in orders[::-1][:3]]


def test_runs_list_by_idempotency_key_parent_and_schedule(kit: Kit) -> None:
    keyed = kit.start("mail", "k", idempotency_key="order-77")
    parent = kit.start("parent", "p")
    kit.wait_status(parent, "done")
    children = kit.call(kit.engine.list_runs, parent=parent)
    assert len(children.runs) == 1
    assert rows(kit.get("/?key=order-77").text) == [str(keyed)]
    assert rows(kit.get(f"/?parent={parent}").text) == [str(children.runs[0].id)]
    assert rows(kit.get("/?schedule=nightly").text) == []


def test_an_unreadable_filter_is_shown_not_raised(kit: Kit) -> None:
    hostile = ("flow=a%00b", "tag=%00", "schedule=x%00", "parent=not-a-run", "version=99999999999")
    unreadable = ("version=abc", "created_after=yesterday", "status=nope", "q=xyz!", "limit=0")
    for query in (*unreadable, *hostile, "cursor=-1", "key=" + "k" * 5000):
        response = kit.get(f"/?{query}")
        assert response.status_code == 422, query
        assert 'data-testid="filter-error"' in response.text, query


# -- a run -----------------------------------------------------------------------------------


def test_run_page_explains_the_wait_and_shows_every_section(kit: Kit) -> None:
    run_id = kit.start("order", "A-1", tags=["vip"])
    kit.wait_status(run_id, "awaiting_signal")
    page = kit.get(f"/runs/{run_id}")
    assert page.status_code == 200
    text = page.text
    assert re.search(r'data-testid="run-status">awaiting_signal<', text)
    why = re.search(r'data-testid="why-waiting"[^>]*>([^<]+)<', text)
    assert why is not None and why.group(1).startswith("waiting for signal approve since")
    for marker in (
        '<svg id="graph"',
        'id="timeline"',
        'id="steps"',
        'id="signals"',
        'id="children"',
        'id="events"',
        'id="actions"',
    ):
        assert marker in text, marker
    assert re.search(r'data-node-id="charge" data-state="done"', text)
    assert re.search(r'data-node-id="signal:approve" data-state="waiting"', text)
    assert f'src="{PREFIX}/static/app.js"' in text

    result = kit.call(kit.engine.signal, run_id, "approve", {"by": "ops"})
    assert result.kind == "delivered"
    kit.wait_status(run_id, "done")
    done = kit.get(f"/runs/{run_id}").text
    assert 'data-testid="why-waiting"' not in done
    assert 'data-testid="outcome"' in done
    assert re.search(r'data-signal-id="\d+" data-state="consumed"', done)


def test_a_builder_flow_shows_its_compiled_graph_before_it_runs(kit: Kit) -> None:
    run_id = kit.call(kit.engine.start, "ship", {"order_id": "s-1"}, delay="1h").run_id
    text = kit.get(f"/runs/{run_id}").text
    assert re.search(r'data-node-id="pack" data-state="pending"', text)
    assert re.search(r'data-node-id="sleep:wait" data-state="pending"', text)
    why = re.search(r'data-testid="why-waiting"[^>]*>([^<]+)<', text)
    assert why is not None and why.group(1).startswith("queued, starts at")


def test_run_input_is_escaped_everywhere(kit: Kit) -> None:
    evil = "<script>alert(1)</script>"
    run_id = kit.start("order", evil, tags=[evil], inp={"note": '"><img src=x onerror=alert(2)>'})
    kit.wait_status(run_id, "awaiting_signal")
    for path in (f"/runs/{run_id}", "/", f"/runs/{run_id}/value/input", f"/?tag={evil}"):
        text = kit.get(path).text
        assert "<script>alert" not in text, path
        assert "<img src=x" not in text, path
        assert len(re.findall(r"<script", text)) == 1, path  # app.js only
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in kit.get(f"/runs/{run_id}").text


def test_a_failed_run_shows_its_error_and_traceback_escaped(kit: Kit) -> None:
    run_id = kit.start("boom", "b-1")
    kit.wait_status(run_id, "failed")
    text = kit.get(f"/runs/{run_id}").text
    trace = re.search(r'<pre data-testid="traceback">(.*?)</pre>', text, flags=re.DOTALL)
    assert trace is not None, "no traceback shown for a failed run"
    assert "explode_with_markup" in trace.group(1)
    assert "<b>kaboom" not in text and "&lt;b&gt;kaboom&lt;/b&gt;" in text


def test_large_values_are_previewed_with_their_size_and_shown_in_full_on_demand(kit: Kit) -> None:
    note = "x" * 5000
    run_id = kit.start("order", "big", inp={"note": note})
    kit.wait_status(run_id, "awaiting_signal")
    text = kit.get(f"/runs/{run_id}").text
    assert note not in text
    assert re.search(r"\(5,0\d\d bytes\)", text)
    step_link = f'href="{PREFIX}/runs/{run_id}/value/step-0"'
    assert step_link in text
    full = kit.get(f"/runs/{run_id}/value/step-0")
    assert full.status_code == 200 and note in full.text
    assert note in kit.get(f"/runs/{run_id}/value/input").text
    assert kit.get(f"/runs/{run_id}/value/step-99").status_code == 404
    assert kit.get(f"/runs/{run_id}/value/bogus").status_code == 404


def test_unknown_or_malformed_run_ids_are_404(kit: Kit) -> None:
    assert kit.get(f"/runs/{uuid.uuid4()}").status_code == 404
    assert kit.get("/runs/not-a-uuid").status_code == 404
    assert kit.get(f"/runs/{uuid.uuid4()}/value/input").status_code == 404


def test_redact_mode_hides_every_payload(redacted: Kit) -> None:
    secret = "card-4242-secret"
    run_id = redacted.start("order", secret, inp={"note": secret})
    redacted.wait_status(run_id, "awaiting_signal")
    buffered = redacted.call(redacted.engine.signal, run_id, "approve", {"by": secret})
    assert buffered.kind == "delivered"
    redacted.wait_status(run_id, "done")
    text = redacted.get(f"/runs/{run_id}").text
    assert secret not in text
    assert 'data-testid="redacted"' in text
    for what in ("input", "output", "step-0"):
        response = redacted.get(f"/runs/{run_id}/value/{what}")
        assert response.status_code == 403
        assert secret not in response.text
    assert secret not in redacted.get("/").text


def test_schedules_page_lists_next_ticks_and_last_runs(kit: Kit) -> None:
    from iterflow import Tick

    @kit.engine.flow("report", input=Tick, output=str)
    async def report(ctx: FlowContext, tick: Tick) -> str:
        return "ok"

    kit.call(kit.engine.schedule, report, cron="0 9 * * *", tz="Europe/Paris", id="daily")
    started = kit.call(kit.engine.trigger, "daily")
    text = kit.get("/schedules").text
    assert 'data-schedule-id="daily"' in text
    ticks = re.findall(r"<li>(\d{4}-\d\d-\d\dT09:00:00\+0[12]:00)</li>", text)
    assert len(ticks) == 3
    assert str(started.run_id) in text
    assert rows(kit.get("/?schedule=daily").text) == [str(started.run_id)]


# -- packaging -------------------------------------------------------------------------------


def test_importing_the_dashboard_without_starlette_says_which_extra_to_install() -> None:
    code = (
        "import sys; sys.modules['starlette'] = None\n"
        "try:\n    import iterflow.contrib.web\nexcept ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'iterflow[web]'" in out.stdout


def test_static_assets_are_served_under_the_prefix(kit: Kit) -> None:
    css = kit.get("/static/app.css")
    js = kit.get("/static/app.js")
    assert css.status_code == js.status_code == 200
    assert "svg#graph" in css.text and "EventSource" in js.text
    assert "http" not in re.sub(r"https?://www\.w3\.org[^\s\"']*", "", css.text + js.text)


# -- flowctl ui ------------------------------------------------------------------------------


def test_flowctl_ui_serves_the_dashboard_read_only_behind_a_root_path(
    database_url: str, tmp_path: Path
) -> None:
    import socket

    import httpx2 as httpx

    (tmp_path / "uiapp.py").write_text("from iterflow import Engine\n\nengine = Engine()\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "iterflow.cli",
        "--database-url",
        database_url,
        "ui",
        "uiapp:engine",
        "--port",
        str(port),
        "--root-path",
        "/ops/",
    ]
    server = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, server.communicate()[0]
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "flowctl ui never answered"
                time.sleep(0.05)
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        assert 'data-testid="read-only-banner"' in response.text
        assert 'src="/ops/static/app.js"' in response.text
    finally:
        server.terminate()
        server.communicate(timeout=10)  # reaps it and closes its output pipe
