"""The iterflow dashboard: a mountable ASGI app (``pip install iterflow[web]``).

::

    from iterflow.contrib.web import dashboard

    app.mount("/iterflow", dashboard(engine, authorize=may_act))

Server-rendered pages over the engine's public API: the runs list (filters in the URL, counts
per status, keyset pages), a run (why it waits, its graph, timeline, steps, signals, children,
events), the schedules; live status updates over Server-Sent Events fed by the engine's
``LISTEN`` connection, with a polling fallback. Without ``authorize`` the dashboard is read-only;
``redact=True`` hides every payload. No CDN: the CSS and JavaScript ship in the wheel.
``flowctl ui module:engine`` serves it standalone.
"""

from __future__ import annotations

try:
    import starlette  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "iterflow.contrib.web needs Starlette, which the [web] extra installs: "
        "pip install 'iterflow[web]'"
    ) from exc

from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from iterflow.contrib.web.actions import action_routes
from iterflow.contrib.web.html import esc, page
from iterflow.contrib.web.live import live_routes
from iterflow.contrib.web.pages import page_routes
from iterflow.contrib.web.security import Authorize, NoStoreMiddleware
from iterflow.contrib.web.state import DashboardEngine, DashboardState
from iterflow.core.errors import FlowError

__all__ = ["DashboardEngine", "DashboardState", "dashboard"]

_STATIC = Path(__file__).parent / "static"


async def _flow_error(request: Request, exc: Exception) -> Response:
    from iterflow.contrib.starlette import status_for

    assert isinstance(exc, FlowError)
    status = status_for(exc)
    message = exc.message if status < 500 else "see the server's logs for this error code"
    body = (
        f'<h1>Error</h1><p class="error" data-testid="page-error"><code>{esc(exc.error_code)}'
        f"</code> {esc(message)}</p>"
    )
    return page(request, title=exc.error_code, body=body, status_code=status)


def dashboard(
    engine: DashboardEngine,
    *,
    authorize: Authorize | None = None,
    redact: bool = False,
    title: str = "iterflow",
) -> Starlette:
    """The dashboard as a Starlette app for ``engine`` (an open :class:`iterflow.Engine`; open
    and close it in your app's lifespan, e.g. with ``iterflow_lifespan``).

    ``authorize(request, action)`` (sync or async) decides every action (``cancel``,
    ``retry``, ``signal``, ``start``, bulk and schedule actions); without it the dashboard is
    read-only. ``redact=True`` hides inputs, outputs, step values, signal payloads and error
    details everywhere, the value-on-demand route included. Mount it under any prefix
    (``app.mount("/iterflow", dashboard(engine))``); it also works behind a reverse proxy that
    sets the ASGI ``root_path``.
    """
    if not isinstance(redact, bool):
        raise TypeError("redact must be True or False")
    if authorize is not None and not callable(authorize):
        raise TypeError("authorize must be a callable (request, action) -> bool")
    routes = [
        *page_routes(),
        *live_routes(),
        *action_routes(),
        Mount("/static", app=StaticFiles(directory=_STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(NoStoreMiddleware)],
        exception_handlers={FlowError: _flow_error},
    )
    app.state.iterflow = DashboardState(
        engine=engine, authorize=authorize, redact=redact, title=title
    )
    return app
