"""Starlette and FastAPI helpers (``pip install iterflow[web]``; FastAPI is Starlette).

* :func:`iterflow_lifespan`: ``Starlette(lifespan=...)`` / ``FastAPI(lifespan=...)`` that opens
  the engine, optionally migrates and starts an in-process worker, and closes it on shutdown.
* :func:`install_error_handler` / :func:`flow_error_handler`: every :class:`iterflow.FlowError`
  escaping a route becomes an RFC 9457 problem response (``application/problem+json``) whose
  status comes from one table, :data:`STATUS_BY_CODE` (the *webhook answer* column of
  ``docs/errors.md``; a test keeps them equal).
* :func:`signal_webhook`: an endpoint that verifies a provider's HMAC-SHA256 signature (Stripe or
  GitHub style), reads the JSON event once (size-capped), asks your ``resolve`` function which
  run and signal it is for, and calls ``engine.signal``.

This module reaches the engine through its public API only (an import-linter contract forbids
``iterflow.contrib`` importing ``iterflow.store``). Semantics and a runnable recipe:
``docs/web.md``.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import MappingProxyType
from typing import Any, Literal, NamedTuple, Protocol, TypeAlias

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

# Not ``from iterflow import ...``: the facade's TYPE_CHECKING imports reach iterflow.testing and,
# through the engine, iterflow.store, which import-linter counts against contrib. The error tree
# and the records are pure core; the engine is typed by the Protocol below.
from iterflow.core.errors import FlowError
from iterflow.core.events import PublishResult
from iterflow.core.models import SignalResult
from iterflow.core.settings import Settings

__all__ = [
    "DEFAULT_STATUS",
    "PROBLEM_TYPE_BASE",
    "STATUS_BY_CODE",
    "EngineAPI",
    "Publication",
    "PublishResolver",
    "Resolved",
    "Resolver",
    "WebhookSignal",
    "exception_handlers",
    "flow_error_handler",
    "install_error_handler",
    "iterflow_lifespan",
    "problem_response",
    "publish_webhook",
    "signal_webhook",
    "status_for",
]

logger = logging.getLogger(__name__)


class EngineAPI(Protocol):
    """The part of :class:`iterflow.Engine`'s public API these helpers use (an ``Engine`` is
    one); typed structurally so that contrib depends on the API, not on the engine's module."""

    @property
    def settings(self) -> Settings:
        """The engine's settings."""
        ...

    async def open(self) -> None:
        """Open the engine."""
        ...

    async def close(self) -> None:
        """Close the engine (workers stop, the pool is disposed)."""
        ...

    async def migrate(self) -> None:
        """Install or upgrade iterflow's tables."""
        ...

    async def listen(self, *, concurrency: int = ...) -> None:
        """Start an in-process worker."""
        ...

    async def signal(
        self,
        run_id: uuid.UUID | str,
        name: str,
        payload: Any,
        *,
        idempotency_key: str | None = ...,
    ) -> SignalResult:
        """Deliver a signal to a run."""
        ...

    async def publish(
        self, event: str, payload: Any, *, idempotency_key: str | None = ..., conn: Any = ...
    ) -> PublishResult:
        """Start the flows subscribed to ``event``."""
        ...


# -- lifespan -------------------------------------------------------------------------------------


def iterflow_lifespan(
    engine: EngineAPI, *, migrate: bool = False, worker: bool = False, concurrency: int = 4
) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A lifespan for ``Starlette(lifespan=...)`` or ``FastAPI(lifespan=...)``.

    On startup it opens ``engine``, runs ``engine.migrate()`` if ``migrate`` and starts an
    in-process worker with ``engine.listen(concurrency=...)`` if ``worker`` (a failure of either
    closes the engine and fails the startup, so the server does not serve on a broken engine).
    On shutdown it closes the engine: the worker stops, the pool is disposed. To combine it with
    a lifespan of your own, enter it inside yours: ``async with iterflow_lifespan(engine)(app):``.
    """
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError("concurrency must be an integer of at least 1")

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        await engine.open()
        try:
            if migrate:
                await engine.migrate()
            if worker:
                await engine.listen(concurrency=concurrency)
            yield
        finally:
            await engine.close()

    return lifespan


# -- FlowError -> HTTP ----------------------------------------------------------------------------

#: The HTTP status for each error code, as docs/errors.md's *webhook answer* column says: a 4xx
#: for a value a retry cannot fix (the caller or provider must stop sending it), a 5xx for a
#: condition on our side that a later retry can fix. Codes not listed answer :data:`DEFAULT_STATUS`.
STATUS_BY_CODE: Mapping[str, int] = MappingProxyType(
    {
        # bad values: the same request fails the same way
        "INPUT_INVALID": 422,
        "PAYLOAD_INVALID": 422,
        "SIGNAL_PAYLOAD_INVALID": 422,
        "SIGNAL_UNKNOWN": 422,
        "DURATION_INVALID": 422,
        "DATA_REJECTED": 422,
        "SCHEDULE_INVALID": 422,
        "PAYLOAD_TOO_LARGE": 413,
        "SIGNAL_LIMIT_EXCEEDED": 409,
        "SCHEDULE_CONFLICT": 409,
        "IDEMPOTENCY_CONFLICT": 409,
        "EVENT_INPUT_INVALID": 422,
        "RUN_NOT_FOUND": 404,
        "SCHEDULE_NOT_FOUND": 404,
        # our side: the same request can succeed later
        "DATABASE_UNAVAILABLE": 503,
        "SCHEMA_MISSING": 503,
        "FLOW_UNKNOWN": 503,
        "RESULT_TIMEOUT": 504,
    }
)

#: The status of every other code: configuration errors (``CONFIG_INVALID``, ``SCHEMA_CONFLICT``,
#: ``FLOW_DEFINITION_INVALID``), a failed run's error raised by ``result`` (``STEP_FAILED``, ...)
#: and your own codes. Catch them in the route to answer otherwise.
DEFAULT_STATUS = 500

#: The problem ``type`` is this prefix followed by the error code (a URI naming the code; it is
#: not meant to be dereferenced).
PROBLEM_TYPE_BASE = "urn:iterflow:error:"

_PROBLEM_MEDIA_TYPE = "application/problem+json"
_HIDDEN_DETAIL = "the server could not handle the request; see its logs for this error code"


def status_for(error: FlowError) -> int:
    """The HTTP status for ``error`` (:data:`STATUS_BY_CODE`, else :data:`DEFAULT_STATUS`)."""
    return STATUS_BY_CODE.get(error.error_code, DEFAULT_STATUS)


def _problem(
    status: int, code: str, detail: str, headers: Mapping[str, str] | None = None
) -> Response:
    body = {
        "type": f"{PROBLEM_TYPE_BASE}{code}",
        "title": code.replace("_", " ").capitalize(),
        "status": status,
        "code": code,
        "detail": detail,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=_PROBLEM_MEDIA_TYPE)


def problem_response(error: FlowError, *, expose_server_errors: bool = False) -> Response:
    """An RFC 9457 problem response for ``error``:
    ``{"type", "title", "status", "code", "detail"}`` with the status of :func:`status_for`.

    ``detail`` is the error's message for a 4xx. For a 5xx it is a fixed sentence unless
    ``expose_server_errors`` (a driver message may name hosts; the caller may be a third party);
    the error is logged (ERROR with its traceback for 500, WARNING for 503/504) either way.
    """
    status = status_for(error)
    detail = error.message
    if status >= 500:
        if status == DEFAULT_STATUS:
            logger.error("%s answered %d", error, status, exc_info=error)
        else:
            logger.warning("%s answered %d", error, status)
        if not expose_server_errors:
            detail = _HIDDEN_DETAIL
    return _problem(status, error.error_code, detail)


async def flow_error_handler(request: Request, exc: Exception) -> Response:
    """A Starlette/FastAPI exception handler for :class:`iterflow.FlowError` (see
    :func:`problem_response`; 5xx details are not exposed)."""
    if not isinstance(exc, FlowError):  # registered for FlowError only; be safe anyway
        raise exc
    return problem_response(exc)


def exception_handlers(
    *, expose_server_errors: bool = False
) -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    """``{FlowError: handler}`` for ``Starlette(exception_handlers=...)`` /
    ``FastAPI(exception_handlers=...)``."""

    async def handler(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, FlowError):
            raise exc
        return problem_response(exc, expose_server_errors=expose_server_errors)

    return {FlowError: handler}


def install_error_handler(app: Starlette, *, expose_server_errors: bool = False) -> None:
    """Answer every :class:`iterflow.FlowError` escaping a route of ``app`` (Starlette or FastAPI)
    with a problem response (:func:`problem_response`)."""
    for exc_class, handler in exception_handlers(expose_server_errors=expose_server_errors).items():
        app.add_exception_handler(exc_class, handler)


# -- signed webhooks ------------------------------------------------------------------------------


class WebhookSignal(NamedTuple):
    """What ``resolve`` returns for an event to deliver: ``engine.signal(run_id, signal,
    payload, idempotency_key=idempotency_key)``. A plain 4-tuple is accepted too."""

    run_id: uuid.UUID | str
    signal: str
    payload: Any
    idempotency_key: str | None = None


Resolved: TypeAlias = WebhookSignal | tuple[uuid.UUID | str, str, Any, str | None] | None
"""``resolve``'s answer: the signal to deliver, or ``None`` to acknowledge and ignore the event."""

Resolver: TypeAlias = Callable[[dict[str, Any]], Resolved | Awaitable[Resolved]]
"""``resolve(event)``, sync or async, given the verified JSON event (an object)."""

Scheme: TypeAlias = Literal["stripe", "github"]

_DEFAULT_HEADER: dict[str, str] = {"stripe": "Stripe-Signature", "github": "X-Hub-Signature-256"}
_DEFAULT_DELIVERY_HEADER: dict[str, str | None] = {"stripe": None, "github": "X-GitHub-Delivery"}
_UNSET: Any = object()


class _Rejected(Exception):
    """A delivery refused before ``resolve``: answered with ``status`` and a problem body."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def _secrets(secret: str | bytes | Sequence[str | bytes]) -> tuple[bytes, ...]:
    items = [secret] if isinstance(secret, str | bytes) else list(secret)
    keys = tuple(s.encode() if isinstance(s, str) else s for s in items)
    if not keys or not all(isinstance(k, bytes) and k for k in keys):
        raise ValueError("secret must be a non-empty string or bytes (or a list of them)")
    return keys


def _sign(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _any_match(keys: tuple[bytes, ...], message: bytes, candidates: Sequence[str]) -> bool:
    # every comparison runs (no early exit), each in constant time; on bytes, since
    # compare_digest refuses non-ASCII text and a header may carry any
    matched = False
    for key in keys:
        expected = _sign(key, message).encode()
        for candidate in candidates:
            matched |= hmac.compare_digest(expected, candidate.strip().lower().encode())
    return matched


def _verify_stripe(
    keys: tuple[bytes, ...], header: str, body: bytes, tolerance: float | None, now: float
) -> None:
    timestamp: str | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if name == "t":
            timestamp = value.strip()
        elif name == "v1":
            candidates.append(value)
    well_formed = timestamp is not None and timestamp.isascii() and timestamp.isdigit()
    if timestamp is None or not well_formed or len(timestamp) > 12 or not candidates:
        raise _Rejected(
            401, "WEBHOOK_SIGNATURE_INVALID", "the signature header is not t=<unix time>,v1=<hex>"
        )
    if not _any_match(keys, timestamp.encode() + b"." + body, candidates):
        raise _Rejected(401, "WEBHOOK_SIGNATURE_INVALID", "the signature does not match the body")
    if tolerance is not None and abs(now - int(timestamp)) > tolerance:
        raise _Rejected(
            401,
            "WEBHOOK_TIMESTAMP_STALE",
            f"the signature's timestamp is more than {tolerance:g} s from now (a replay?)",
        )


def _verify_github(keys: tuple[bytes, ...], header: str, body: bytes) -> None:
    prefix, sep, digest = header.strip().partition("=")
    if not sep or prefix.strip().lower() != "sha256":
        raise _Rejected(
            401, "WEBHOOK_SIGNATURE_INVALID", "the signature header is not sha256=<hex>"
        )
    if not _any_match(keys, body, [digest]):
        raise _Rejected(401, "WEBHOOK_SIGNATURE_INVALID", "the signature does not match the body")


async def _read_body(request: Request, cap: int) -> bytes:
    too_large = _Rejected(413, "PAYLOAD_TOO_LARGE", f"the body is over {cap} bytes")
    length = request.headers.get("content-length", "")
    if length.isascii() and length.isdigit() and int(length) > cap:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _strict_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_event(body: bytes) -> dict[str, Any]:
    try:
        event = json.loads(body, parse_constant=_strict_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, huge integers
        raise _Rejected(400, "WEBHOOK_BODY_INVALID", f"the body is not valid JSON: {exc}") from None
    if not isinstance(event, dict):
        raise _Rejected(400, "WEBHOOK_BODY_INVALID", "the body is not a JSON object")
    return event


async def _verified_event(
    request: Request,
    keys: tuple[bytes, ...],
    scheme: Scheme,
    signature_header: str,
    tolerance: float | None,
    cap: int,
    clock: Callable[[], float],
) -> dict[str, Any]:
    """Steps 1-3 of :func:`signal_webhook`: the body read once under ``cap``, its signature
    verified, parsed as a JSON object (``_Rejected`` with the status otherwise)."""
    body = await _read_body(request, cap)
    signature = request.headers.get(signature_header)
    if not signature:
        raise _Rejected(
            401, "WEBHOOK_SIGNATURE_MISSING", f"the {signature_header} header is missing"
        )
    if scheme == "stripe":
        _verify_stripe(keys, signature, body, tolerance, clock())
    else:
        _verify_github(keys, signature, body)
    return _parse_event(body)


def signal_webhook(
    engine: EngineAPI,
    *,
    secret: str | bytes | Sequence[str | bytes],
    resolve: Resolver,
    scheme: Scheme = "stripe",
    header: str | None = None,
    tolerance: float | None = 300,
    max_body_bytes: int | None = None,
    delivery_header: str | None = _UNSET,
    not_found_status: int = 200,
    clock: Callable[[], float] = time.time,
) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint delivering signed provider events as signals: mount it with
    ``Route(path, signal_webhook(...), methods=["POST"])`` or ``app.add_route(...)`` (Starlette
    and FastAPI alike).

    Per request, in this order:

    1. The body is read once, capped at ``max_body_bytes`` (default: the engine's
       ``Settings.max_payload_bytes``): over it, **413** before anything is parsed.
    2. The HMAC-SHA256 signature in ``header`` is verified with ``secret`` (a list of secrets
       accepts any of them, for rotation), comparing in constant time. ``scheme="stripe"``:
       ``Stripe-Signature: t=<unix>,v1=<hex>`` over ``f"{t}.{body}"``, and ``t`` must be within
       ``tolerance`` seconds of ``clock()`` (``None`` disables that check, which allows replays
       of old deliveries); ``scheme="github"``: ``X-Hub-Signature-256: sha256=<hex>`` over the
       body (no timestamp: replays are made harmless by the idempotency key). Missing, malformed
       or wrong signatures and stale timestamps answer **401**.
    3. The body must be a JSON object, else **400**.
    4. ``resolve(event)`` (sync or async) returns ``(run_id, signal, payload, idempotency_key)``
       or ``None`` to ignore the event (**200** ``{"result": "ignored"}``). With no key, the
       ``delivery_header`` value is used (``X-GitHub-Delivery`` for GitHub, which redeliveries
       keep; none for Stripe, whose event id ``event["id"]`` you should return).
    5. ``engine.signal(...)``: ``delivered``, ``buffered``, ``duplicate`` (a redelivery) and
       ``closed`` (the run has ended) answer **200** ``{"result": kind, "run_id": ...}``: a
       retry cannot change them, so the provider must stop. ``not_found`` answers
       ``not_found_status`` (200 by default; 503 makes the provider retry, for apps that may
       receive an event before the transaction starting its run commits).

    A :class:`iterflow.FlowError` from ``resolve`` or ``engine.signal`` answers the status of
    :data:`STATUS_BY_CODE` with a problem body: **422** for an invalid payload (nothing is
    written), **503** when the database is unavailable (a retry can succeed), ...
    """
    if not 200 <= not_found_status <= 599:
        raise ValueError("not_found_status must be an HTTP status (200-599)")
    if not callable(resolve):
        raise TypeError("resolve must be a function: resolve(event) -> (run_id, signal, ...)")

    async def deliver(event: dict[str, Any], delivery: str | None) -> Response:
        resolved = resolve(event)
        if inspect.isawaitable(resolved):
            resolved = await resolved
        if resolved is None:
            return JSONResponse({"result": "ignored"})
        run_id, name, payload, idempotency_key = resolved
        key = delivery if idempotency_key is None else idempotency_key
        outcome = await engine.signal(run_id, name, payload, idempotency_key=key)
        body_out = {"result": outcome.kind, "run_id": str(run_id), "signal": name}
        if outcome.kind == "not_found":
            logger.warning("webhook signal %r for run %s: no such run", name, run_id)
            return JSONResponse(body_out, status_code=not_found_status)
        return JSONResponse(body_out)

    return _signed_endpoint(
        engine, secret, scheme, header, tolerance, max_body_bytes, delivery_header, clock, deliver
    )


#: What a publish ``resolve`` returns: ``(event name, payload, idempotency_key)``, or None to
#: ignore the event.
Publication: TypeAlias = tuple[str, Any, str | None] | None
#: ``resolve(event) -> Publication`` (sync or async) for :func:`publish_webhook`.
PublishResolver: TypeAlias = Callable[[dict[str, Any]], Publication | Awaitable[Publication]]


def publish_webhook(
    engine: EngineAPI,
    *,
    secret: str | bytes | Sequence[str | bytes],
    resolve: PublishResolver,
    scheme: Scheme = "stripe",
    header: str | None = None,
    tolerance: float | None = 300,
    max_body_bytes: int | None = None,
    delivery_header: str | None = _UNSET,
    clock: Callable[[], float] = time.time,
) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint publishing signed provider events (``engine.publish``): every flow
    subscribed to the event is started (``@engine.flow(..., on=[...])``). Mount it like
    :func:`signal_webhook`, which it follows step by step (body cap **413**, signature **401**,
    JSON object **400**), except that ``resolve(event)`` returns ``(event_name, payload,
    idempotency_key)`` (or ``None``: **200** ``{"result": "ignored"}``). With no key, the
    ``delivery_header`` value is used; pass the provider's event id, so a redelivery starts
    nothing new.

    **200** ``{"result": "published", "event": name, "runs": [{"flow", "run_id", "created"}]}``
    (``created`` false for a redelivery). A :class:`iterflow.FlowError` answers
    :data:`STATUS_BY_CODE`: **422** when a subscriber's input model rejects the payload
    (``EVENT_INPUT_INVALID``, nothing started), **409** for the same key with another payload,
    **503** when the database is unavailable.
    """
    if not callable(resolve):
        raise TypeError("resolve must be a function: resolve(event) -> (name, payload, key)")

    async def publish(event: dict[str, Any], delivery: str | None) -> Response:
        resolved = resolve(event)
        if inspect.isawaitable(resolved):
            resolved = await resolved
        if resolved is None:
            return JSONResponse({"result": "ignored"})
        name, payload, idempotency_key = resolved
        key = delivery if idempotency_key is None else idempotency_key
        published = await engine.publish(name, payload, idempotency_key=key)
        runs = [
            {"flow": r.flow, "run_id": str(r.run_id), "created": r.created} for r in published.runs
        ]
        return JSONResponse({"result": "published", "event": published.event, "runs": runs})

    return _signed_endpoint(
        engine, secret, scheme, header, tolerance, max_body_bytes, delivery_header, clock, publish
    )


def _signed_endpoint(
    engine: EngineAPI,
    secret: str | bytes | Sequence[str | bytes],
    scheme: Scheme,
    header: str | None,
    tolerance: float | None,
    max_body_bytes: int | None,
    delivery_header: str | None,
    clock: Callable[[], float],
    act: Callable[[dict[str, Any], str | None], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """The endpoint both webhook factories return: options checked now; per request the body
    capped, the signature verified, the JSON object parsed (413/401/400 with a problem body),
    then ``act(event, delivery id header value)``, a :class:`iterflow.FlowError` from it
    answered with :data:`STATUS_BY_CODE`."""
    keys = _secrets(secret)
    if scheme not in _DEFAULT_HEADER:
        raise ValueError(f"scheme must be 'stripe' or 'github', not {scheme!r}")
    if tolerance is not None and not tolerance > 0:
        raise ValueError("tolerance must be a positive number of seconds (or None)")
    if max_body_bytes is not None and (isinstance(max_body_bytes, bool) or max_body_bytes < 1):
        raise ValueError("max_body_bytes must be a positive integer")
    signature_header = header or _DEFAULT_HEADER[scheme]
    key_header = _DEFAULT_DELIVERY_HEADER[scheme] if delivery_header is _UNSET else delivery_header

    async def endpoint(request: Request) -> Response:
        try:
            cap = max_body_bytes or engine.settings.max_payload_bytes
            event = await _verified_event(
                request, keys, scheme, signature_header, tolerance, cap, clock
            )
        except _Rejected as rejected:
            logger.info("webhook delivery refused (%d): %s", rejected.status, rejected.detail)
            return _problem(rejected.status, rejected.code, rejected.detail)
        delivery = None if key_header is None else request.headers.get(key_header)
        try:
            return await act(event, delivery)
        except FlowError as error:
            return problem_response(error)

    return endpoint
