"""iterflow.contrib.starlette on real PostgreSQL, through Starlette's TestClient: the lifespan,
the FlowError -> HTTP table (and its agreement with docs/errors.md), the signed webhook (Stripe
and GitHub schemes) and the docs/web.md recipe.

The app (and so the engine) runs on the TestClient's event loop, in its portal thread: the tests
are synchronous and reach the engine with ``client.portal.call``.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import importlib
import json
import re
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from iterflow import Engine, FlowContext, FlowError, FlowHandle, StartResult
from iterflow.contrib.starlette import (
    DEFAULT_STATUS,
    STATUS_BY_CODE,
    WebhookSignal,
    exception_handlers,
    install_error_handler,
    iterflow_lifespan,
    signal_webhook,
)
from iterflow.core.errors import registered_codes

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_test_secret"
CLOSED_PORT_URL = "postgresql://nobody@127.0.0.1:1/nowhere"


class Order(BaseModel):
    order_id: str


class Approval(BaseModel):
    approved_by: str


class Receipt(BaseModel):
    order_id: str
    approved_by: str


def order_engine(url: str, **settings: Any) -> tuple[Engine, FlowHandle[Order, Receipt]]:
    engine = Engine(url, pool_size=4, **settings)

    @engine.flow("order", input=Order, output=Receipt, signals={"approve": Approval})
    async def order_flow(ctx: FlowContext, order: Order) -> Receipt:
        approval = await ctx.signal("approve", Approval, timeout="1h")
        return Receipt(order_id=order.order_id, approved_by=approval.approved_by)

    return engine, order_flow


def resolve_approval(event: dict[str, Any]) -> WebhookSignal | None:
    """The events of these tests: ``{"id", "type", "run_id", "data"}``."""
    if event.get("type") != "approval":
        return None
    return WebhookSignal(event["run_id"], "approve", event["data"], event.get("id"))


def stripe_headers(body: bytes, *, secret: str = SECRET, t: int | None = None) -> dict[str, str]:
    stamp = int(time.time()) if t is None else t
    digest = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={stamp},v1={digest}", "Content-Type": "application/json"}


def github_headers(
    body: bytes, *, secret: str = SECRET, delivery: str | None = None
) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}
    if delivery is not None:
        headers["X-GitHub-Delivery"] = delivery
    return headers


def webhook_app(engine: Any, **options: Any) -> Starlette:
    options.setdefault("secret", SECRET)
    options.setdefault("resolve", resolve_approval)
    app = Starlette(
        lifespan=iterflow_lifespan(engine),
        routes=[Route("/hook", signal_webhook(engine, **options), methods=["POST"])],
    )
    install_error_handler(app)
    return app


def approval_event(run_id: uuid.UUID | str, data: Any, *, event_id: str = "evt_1") -> bytes:
    event = {"id": event_id, "type": "approval", "run_id": str(run_id), "data": data}
    return json.dumps(event).encode()


@pytest.fixture
def order_app(database_url: str) -> Iterator[tuple[TestClient, Engine, FlowHandle[Order, Receipt]]]:
    """A Stripe-scheme webhook app on a migrated database, no worker, and a waiting run's flow."""
    engine, handle = order_engine(database_url)
    with TestClient(webhook_app(engine)) as client:
        yield client, engine, handle


def start(
    client: TestClient, handle: FlowHandle[Order, Receipt], order_id: str = "A-1"
) -> uuid.UUID:
    assert client.portal is not None
    started: StartResult = client.portal.call(handle.start, Order(order_id=order_id))
    return started.run_id


def signals_of(client: TestClient, engine: Engine, run_id: uuid.UUID) -> list[Any]:
    assert client.portal is not None
    return list(client.portal.call(engine.status, run_id).signals)


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["code"] == code, body
    assert body["type"] == f"urn:iterflow:error:{code}"
    assert body["title"] and body["detail"]
    return body


# -- lifespan -----------------------------------------------------------------------------------


def _is_open(engine: Engine) -> bool:
    try:
        engine.store  # noqa: B018 - raises CONFIG_INVALID when the engine is not open
    except FlowError:
        return False
    return True


def test_lifespan_opens_the_engine_and_closes_it(database_url: str) -> None:
    engine, _ = order_engine(database_url)

    async def count(request: Request) -> Response:
        return JSONResponse({"runs": len((await engine.list_runs()).runs)})

    app = Starlette(lifespan=iterflow_lifespan(engine), routes=[Route("/count", count)])
    assert not _is_open(engine)
    with TestClient(app) as client:
        assert _is_open(engine)
        assert client.get("/count").json() == {"runs": 0}
    assert not _is_open(engine)


def test_lifespan_migrates_when_asked(empty_database_url: str) -> None:
    engine, handle = order_engine(empty_database_url)
    with TestClient(Starlette(lifespan=iterflow_lifespan(engine, migrate=True))) as client:
        run_id = start(client, handle)
        assert client.portal is not None
        assert client.portal.call(engine.status, run_id).run.status == "pending"


def test_lifespan_startup_fails_and_closes_on_a_missing_schema(empty_database_url: str) -> None:
    engine, _ = order_engine(empty_database_url)
    app = Starlette(lifespan=iterflow_lifespan(engine, worker=True))
    with pytest.raises(FlowError) as raised, TestClient(app):
        pass
    assert raised.value.error_code == "SCHEMA_MISSING"
    assert not _is_open(engine)


def test_lifespan_refuses_a_bad_concurrency() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        iterflow_lifespan(Engine.in_memory(), worker=True, concurrency=0)


@pytest.mark.parametrize("worker", [False, True])
def test_lifespan_worker_runs_the_flow_to_its_end_and_without_it_results_time_out(
    database_url: str, worker: bool
) -> None:
    """worker=True: a run started, then signalled through the webhook, finishes and its result
    is returned. Without the worker the same result request times out (504)."""
    engine, handle = order_engine(database_url)

    async def result(request: Request) -> Response:
        wait = float(request.query_params["wait"])
        done = await handle.result(request.path_params["run_id"], timeout=wait)
        return JSONResponse(done.model_dump())

    app = Starlette(
        lifespan=iterflow_lifespan(engine, worker=worker, concurrency=2),
        routes=[
            Route(
                "/hook",
                signal_webhook(engine, secret=SECRET, resolve=resolve_approval),
                methods=["POST"],
            ),
            Route("/runs/{run_id}/result", result),
        ],
        exception_handlers=exception_handlers(),
    )
    with TestClient(app) as client:
        run_id = start(client, handle)
        body = approval_event(run_id, {"approved_by": "ana"})
        delivered = client.post("/hook", content=body, headers=stripe_headers(body))
        assert delivered.status_code == 200, delivered.text
        assert delivered.json()["result"] in {"delivered", "buffered"}
        if worker:
            answer = client.get(f"/runs/{run_id}/result", params={"wait": 30})
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"order_id": "A-1", "approved_by": "ana"}
            assert client.portal is not None
            receipt = client.portal.call(functools.partial(handle.result, run_id, timeout=5))
            assert receipt == Receipt(order_id="A-1", approved_by="ana")
        else:
            answer = client.get(f"/runs/{run_id}/result", params={"wait": 0.2})
            assert_problem(answer, 504, "RESULT_TIMEOUT")


# -- FlowError -> HTTP --------------------------------------------------------------------------


def _raising_app(expose: bool = False) -> Starlette:
    async def fail(request: Request) -> Response:
        code = request.path_params["code"]
        raise FlowError.from_dict({"code": code, "message": f"message of {code}"})

    app = Starlette(routes=[Route("/fail/{code}", fail)])
    install_error_handler(app, expose_server_errors=expose)
    return app


@pytest.mark.parametrize(
    "code",
    [*STATUS_BY_CODE, "CONFIG_INVALID", "SCHEMA_CONFLICT", "STEP_FAILED", "PAYMENT_DECLINED"],
)
def test_every_code_answers_its_status_with_a_problem_body(code: str) -> None:
    status = STATUS_BY_CODE.get(code, DEFAULT_STATUS)
    client = TestClient(_raising_app(), raise_server_exceptions=False)
    body = assert_problem(client.get(f"/fail/{code}"), status, code)
    if status < 500:
        assert body["detail"] == f"message of {code}"
    else:  # a driver message may name hosts: not shown to the caller unless asked
        assert code not in body["detail"]
        exposed = TestClient(_raising_app(expose=True), raise_server_exceptions=False)
        assert exposed.get(f"/fail/{code}").json()["detail"] == f"message of {code}"


def test_statuses_from_a_real_engine(database_url: str) -> None:
    engine, handle = order_engine(database_url, max_payload_bytes=200)

    async def create(request: Request) -> Response:
        return JSONResponse({"run_id": str((await handle.start(await request.json())).run_id)})

    async def show(request: Request) -> Response:
        return JSONResponse(
            {"status": (await engine.status(request.path_params["run_id"])).run.status}
        )

    app = Starlette(
        lifespan=iterflow_lifespan(engine),
        routes=[Route("/runs", create, methods=["POST"]), Route("/runs/{run_id}", show)],
    )
    install_error_handler(app)
    with TestClient(app) as client:
        assert_problem(client.post("/runs", json={"order": 1}), 422, "INPUT_INVALID")
        assert_problem(client.post("/runs", json={"order_id": "x" * 500}), 413, "PAYLOAD_TOO_LARGE")
        assert_problem(client.post("/runs", json={"order_id": "\u0000"}), 422, "PAYLOAD_INVALID")
        assert_problem(client.get(f"/runs/{uuid.uuid4()}"), 404, "RUN_NOT_FOUND")
        assert_problem(client.get("/runs/not-a-uuid"), 422, "INPUT_INVALID")
        run_id = client.post("/runs", json={"order_id": "A-1"}).json()["run_id"]
        assert client.get(f"/runs/{run_id}").json() == {"status": "pending"}


def test_schema_missing_answers_503(empty_database_url: str) -> None:
    engine, _ = order_engine(empty_database_url)

    async def show(request: Request) -> Response:
        await engine.status(uuid.uuid4())
        raise AssertionError("unreachable")

    app = Starlette(lifespan=iterflow_lifespan(engine), routes=[Route("/show", show)])
    install_error_handler(app)
    with TestClient(app) as client:
        assert_problem(client.get("/show"), 503, "SCHEMA_MISSING")


def _webhook_answers(page: str) -> dict[str, str]:
    """Every code of docs/errors.md with its *webhook answer* cell ('' where the table has no
    such column: the failed-run table)."""
    answers = {}
    for line in page.splitlines():
        match = re.match(r"^\| `([A-Z][A-Z0-9_]+)` \|(.*)$", line)
        if match:
            cells = [c.strip() for c in match.group(2).strip().strip("|").split("|")]
            answers[match.group(1)] = cells[3] if len(cells) >= 4 else ""
    return answers


def test_the_status_table_is_docs_errors_webhook_column() -> None:
    """One table: docs/errors.md's *webhook answer* column and STATUS_BY_CODE agree."""
    page = (ROOT / "docs" / "errors.md").read_text()
    answers = _webhook_answers(page)
    assert set(answers) == set(registered_codes())
    for code, cell in answers.items():
        # the cell's first status is the answer ("409 (and alert)", "504, or catch it ...")
        documented = int(re.findall(r"\b[1-5]\d\d\b", cell)[0]) if cell else DEFAULT_STATUS
        assert STATUS_BY_CODE.get(code, DEFAULT_STATUS) == documented, (code, cell)
    assert set(STATUS_BY_CODE) <= set(registered_codes())
    # the page's own example table says the same thing
    block = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)[0]
    example = ModuleType("errors_doc_example")
    exec(compile(block, "docs/errors.md", "exec"), example.__dict__)
    assert example.WEBHOOK_STATUS.items() <= STATUS_BY_CODE.items()


# -- the webhook: signatures --------------------------------------------------------------------


def test_stripe_signature_ok_then_replayed_delivery_is_a_duplicate(order_app: Any) -> None:
    client, engine, handle = order_app
    run_id = start(client, handle)
    body = approval_event(run_id, {"approved_by": "ana"})
    headers = stripe_headers(body)
    first = client.post("/hook", content=body, headers=headers)
    assert first.status_code == 200 and first.json() == {
        "result": "buffered",
        "run_id": str(run_id),
        "signal": "approve",
    }
    again = client.post("/hook", content=body, headers=headers)  # the provider retries
    assert again.status_code == 200 and again.json()["result"] == "duplicate"
    assert len(signals_of(client, engine, run_id)) == 1


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "WEBHOOK_SIGNATURE_MISSING"),
        ({"Stripe-Signature": ""}, "WEBHOOK_SIGNATURE_MISSING"),
        ({"Stripe-Signature": "garbage"}, "WEBHOOK_SIGNATURE_INVALID"),
        ({"Stripe-Signature": "t=abc,v1=00"}, "WEBHOOK_SIGNATURE_INVALID"),
        ({"Stripe-Signature": f"t={int(time.time())}"}, "WEBHOOK_SIGNATURE_INVALID"),
        ({"Stripe-Signature": f"t={int(time.time())},v1={'0' * 64}"}, "WEBHOOK_SIGNATURE_INVALID"),
        # a non-ASCII signature (sent as Latin-1 bytes, as a client may)
        (
            {"Stripe-Signature": f"t={int(time.time())},v1=é".encode("latin-1")},
            "WEBHOOK_SIGNATURE_INVALID",
        ),
    ],
)
def test_stripe_bad_or_missing_signature_is_401_and_writes_nothing(
    order_app: Any, headers: dict[str, Any], code: str
) -> None:
    client, engine, handle = order_app
    run_id = start(client, handle)
    body = approval_event(run_id, {"approved_by": "mallory"})
    assert_problem(client.post("/hook", content=body, headers=headers), 401, code)
    assert signals_of(client, engine, run_id) == []


def test_stripe_signature_of_another_body_secret_or_timestamp_is_401(order_app: Any) -> None:
    client, engine, handle = order_app
    run_id = start(client, handle)
    body = approval_event(run_id, {"approved_by": "ana"})
    forged = approval_event(run_id, {"approved_by": "mallory"})
    headers = stripe_headers(body)
    for content, sent in (
        (forged, headers),  # the signature of another body
        (body, stripe_headers(body, secret="whsec_other")),  # another secret
        (body, {"Stripe-Signature": headers["Stripe-Signature"].replace("t=", "t=1", 1)}),
    ):
        assert_problem(
            client.post("/hook", content=content, headers=sent), 401, "WEBHOOK_SIGNATURE_INVALID"
        )
    assert signals_of(client, engine, run_id) == []


def test_stripe_stale_or_future_timestamp_is_401(order_app: Any) -> None:
    client, engine, handle = order_app
    run_id = start(client, handle)
    body = approval_event(run_id, {"approved_by": "ana"})
    for t in (int(time.time()) - 301 - 5, int(time.time()) + 301 + 5):
        sent = client.post("/hook", content=body, headers=stripe_headers(body, t=t))
        assert_problem(sent, 401, "WEBHOOK_TIMESTAMP_STALE")
    assert signals_of(client, engine, run_id) == []
    inside = stripe_headers(body, t=int(time.time()) - 200)  # within the 300 s tolerance
    assert client.post("/hook", content=body, headers=inside).status_code == 200


def test_stripe_tolerance_off_or_against_an_injected_clock(database_url: str) -> None:
    body = b'{"type": "customer.created"}'
    old = stripe_headers(body, t=1_000_000_000)  # 2001
    for options, status in (
        ({}, 401),
        ({"tolerance": None}, 200),
        ({"clock": lambda: 1_000_000_100.0}, 200),
        ({"clock": lambda: 1_000_000_400.0}, 401),
    ):
        engine, _ = order_engine(database_url)
        with TestClient(webhook_app(engine, **options)) as client:
            assert client.post("/hook", content=body, headers=old).status_code == status, options


def test_stripe_several_v1_signatures_and_rotated_secrets(database_url: str) -> None:
    engine, handle = order_engine(database_url)
    app = webhook_app(engine, secret=["whsec_new", SECRET])
    with TestClient(app) as client:
        run_id = start(client, handle)
        body = approval_event(run_id, {"approved_by": "ana"})
        stamp = int(time.time())
        old = stripe_headers(body, t=stamp)["Stripe-Signature"]
        header = f"{old},v1={'f' * 64},v0=ignored"
        assert (
            client.post("/hook", content=body, headers={"Stripe-Signature": header}).status_code
            == 200
        )
        other = approval_event(run_id, {"approved_by": "bob"}, event_id="evt_2")
        assert (
            client.post(
                "/hook", content=other, headers=stripe_headers(other, secret="whsec_new")
            ).status_code
            == 200
        )
        assert len(signals_of(client, engine, run_id)) == 2


def test_github_signature_ok_bad_missing_and_delivery_id_as_key(database_url: str) -> None:
    engine, handle = order_engine(database_url)

    def resolve(event: dict[str, Any]) -> tuple[str, str, Any, None]:
        return event["run_id"], "approve", event["data"], None  # the key: X-GitHub-Delivery

    with TestClient(webhook_app(engine, scheme="github", resolve=resolve)) as client:
        run_id = start(client, handle)
        body = json.dumps({"run_id": str(run_id), "data": {"approved_by": "octocat"}}).encode()
        ok = client.post("/hook", content=body, headers=github_headers(body, delivery="d-1"))
        assert ok.status_code == 200 and ok.json()["result"] == "buffered"
        redelivered = client.post(
            "/hook", content=body, headers=github_headers(body, delivery="d-1")
        )
        assert redelivered.status_code == 200 and redelivered.json()["result"] == "duplicate"
        forged = body.replace(b"octocat", b"mallory")
        for content, headers, code in (
            (forged, github_headers(body, delivery="d-2"), "WEBHOOK_SIGNATURE_INVALID"),
            (
                body,
                github_headers(body, secret="other", delivery="d-3"),
                "WEBHOOK_SIGNATURE_INVALID",
            ),
            (body, {"X-Hub-Signature-256": "sha1=" + "0" * 40}, "WEBHOOK_SIGNATURE_INVALID"),
            (body, {"X-Hub-Signature-256": "0" * 64}, "WEBHOOK_SIGNATURE_INVALID"),
            (body, {"Stripe-Signature": "t=1,v1=00"}, "WEBHOOK_SIGNATURE_MISSING"),
        ):
            assert_problem(client.post("/hook", content=content, headers=headers), 401, code)
        signals = signals_of(client, engine, run_id)
        assert [(s.idempotency_key, s.payload) for s in signals] == [
            ("d-1", {"approved_by": "octocat"})
        ]


# -- the webhook: bodies, payloads and outcomes ---------------------------------------------------


def test_invalid_payload_is_422_and_writes_nothing(order_app: Any) -> None:
    client, engine, handle = order_app
    run_id = start(client, handle)
    for data, code in (
        ({"approved_by": 42}, "SIGNAL_PAYLOAD_INVALID"),
        ({}, "SIGNAL_PAYLOAD_INVALID"),
        ({"approved_by": "a\u0000b"}, "PAYLOAD_INVALID"),  # valid for the model, not storable
    ):
        body = approval_event(run_id, data)
        assert_problem(client.post("/hook", content=body, headers=stripe_headers(body)), 422, code)
    body = json.dumps({"id": "e", "type": "approval", "run_id": "not-a-uuid", "data": {}}).encode()
    assert_problem(
        client.post("/hook", content=body, headers=stripe_headers(body)), 422, "INPUT_INVALID"
    )
    assert signals_of(client, engine, run_id) == []


@pytest.mark.parametrize(
    "body", [b"{", b"[1, 2]", b'"text"', b'{"a": NaN}', b"\xff\xfe{", b"[" * 100_000, b""]
)
def test_a_body_that_is_not_a_json_object_is_400(order_app: Any, body: bytes) -> None:
    client, _, _ = order_app
    answer = client.post("/hook", content=body, headers=stripe_headers(body))
    assert_problem(answer, 400, "WEBHOOK_BODY_INVALID")


def test_oversize_body_is_413_before_parsing_or_verifying(database_url: str) -> None:
    engine, _ = order_engine(database_url, max_payload_bytes=1_000)
    calls: list[object] = []

    def resolve(event: dict[str, Any]) -> None:
        calls.append(event)

    with TestClient(webhook_app(engine, resolve=resolve)) as client:
        body = json.dumps({"pad": "x" * 2_000}).encode()
        # with a Content-Length, and streamed without one (chunked)
        assert_problem(
            client.post("/hook", content=body, headers=stripe_headers(body)),
            413,
            "PAYLOAD_TOO_LARGE",
        )
        streamed = client.post(
            "/hook", content=iter([body[:600], body[600:]]), headers=stripe_headers(body)
        )
        assert_problem(streamed, 413, "PAYLOAD_TOO_LARGE")
        small = json.dumps({"pad": "x"}).encode()
        assert client.post("/hook", content=small, headers=stripe_headers(small)).json() == {
            "result": "ignored"
        }
    assert calls == [{"pad": "x"}]


def test_ignored_not_found_closed_and_async_resolve(database_url: str) -> None:
    engine, handle = order_engine(database_url)

    async def resolve(event: dict[str, Any]) -> WebhookSignal | None:
        return resolve_approval(event)

    with TestClient(webhook_app(engine, resolve=resolve)) as client:
        ignored = json.dumps({"type": "customer.created"}).encode()
        answer = client.post("/hook", content=ignored, headers=stripe_headers(ignored))
        assert answer.status_code == 200 and answer.json() == {"result": "ignored"}
        missing = approval_event(uuid.uuid4(), {"approved_by": "ana"})
        answer = client.post("/hook", content=missing, headers=stripe_headers(missing))
        assert answer.status_code == 200 and answer.json()["result"] == "not_found"
        run_id = start(client, handle)
        assert client.portal is not None
        client.portal.call(functools.partial(engine.cancel, run_id, reason="test"))
        closed = approval_event(run_id, {"approved_by": "ana"})
        answer = client.post("/hook", content=closed, headers=stripe_headers(closed))
        assert answer.status_code == 200 and answer.json()["result"] == "closed"


class ApprovalV2(BaseModel):
    approved_by: str
    reason: str


async def start_a_v2_run(url: str) -> uuid.UUID:
    """A run of ``order`` version 2, started by a newer deployment of the workers' code."""
    deployed = Engine(url, pool_size=2)

    @deployed.flow("order", version=2, input=Order, output=str, signals={"approve": ApprovalV2})
    async def order_v2(ctx: FlowContext, order: Order) -> str:
        return (await ctx.signal("approve", ApprovalV2)).reason

    async with deployed:
        return (await order_v2.start(Order(order_id="V-2"))).run_id


@pytest.mark.parametrize("web_tier", ["registers v1", "registers nothing"])
def test_a_run_of_a_version_the_web_tier_does_not_register(
    database_url: str, web_tier: str
) -> None:
    """The web tier's engine registers only v1 of the flow (or no flow) and the run is v2: the
    payload is validated against v1's model (422, nothing stored), or with no version at all
    stored for the worker to validate; neither answers ``FLOW_UNKNOWN``."""
    v1 = web_tier == "registers v1"
    web = order_engine(database_url)[0] if v1 else Engine(database_url, pool_size=2)
    with TestClient(webhook_app(web)) as client:
        assert client.portal is not None
        run_id = client.portal.call(start_a_v2_run, database_url)
        unapproved = approval_event(run_id, {"reason": "v2 only"}, event_id="evt_1")
        answer = client.post("/hook", content=unapproved, headers=stripe_headers(unapproved))
        if v1:
            assert_problem(answer, 422, "SIGNAL_PAYLOAD_INVALID")
            assert signals_of(client, web, run_id) == []
        else:  # nothing to validate it against here: stored, the worker will refuse it
            assert answer.status_code == 200 and answer.json()["result"] == "buffered"
        good = approval_event(run_id, {"approved_by": "ana", "reason": "ok"}, event_id="evt_2")
        answer = client.post("/hook", content=good, headers=stripe_headers(good))
        assert answer.status_code == 200 and answer.json()["result"] == "buffered"
        stored = {s.idempotency_key: s.payload for s in signals_of(client, web, run_id)}
        assert stored["evt_2"] == {"approved_by": "ana", "reason": "ok"}  # v2's field kept


def test_not_found_status_can_ask_the_provider_to_retry(database_url: str) -> None:
    engine, _ = order_engine(database_url)
    with TestClient(webhook_app(engine, not_found_status=503)) as client:
        body = approval_event(uuid.uuid4(), {"approved_by": "ana"})
        answer = client.post("/hook", content=body, headers=stripe_headers(body))
        assert answer.status_code == 503 and answer.json()["result"] == "not_found"


def test_signal_limit_is_409(database_url: str) -> None:
    engine, handle = order_engine(database_url, max_signals_per_run=1)
    with TestClient(webhook_app(engine)) as client:
        run_id = start(client, handle)
        for n, status in ((1, 200), (2, 409)):
            body = approval_event(run_id, {"approved_by": "ana"}, event_id=f"evt_{n}")
            answer = client.post("/hook", content=body, headers=stripe_headers(body))
            if status == 200:
                assert answer.status_code == 200
            else:
                assert_problem(answer, 409, "SIGNAL_LIMIT_EXCEEDED")


def test_database_down_is_503_so_the_provider_retries() -> None:
    engine, _ = order_engine(CLOSED_PORT_URL)
    with TestClient(webhook_app(engine)) as client:
        body = approval_event(uuid.uuid4(), {"approved_by": "ana"})
        problem = assert_problem(
            client.post("/hook", content=body, headers=stripe_headers(body)),
            503,
            "DATABASE_UNAVAILABLE",
        )
        assert "127.0.0.1" not in problem["detail"]  # the driver's message stays in the logs


def test_a_flow_error_raised_by_resolve_is_mapped(database_url: str) -> None:
    engine, _ = order_engine(database_url)

    def resolve(event: dict[str, Any]) -> None:
        raise FlowError.from_dict({"code": "DATABASE_UNAVAILABLE", "message": "lookup failed"})

    with TestClient(webhook_app(engine, resolve=resolve)) as client:
        body = b"{}"
        assert_problem(
            client.post("/hook", content=body, headers=stripe_headers(body)),
            503,
            "DATABASE_UNAVAILABLE",
        )


@pytest.mark.parametrize(
    "options",
    [
        {"secret": ""},
        {"secret": []},
        {"secret": [SECRET, ""]},
        {"scheme": "paypal"},
        {"tolerance": 0},
        {"max_body_bytes": 0},
        {"not_found_status": 42},
        {"resolve": "not callable"},
    ],
)
def test_the_factory_refuses_bad_options(options: dict[str, Any]) -> None:
    arguments: dict[str, Any] = {"secret": SECRET, "resolve": resolve_approval, **options}
    with pytest.raises((ValueError, TypeError)):
        signal_webhook(Engine.in_memory(), **arguments)


# -- docs/web.md ------------------------------------------------------------------------------


#: docs/web.md's recipe (Starlette), and the same on FastAPI (it imports ``web_app``).
RECIPES = ("web_app", "web_fastapi")


def web_recipe(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A fresh copy of ``docs/examples/<name>.py`` (and of the ``web_app`` it imports)."""
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", SECRET)
    monkeypatch.syspath_prepend(str(ROOT / "docs" / "examples"))
    for module in RECIPES:
        sys.modules.pop(module, None)  # each test configures an engine of its own
    return importlib.import_module(name)


def test_web_doc_shows_the_example() -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "web.md").read_text(), re.DOTALL)
    for name in RECIPES:
        assert (ROOT / "docs" / "examples" / f"{name}.py").read_text() in blocks, name


@pytest.mark.parametrize("recipe", RECIPES)
def test_web_example_runs(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch, recipe: str
) -> None:
    """The recipe end to end: migrate + worker in the lifespan, a run started in the app's own
    transaction, its signal delivered by a signed Stripe event, the receipt returned."""
    example = web_recipe(recipe, monkeypatch)
    example.engine.configure(database_url=empty_database_url)
    with TestClient(example.app) as client:
        assert client.put("/orders/A-1", json={"amount_cents": "lots"}).status_code == 422
        created = client.put("/orders/A-1", json={"amount_cents": 4200})
        assert created.status_code == 200 and created.json()["created"] is True
        again = client.put("/orders/A-1", json={"amount_cents": 4200}).json()
        assert again == {"run_id": created.json()["run_id"], "created": False}
        assert_problem(client.get("/orders/A-1/receipt"), 504, "RESULT_TIMEOUT")
        assert client.get("/orders/B-2/receipt").status_code == 404
        event = {
            "id": "evt_1",
            "type": "payment_intent.succeeded",
            "data": {"object": {"id": "pi_1", "metadata": {"order_id": "A-1"}}},
        }
        body = json.dumps(event).encode()
        paid = client.post("/webhooks/stripe", content=body, headers=stripe_headers(body))
        assert paid.status_code == 200 and paid.json()["result"] in {"delivered", "buffered"}
        receipt = client.get("/orders/A-1/receipt", params={"wait": "30"})
        assert receipt.json() == {"order_id": "A-1", "payment_intent": "pi_1"}
        assert client.portal is not None
        run_id = created.json()["run_id"]
        out = client.portal.call(functools.partial(example.checkout.result, run_id, timeout=5))
        assert out.payment_intent == "pi_1"
