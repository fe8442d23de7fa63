"""Dashboard security: who may act, CSRF protection and the headers of every response.

Secure by default:

* **Acting needs an** ``authorize(request, action)`` **hook** (sync or async, returning ``True``
  to allow; anything else denies). Without one the dashboard is read-only: no form is rendered
  and every acting route answers 403. Authentication is the host app's business (a Starlette
  ``AuthenticationMiddleware``, a session, a proxy header); the hook reads what it set.
* **Every mutation is a POST checked by** :func:`guard`, in this order: the hook exists, the
  request is same-origin (``Origin``, else ``Referer``, must name the host the request was sent
  to: its ``Host`` header, or the ``X-Forwarded-Host`` a reverse proxy set), the CSRF token of
  the form field ``csrf_token`` or the header ``X-CSRF-Token`` equals the ``iterflow_csrf``
  cookie (double submit, compared in constant time), then ``authorize(request, action)``.
* The CSRF cookie is ``HttpOnly; SameSite=Strict; Path=<mount root>`` (``Secure`` over HTTPS,
  including ``X-Forwarded-Proto: https``); pages carry the token in ``<meta name="csrf-token">``
  and in a hidden field of each form, never in a URL.
* :class:`NoStoreMiddleware` adds ``Cache-Control: no-store`` (pages show live state and
  payloads), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: same-origin``,
  ``X-Frame-Options: DENY`` and a Content-Security-Policy without inline scripts.

Behind a reverse proxy at a path prefix, mount the dashboard under that prefix or run the
server with ``--root-path``; the proxy must forward the original ``Host`` (nginx:
``proxy_set_header Host $host;``) or set ``X-Forwarded-Host``. A browser cannot set
``X-Forwarded-Host`` on a cross-site request, so honouring it does not weaken the origin check;
the token check holds either way.
"""

from __future__ import annotations

import hmac
import inspect
import re
import secrets
from urllib.parse import parse_qsl, urlsplit

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iterflow.contrib.web.state import Action, Authorize, get_state

__all__ = [
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "Action",
    "Authorize",
    "Denied",
    "NoStoreMiddleware",
    "can",
    "csrf_token",
    "guard",
    "read_form",
    "set_csrf_cookie",
]

#: The double-submit cookie, the form field and the header carrying the CSRF token.
CSRF_COOKIE = "iterflow_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32)
_STATE_TOKEN = "iterflow_csrf_token"
_STATE_FORM = "iterflow_form"
_STATE_ALLOWED = "iterflow_allowed"
_DEFAULT_PORT = {"http": 80, "https": 443}
_FORM_TYPE = "application/x-www-form-urlencoded"


class Denied(Exception):
    """An acting request refused before it reached the engine: answered with ``status_code``
    and ``message`` (``code`` names the reason: ``READ_ONLY``, ``NOT_AUTHORIZED``,
    ``CROSS_ORIGIN``, ``CSRF_INVALID``, ``FORM_INVALID``, ``BODY_TOO_LARGE``)."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message


def _hook(request: Request) -> Authorize | None:
    return get_state(request).authorize


async def can(request: Request, action: Action) -> bool:
    """Whether ``action`` is allowed for ``request``: the ``authorize`` hook's answer (``True``
    only), remembered for the request. Without a hook only ``"view"`` is allowed."""
    hook = _hook(request)
    if hook is None:
        return action == "view"
    cache: dict[str, bool] | None = getattr(request.state, _STATE_ALLOWED, None)
    if cache is None:
        cache = {}
        setattr(request.state, _STATE_ALLOWED, cache)
    if action not in cache:
        answer = hook(request, action)
        if inspect.isawaitable(answer):
            answer = await answer
        cache[action] = answer is True
    return cache[action]


def csrf_token(request: Request) -> str:
    """This browser's CSRF token: the ``iterflow_csrf`` cookie's when well-formed, else a new
    random one (the same for the whole request; :func:`set_csrf_cookie` stores it)."""
    token: str | None = getattr(request.state, _STATE_TOKEN, None)
    if token is None:
        cookie = request.cookies.get(CSRF_COOKIE, "")
        token = cookie if _TOKEN.match(cookie) else secrets.token_urlsafe(32)
        setattr(request.state, _STATE_TOKEN, token)
    return token


def _mount_root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/") or "/"


def _https(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def set_csrf_cookie(response: Response, request: Request) -> None:
    """Set the ``iterflow_csrf`` cookie to :func:`csrf_token` on ``response`` unless the
    browser already holds it (``HttpOnly; SameSite=Strict; Path=<mount root>``)."""
    token = csrf_token(request)
    if request.cookies.get(CSRF_COOKIE) == token:
        return
    response.set_cookie(
        CSRF_COOKIE,
        token,
        path=_mount_root(request),
        httponly=True,
        samesite="strict",
        secure=_https(request),
    )


def _authority(host: str, default_port: int) -> tuple[str, int] | None:
    """``(hostname, port)`` of a ``Host``-style value, or None if it is not one."""
    try:
        parts = urlsplit(f"//{host.strip()}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname.lower(), port or default_port


def _same_origin(request: Request) -> bool:
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return False
    try:
        parts = urlsplit(source)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme not in _DEFAULT_PORT or not parts.hostname:
        return False
    default = _DEFAULT_PORT[parts.scheme]
    origin = (parts.hostname.lower(), port or default)
    hosts = [request.headers.get("host", "")]
    forwarded = request.headers.get("x-forwarded-host")
    if forwarded:
        hosts.append(forwarded.split(",")[0])
    return any(_authority(host, default) == origin for host in hosts if host)


def _form_cap(request: Request) -> int:
    # percent-encoding triples a payload at worst; the engine then applies the exact limit
    return 3 * get_state(request).engine.settings.max_payload_bytes + 64 * 1024


async def read_form(request: Request) -> FormData:
    """The request's URL-encoded form (what the dashboard's forms send), read once and capped
    at three times ``Settings.max_payload_bytes`` (413 over it; other content types 415); an
    empty body is an empty form (the token then comes in the ``X-CSRF-Token`` header)."""
    cached: FormData | None = getattr(request.state, _STATE_FORM, None)
    if cached is not None:
        return cached
    cap = _form_cap(request)
    length = request.headers.get("content-length", "")
    if length.isascii() and length.isdigit() and int(length) > cap:
        raise Denied(413, "BODY_TOO_LARGE", f"the form is over {cap} bytes")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise Denied(413, "BODY_TOO_LARGE", f"the form is over {cap} bytes")
    if body and content_type != _FORM_TYPE:
        raise Denied(415, "FORM_INVALID", f"send the form as {_FORM_TYPE}")
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=1000)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Denied(400, "FORM_INVALID", f"the form cannot be read: {exc}") from None
    form = FormData([(name, value) for name, value in pairs])
    setattr(request.state, _STATE_FORM, form)
    return form


async def guard(request: Request, action: Action) -> FormData:
    """Allow ``action`` or raise :class:`Denied`: the ``authorize`` hook exists (else the
    dashboard is read-only), the request is a same-origin POST, its CSRF token matches the
    cookie, and ``authorize(request, action)`` returns ``True``. Returns the request's form."""
    if _hook(request) is None:
        raise Denied(
            403,
            "READ_ONLY",
            "this dashboard is read-only: pass authorize=... to dashboard() to allow actions",
        )
    if request.method != "POST":
        raise Denied(405, "FORM_INVALID", "actions are POST requests")
    if not _same_origin(request):
        raise Denied(
            403,
            "CROSS_ORIGIN",
            "the request does not come from this dashboard's origin (Origin/Referer header); "
            "behind a proxy, forward the Host header",
        )
    form = await read_form(request)
    cookie = request.cookies.get(CSRF_COOKIE, "")
    sent = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD) or ""
    if not isinstance(sent, str) or not _TOKEN.match(cookie) or not _TOKEN.match(sent):
        raise Denied(403, "CSRF_INVALID", "the CSRF token is missing: reload the page and retry")
    if not hmac.compare_digest(cookie.encode(), sent.encode()):
        raise Denied(403, "CSRF_INVALID", "the CSRF token does not match: reload the page")
    if not await can(request, action):
        raise Denied(403, "NOT_AUTHORIZED", f"not authorized to {action.replace('_', ' ')}")
    return form


_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"cache-control", b"no-store"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        b"img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
        b"form-action 'self'",
    ),
)
_NAMES = frozenset(name for name, _ in _HEADERS)


class NoStoreMiddleware:
    """Pure ASGI middleware setting ``Cache-Control: no-store`` and the security headers
    (``nosniff``, ``Referrer-Policy: same-origin``, ``X-Frame-Options: DENY``, a CSP allowing
    scripts from the dashboard's own origin only) on every HTTP response, replacing any."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _NAMES]
                message = {**message, "headers": [*kept, *_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
