"""Browser fixtures: the dashboard served by a real HTTP server (uvicorn on 127.0.0.1, a random
port), its runs executed by a real worker (``engine.listen``), driven by a real headless
Chromium through Playwright.

Everything runs on the test's event loop: the server (``uvicorn.Server.serve()`` as a task),
the engine and its in-process worker, and Playwright's async API. So a test reaches the engine
directly (``await live.engine.start(...)``) and the flows' test hooks (:class:`Controls`) are
plain asyncio objects.

The browser is Debian's ``chromium`` (``/usr/bin/chromium``; ``$ITERFLOW_CHROMIUM`` names
another), never one downloaded by ``playwright install``. Without it:

* under CI (``CI=true``), every browser test **fails** (``.ci/run`` installs the package first);
* on a developer's machine, every browser test is reported as NOT RUN, loudly, in the terminal
  summary (listing each test), so a green local run never hides them.

Screenshots go to ``screenshots/`` at the repository root (gitignored); their paths are printed
in the terminal summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Mount

from iterflow import Engine, FlowContext
from iterflow.contrib.starlette import iterflow_lifespan

if TYPE_CHECKING:
    from playwright.async_api import Browser, BrowserContext, Page

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "screenshots"
#: Where the dashboard is mounted in the test app: a path prefix, as behind a reverse proxy.
PREFIX = "/ops"
#: The launch flags of every browser test (no sandbox as root; nothing that reaches the network).
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
#: Playwright's waits (expect, wait_for): a deadline, never a sleep.
TIMEOUT_MS = 15_000

#: The skip reason of a browser test that could not run.
NOT_RUN = "BROWSER TEST NOT RUN"

_not_run: list[tuple[str, str]] = []
#: When this run collected these tests: the screenshots written since are its own.
_BEGAN = time.time()


def chromium_executable() -> str | None:
    """The Chromium to drive: ``$ITERFLOW_CHROMIUM``, else ``chromium`` on the PATH."""
    named = os.environ.get("ITERFLOW_CHROMIUM")
    if named:
        return named if os.access(named, os.X_OK) else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if chromium_executable() is None:
        return (
            "no Chromium: install Debian's package (`apt-get install -y chromium`) or set "
            "ITERFLOW_CHROMIUM to a Chromium binary (`playwright install` is not used)"
        )
    return None


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """The Chromium binary. Missing: a failure under CI, a loud NOT RUN locally."""
    problem = _missing()
    if problem is None:
        path = chromium_executable()
        assert path is not None
        return path
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise RuntimeError(f"browser tests cannot run under CI: {problem}")
    pytest.skip(f"{NOT_RUN}: {problem}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember each browser test that could not run (for the terminal summary). Called where
    the summary is written, also for the reports of pytest-xdist's worker processes."""
    if report.skipped and NOT_RUN in str(report.longrepr):
        _not_run.append((report.nodeid, str(_missing())))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """A loud section listing the browser tests not run, and the screenshots written."""
    if _not_run:
        terminalreporter.write_sep(
            "!", f"{len(_not_run)} BROWSER TESTS NOT RUN (no browser)", red=True, bold=True
        )
        terminalreporter.write_line(f"reason: {_not_run[0][1]}", red=True, bold=True)
        for nodeid, _ in _not_run:
            terminalreporter.write_line(f"NOT RUN: {nodeid}", red=True, bold=True)
        terminalreporter.write_line(
            "CI (CI=true) fails instead; run `apt-get install -y chromium` to run them here.",
            red=True,
        )
    shots = sorted(p for p in SCREENSHOTS.glob("*.png") if p.stat().st_mtime >= _BEGAN)
    if shots:
        terminalreporter.write_sep("-", "dashboard screenshots")
        for path in shots:
            terminalreporter.write_line(str(path))


# -- the flows the browser acts on ----------------------------------------------------------------


class Order(BaseModel):
    order_id: str
    amount_cents: int


class Approval(BaseModel):
    approved_by: str
    note: str = ""


class Receipt(BaseModel):
    order_id: str
    approved_by: str


class Charged(BaseModel):
    charge_id: str


def _opened() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


@dataclass
class Controls:
    """The tests' hold on the flows: ``ship_gate`` holds every ``ship`` step until set (closed
    at first), ``charge_gate`` every ``charge`` step (open at first); ``declined`` order ids
    make the ``charge`` step fail."""

    ship_gate: asyncio.Event = field(default_factory=asyncio.Event)
    charge_gate: asyncio.Event = field(default_factory=_opened)
    declined: set[str] = field(default_factory=set)


def build_engine(url: str, controls: Controls) -> Engine:
    """An engine with the two flows of the browser tests:

    * ``approval``: waits for the ``approve`` signal (model :class:`Approval`), then a ``ship``
      step held by ``controls.ship_gate``;
    * ``charge``: one ``charge`` step, held by ``controls.charge_gate``, that fails (no step
      retries) while the order id is in ``controls.declined``.
    """
    engine = Engine(url, pool_size=6)

    @engine.flow("approval", input=Order, output=Receipt, signals={"approve": Approval})
    async def approval(ctx: FlowContext, order: Order) -> Receipt:
        approved = await ctx.signal("approve", Approval, timeout="1h")

        async def ship(order_id: str) -> bool:
            await controls.ship_gate.wait()
            return True

        await ctx.step("ship", ship, order.order_id)
        return Receipt(order_id=order.order_id, approved_by=approved.approved_by)

    @engine.flow("charge", input=Order, output=Charged)
    async def charge(ctx: FlowContext, order: Order) -> Charged:
        async def charge_card(order_id: str) -> str:
            await controls.charge_gate.wait()
            if order_id in controls.declined:
                raise RuntimeError(f"card declined for {order_id}")
            return f"ch_{order_id}"

        return Charged(charge_id=await ctx.step("charge", charge_card, order.order_id))

    return engine


def authorize(request: Request, action: str) -> bool:
    """The tests' auth hook: role cookie ``operator`` may do anything, others only view."""
    return action == "view" or request.cookies.get("role") == "operator"


def build_app(engine: Engine) -> Starlette:
    """The host app: iterflow's lifespan (engine + in-process worker) and the dashboard
    mounted under :data:`PREFIX` with the auth hook."""
    from iterflow.contrib.web import dashboard

    return Starlette(
        lifespan=iterflow_lifespan(engine, worker=True, concurrency=4),
        routes=[Mount(PREFIX, app=dashboard(engine, authorize=authorize))],
    )


# -- the live server ------------------------------------------------------------------------------


@dataclass
class LiveDashboard:
    """A served dashboard: ``url`` is the mount root (``http://127.0.0.1:<port>/ops``)."""

    origin: str
    engine: Engine
    controls: Controls

    @property
    def url(self) -> str:
        return self.origin + PREFIX

    def at(self, path: str = "/") -> str:
        """An absolute URL under the mount root."""
        return self.url + path

    async def until(
        self, check: Callable[[], Awaitable[bool]], *, timeout: float = 15.0, what: str = ""
    ) -> None:
        """Poll ``check`` until true, with a deadline (for the database side of a scenario)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not await check():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what or check}")
            await asyncio.sleep(0.05)

    async def status_of(self, run_id: Any) -> str:
        return str((await self.engine.status(run_id)).run.status)

    async def reach(self, run_id: Any, status: str, *, timeout: float = 15.0) -> None:
        """Wait until the run has ``status`` in the database."""

        async def check() -> bool:
            return await self.status_of(run_id) == status

        await self.until(check, timeout=timeout, what=f"run {run_id} to be {status}")


@pytest.fixture
async def live(chromium_path: str, database_url: str) -> AsyncIterator[LiveDashboard]:
    """The dashboard on a real HTTP server, a worker executing its runs (same event loop)."""
    import uvicorn

    controls = Controls()
    engine = build_engine(database_url, controls)
    config = uvicorn.Config(
        build_app(engine),
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_level="warning",
        log_config=None,
        ws="none",
        http="h11",
        timeout_graceful_shutdown=3,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name="uvicorn")
    deadline = asyncio.get_running_loop().time() + 30
    while not server.started:
        if task.done():
            task.result()  # raises the startup error
            raise RuntimeError("uvicorn stopped before it started")
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError("uvicorn did not start within 30 s")
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield LiveDashboard(origin=f"http://127.0.0.1:{port}", engine=engine, controls=controls)
    finally:
        controls.ship_gate.set()  # let held steps finish: the worker stops cleanly
        controls.charge_gate.set()
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=10)
        except TimeoutError:
            server.force_exit = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(task, timeout=5)


@pytest.fixture
async def browser(chromium_path: str, live: LiveDashboard) -> AsyncIterator[Browser]:
    """Headless Debian Chromium (after ``live``: closed before the server stops). Playwright
    starts it with ``--headless`` and a new, empty temporary ``--user-data-dir``; each context
    (:func:`new_context`) is a fresh profile on top of it: no cookies, no cache."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium_path, headless=True, args=list(CHROMIUM_ARGS)
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def operator(browser: Browser, live: LiveDashboard) -> AsyncIterator[Page]:
    """A page in a fresh browser context (an empty profile) whose role cookie is ``operator``."""
    context = await new_context(browser, live, role="operator")
    try:
        yield await new_page(context)
    finally:
        await context.close()


async def new_context(browser: Browser, live: LiveDashboard, *, role: str) -> BrowserContext:
    """A fresh context (no cookies, no cache) with the ``role`` cookie set for the server."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    await context.add_cookies([{"name": "role", "value": role, "url": live.origin}])
    return context


async def new_page(context: BrowserContext) -> Page:
    """A page that accepts confirmation dialogs (a dashboard may confirm a cancel)."""
    page = await context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    return page


async def screenshot(page: Page, name: str) -> Path:
    """Write a full-page screenshot to ``screenshots/<name>.png`` and print its path."""
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path
