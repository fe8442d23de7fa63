"""HTML helpers shared by every dashboard page: escaping, URLs under the mount prefix, the page
frame.

Every value that reaches a page goes through :func:`esc` (or is built by a helper that does);
URLs are relative to the mount's ``root_path`` (``app.mount("/iterflow", ...)``, or a reverse
proxy's ``--root-path``), never absolute, so the dashboard works behind a path prefix.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import datetime
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse

from iterflow.contrib.web.security import csrf_token, set_csrf_cookie
from iterflow.contrib.web.state import get_state

__all__ = ["esc", "fmt_time", "href", "page", "root", "status_badge"]

QueryValue = str | int | bool | None | Iterable[str]


def esc(value: object) -> str:
    """``str(value)`` escaped for HTML text and attribute values (quotes included)."""
    return html.escape(str(value), quote=True)


def root(request: Request) -> str:
    """The mount prefix of the dashboard (``""`` at the server's root), without a trailing
    slash."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def href(request: Request, path: str, /, **query: QueryValue) -> str:
    """The URL of dashboard ``path`` (``"/runs/<id>"``) under the mount prefix, with ``query``
    (``None``/``""``/``False`` values left out, iterables repeated: ``status=a&status=b``).
    Returned unescaped: pass it through :func:`esc` when it goes into an attribute."""
    pairs: list[tuple[str, str]] = []
    for key, value in query.items():
        if value is None or value is False or value == "":
            continue
        if isinstance(value, bool):
            pairs.append((key, "1"))
        elif isinstance(value, str | int):
            pairs.append((key, str(value)))
        else:
            pairs.extend((key, str(v)) for v in value if v not in (None, ""))
    url = root(request) + quote(path, safe="/:@-._~!$&'()*+,;=")
    return f"{url}?{urlencode(pairs)}" if pairs else url


def fmt_time(value: datetime | None) -> str:
    """A timestamp as ISO text with seconds (UTC offset kept), escaped; ``"-"`` for None."""
    if value is None:
        return "-"
    return esc(value.isoformat(timespec="seconds"))


def status_badge(status: str, *, testid: str | None = None) -> str:
    """A status as a colored badge (``span.status.status-<status>``)."""
    attr = f' data-testid="{esc(testid)}"' if testid else ""
    return f'<span class="status status-{esc(status)}"{attr}>{esc(status)}</span>'


def page(request: Request, *, title: str, body: str, status_code: int = 200) -> HTMLResponse:
    """A full dashboard page: nav (Runs, Schedules), read-only banner when no ``authorize`` hook
    is configured, the CSRF token meta and cookie, the offline assets."""
    state = get_state(request)
    banner = (
        '<div class="banner" data-testid="read-only-banner">Read-only dashboard: no '
        "<code>authorize</code> hook is configured, so no action is allowed.</div>"
        if state.authorize is None
        else ""
    )
    redacted = (
        '<div class="banner banner-redact" data-testid="redact-banner">Redact mode: payloads '
        "are hidden.</div>"
        if state.redact
        else ""
    )
    token = csrf_token(request)
    base = root(request)
    doc = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{esc(token)}">
<title>{esc(title)} · {esc(state.title)}</title>
<link rel="stylesheet" href="{esc(href(request, "/static/app.css"))}">
<script src="{esc(href(request, "/static/app.js"))}" defer></script>
</head>
<body data-root="{esc(base)}">
<header class="top">
<a class="brand" href="{esc(href(request, "/"))}">{esc(state.title)}</a>
<nav><a href="{esc(href(request, "/"))}">Runs</a>
<a href="{esc(href(request, "/schedules"))}">Schedules</a></nav>
</header>
{banner}{redacted}
<main>
{body}
</main>
</body>
</html>
"""
    response = HTMLResponse(doc, status_code=status_code)
    set_csrf_cookie(response, request)
    return response
