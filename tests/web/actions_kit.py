"""The dashboard under test for the acting routes (test_actions.py, test_security.py): a real
engine on the per-test PostgreSQL database with an in-process worker, the dashboard mounted
under a path prefix, driven by Starlette's TestClient.

The app (and so the engine) runs on the TestClient's event loop, in its portal thread: the tests
are synchronous and reach the engine with :meth:`Kit.call`. Every response the client receives
is checked for the no-store and security headers.
"""

from __future__ import annotations

import functools
import html
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount
from starlette.testclient import TestClient

from iterflow import Engine, FlowContext
from iterflow.contrib.starlette import iterflow_lifespan
from iterflow.contrib.web import dashboard
from iterflow.contrib.web.security import Authorize

PREFIX = "/ops"
ORIGIN = "http://testserver"


class Order(BaseModel):
    order_id: str
    amount_cents: int = 0


class Approval(BaseModel):
    approved_by: str
    level: int = 1


class Receipt(BaseModel):
    order_id: str
    approved_by: str


@dataclass
class Controls:
    """Test hooks of the flows: order ids whose charge fails, and whose undo (a saga's
    compensation) fails."""

    declined: set[str] = field(default_factory=set)
    undo_fails: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def build_engine(url: str, controls: Controls) -> Engine:
    """``approval`` waits for ``approve``; ``charge`` fails while its order id is declined;
    ``parent`` invokes an ``approval`` child and a detached one, then waits for ``done``."""
    engine = Engine(url, pool_size=6)

    @engine.flow("approval", input=Order, output=Receipt, signals={"approve": Approval})
    async def approval(ctx: FlowContext, order: Order) -> Receipt:
        approved = await ctx.signal("approve", Approval, timeout="1h")
        return Receipt(order_id=order.order_id, approved_by=approved.approved_by)

    @engine.flow("charge", input=Order, output=str)
    async def charge(ctx: FlowContext, order: Order) -> str:
        def charge_card(order_id: str) -> str:
            with controls.lock:
                if order_id in controls.declined:
                    raise RuntimeError(f"card declined for {order_id}")
            return f"ch_{order_id}"

        return await ctx.step("charge", charge_card, order.order_id)

    @engine.flow("parent", input=Order, output=str, signals={"note": dict})
    async def parent(ctx: FlowContext, order: Order) -> str:
        await ctx.gather(
            ctx.invoke(approval, Order(order_id=f"{order.order_id}-child")),
            ctx.invoke(approval, Order(order_id=f"{order.order_id}-detached"), detached=True),
        )
        return "ok"

    return engine


def app_for(
    engine: Engine, authorize: Authorize | None, *, worker: bool = True, redact: bool = False
) -> Starlette:
    """The host app: iterflow's lifespan (with a worker), the dashboard under ``/ops``."""
    return Starlette(
        lifespan=iterflow_lifespan(engine, worker=worker, concurrency=4),
        routes=[Mount(PREFIX, app=dashboard(engine, authorize=authorize, redact=redact))],
    )


def operator(request: Request, action: str) -> bool:
    """Allow everything."""
    return True


SECURITY_HEADERS = {
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}


def check_headers(response: httpx.Response) -> None:
    """Every response of the dashboard carries no-store and the security headers."""
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (response.request.url, name, response.headers)
    csp = response.headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in csp.split(";"))
    assert directives["script-src"] == "'self'"  # no inline script
    assert directives["frame-ancestors"] == "'none'"


@dataclass
class Kit:
    client: TestClient
    engine: Engine
    controls: Controls

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``await fn(*args, **kwargs)`` on the app's event loop."""
        assert self.client.portal is not None
        return self.client.portal.call(functools.partial(fn, *args, **kwargs))

    def start(self, flow: str, order_id: str) -> uuid.UUID:
        run_id: uuid.UUID = self.call(self.engine.start, flow, {"order_id": order_id}).run_id
        return run_id

    def status(self, run_id: uuid.UUID) -> str:
        return str(self.call(self.engine.status, run_id).run.status)

    def until(self, check: Callable[[], bool], what: str, *, timeout: float = 20.0) -> None:
        """Poll ``check`` (it reads the database) until true, with a deadline."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.02)

    def reach(self, run_id: uuid.UUID, status: str, *, timeout: float = 20.0) -> None:
        """Poll the database until the run has ``status``."""
        self.until(lambda: self.status(run_id) == status, f"run {run_id} to be {status}")

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(PREFIX + path, **kwargs)

    def token(self) -> str:
        """The CSRF token: the cookie a page sets (fetching one if the client has none)."""
        if self.client.cookies.get("iterflow_csrf") is None:
            self.get("/start/approval")
        token = self.client.cookies.get("iterflow_csrf")
        assert token
        return token

    def post(
        self,
        path: str,
        data: dict[str, Any] | list[tuple[str, str]] | None = None,
        *,
        origin: str | None = ORIGIN,
        csrf: str | None = "cookie",
        headers: dict[str, str] | None = None,
        follow: bool = False,
    ) -> httpx.Response:
        """A POST as the dashboard's forms send it: same-origin, with the CSRF field."""
        fields: list[tuple[str, str]] = (
            list(data.items()) if isinstance(data, dict) else list(data or [])
        )
        if csrf is not None:
            fields.append(("csrf_token", self.token() if csrf == "cookie" else csrf))
        sent = dict(headers or {})
        if origin is not None:
            sent["Origin"] = origin
        return self.client.post(
            PREFIX + path, data=dict(_multi(fields)), headers=sent, follow_redirects=follow
        )


def _multi(fields: list[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in fields:
        if name in out:
            previous = out[name]
            out[name] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            out[name] = value
    return out


@contextmanager
def dashboard_kit(
    url: str,
    authorize: Authorize | None = operator,
    *,
    build: Callable[[str, Controls], Engine] = build_engine,
    worker: bool = True,
    redact: bool = False,
) -> Iterator[Kit]:
    """The dashboard on the engine ``build`` makes (with an in-process worker if ``worker``;
    ``redact``: the dashboard's redact mode)."""
    controls = Controls()
    engine = build(url, controls)
    client = TestClient(app_for(engine, authorize, worker=worker, redact=redact), base_url=ORIGIN)
    client.event_hooks["response"] = [check_headers]
    with client:
        yield Kit(client, engine, controls)


def text_of(response: httpx.Response, testid: str) -> str:
    """The text of the first ``[data-testid=<testid>]`` element (tags stripped, unescaped)."""
    match = re.search(
        rf'<(\w+)[^>]*data-testid="{re.escape(testid)}"[^>]*>(.*?)</\1>', response.text, re.S
    )
    assert match, f"no {testid} in {response.text[:3000]}"
    return html.unescape(re.sub(r"<[^>]+>", "", match.group(2)))


def forms_of(response: httpx.Response) -> list[str]:
    """The opening tags of the page's forms."""
    return re.findall(r"<form\b[^>]*>", response.text)
