"""Events and signal-with-start on real PostgreSQL: ``publish`` starts every subscriber in one
transaction (or none), idempotently per (event key, flow), inside the caller's transaction with
``conn=``; ``signal_with_start`` starts one run under concurrent callers and every signal reaches
it. The runnable example of docs/flow-control.md is executed here too."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from iterflow import Engine, FlowContext, FlowError
from iterflow.contrib.starlette import Publication, iterflow_lifespan, publish_webhook
from iterflow.core.events import check_event_name, event_run_key
from iterflow.runtime.engine import FlowHandle
from iterflow.store.urls import asyncpg_url
from tests.integration.flows import counts, running, settle, sql

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec_events"


class SignedUp(BaseModel):
    user: str


class Onboard(BaseModel):
    user: str
    plan: str  # a stricter model: an event without a plan is refused for it


class Done(BaseModel):
    user: str
    by: str


def subscribers(engine: Engine) -> tuple[FlowHandle[SignedUp, Done], FlowHandle[Onboard, Done]]:
    @engine.flow("welcome", input=SignedUp, output=Done, on=["user.signed_up"])
    async def welcome(ctx: FlowContext, event: SignedUp) -> Done:
        return Done(user=event.user, by="welcome")

    @engine.flow("onboard", input=Onboard, output=Done, on=["user.signed_up", "user.upgraded"])
    async def onboard(ctx: FlowContext, event: Onboard) -> Done:
        return Done(user=event.user, by="onboard")

    return welcome, onboard


async def test_publish_starts_every_subscriber_once_per_event_key(fresh: Engine) -> None:
    subscribers(fresh)
    async with running(fresh) as eng:
        await _publish_and_check(eng)


async def _publish_and_check(eng: Engine) -> None:
    result = await eng.publish(
        "user.signed_up", {"user": "ann", "plan": "pro"}, idempotency_key="evt-1"
    )
    assert [(r.flow, r.created) for r in result.runs] == [("onboard", True), ("welcome", True)]
    assert result.created == 2
    outputs = {}
    for run in result.runs:
        detail = await settle(eng, run.run_id)
        outputs[run.flow] = detail.run.output
        assert detail.run.idempotency_key == event_run_key("user.signed_up", "evt-1")
        assert detail.run.meta["event"] == "user.signed_up"
    assert outputs == {
        "onboard": {"user": "ann", "by": "onboard"},
        "welcome": {"user": "ann", "by": "welcome"},
    }
    again = await eng.publish(
        "user.signed_up", {"user": "ann", "plan": "pro"}, idempotency_key="evt-1"
    )
    assert [(r.run_id, r.created) for r in again.runs] == [(r.run_id, False) for r in result.runs]
    with pytest.raises(FlowError) as conflict:
        await eng.publish("user.signed_up", {"user": "bob", "plan": "pro"}, idempotency_key="evt-1")
    assert conflict.value.error_code == "IDEMPOTENCY_CONFLICT"
    upgraded = await eng.publish("user.upgraded", {"user": "ann", "plan": "max"})
    assert [r.flow for r in upgraded.runs] == ["onboard"]
    nobody = await eng.publish("user.deleted", {"anything": 1})
    assert nobody.runs == () and nobody.created == 0
    assert len((await eng.list_runs()).runs) == 3


async def test_one_subscriber_rejecting_the_payload_refuses_the_whole_publish(
    engine: Engine, database_url: str
) -> None:
    subscribers(engine)
    before = counts(database_url)
    with pytest.raises(FlowError) as info:
        await engine.publish("user.signed_up", {"user": "ann"}, idempotency_key="evt-2")
    error = info.value
    assert error.error_code == "EVENT_INPUT_INVALID"
    assert "onboard@1" in error.message and error.details["flow"] == "onboard@1"
    assert error.details["event"] == "user.signed_up"
    assert counts(database_url) == before
    for bad, code in (
        ("user signed up", "INPUT_INVALID"),
        ("", "INPUT_INVALID"),
        (b"user.signed_up", "INPUT_INVALID"),
    ):
        with pytest.raises(FlowError) as refused:
            await engine.publish(bad, {"user": "ann", "plan": "x"})  # type: ignore[arg-type]
        assert refused.value.error_code == code
    for key in ("k\x00", "x" * 190, 5):  # 190: fits alone, not as "event:user.signed_up:..."
        with pytest.raises(FlowError) as bad_key:
            await engine.publish(
                "user.signed_up",
                {"user": "ann", "plan": "x"},
                idempotency_key=key,  # type: ignore[arg-type]
            )
        assert bad_key.value.error_code == "INPUT_INVALID"
    with pytest.raises(FlowError) as nan:
        await engine.publish("user.deleted", {"user": float("nan")})
    assert nan.value.error_code == "PAYLOAD_INVALID"
    assert counts(database_url) == before


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("order placed", "'order placed'"),
        ("commande.créée", "'commande.créée'"),
        ("a\ud800", "'a\\ud800'"),
        ("", "''"),
    ],
)
def test_an_invalid_event_name_is_shown_as_text_with_the_rule(name: str, shown: str) -> None:
    rule = "an event name is 1-200 ASCII letters, digits or _ . : -, e.g. 'order.placed'"
    with pytest.raises(FlowError) as published:
        check_event_name(name)
    assert published.value.message == f"invalid event name {shown}: {rule}"
    engine = Engine.in_memory()
    with pytest.raises(FlowError) as declared:

        @engine.flow("sub", input=SignedUp, output=Done, on=[name])
        async def sub(ctx: FlowContext, value: SignedUp) -> Done:
            return Done(user=value.user, by="sub")

    assert declared.value.error_code == "FLOW_DEFINITION_INVALID"
    assert declared.value.message == f"flow sub@1: invalid event name {shown}: {rule}"


async def test_publish_joins_the_callers_transaction(engine: Engine, database_url: str) -> None:
    subscribers(engine)
    before = counts(database_url)
    event = {"user": "ann", "plan": "pro"}
    app = create_async_engine(asyncpg_url(database_url))
    try:
        sql(database_url, "CREATE TABLE accounts (name text PRIMARY KEY)")
        async with app.connect() as conn:
            trans = await conn.begin()
            await conn.exec_driver_sql("INSERT INTO accounts VALUES ('ann')")
            published = await engine.publish("user.signed_up", event, conn=conn)
            assert published.created == 2
            await trans.rollback()
        assert counts(database_url) == before
        async with app.connect() as conn:
            trans = await conn.begin()
            await conn.exec_driver_sql("INSERT INTO accounts VALUES ('ann')")
            with pytest.raises(FlowError) as info:  # refused in a savepoint: the account stays
                await engine.publish("user.signed_up", {"user": "ann"}, conn=conn)
            assert info.value.error_code == "EVENT_INPUT_INVALID"
            committed = await engine.publish("user.signed_up", event, conn=conn)
            await trans.commit()
        assert sql(database_url, "SELECT name FROM accounts") == [("ann",)]
        after = counts(database_url)
        assert after["iterflow.runs"] == before["iterflow.runs"] + 2
        assert after["procrastinate_jobs"] == before["procrastinate_jobs"] + 2
        ids = {r.run_id for r in committed.runs}
        assert {r.id for r in (await engine.list_runs()).runs} == ids
    finally:
        await app.dispose()


async def test_an_idempotency_conflict_rolls_back_every_run_of_the_publish(
    engine: Engine, database_url: str
) -> None:
    _, onboard = subscribers(engine)
    key = event_run_key("user.signed_up", "evt-3")
    await onboard.start({"user": "zed", "plan": "pro"}, idempotency_key=key)
    before = counts(database_url)
    with pytest.raises(FlowError) as info:  # welcome's run would be new, onboard's conflicts
        await engine.publish(
            "user.signed_up", {"user": "ann", "plan": "pro"}, idempotency_key="evt-3"
        )
    assert info.value.error_code == "IDEMPOTENCY_CONFLICT"
    assert counts(database_url) == before


# -- signal_with_start ----------------------------------------------------------------------------


class Cart(BaseModel):
    cart: str


class Item(BaseModel):
    sku: str


class Order(BaseModel):
    skus: list[str]


def cart_flow(engine: Engine, items: int) -> FlowHandle[Cart, Order]:
    @engine.flow("cart", input=Cart, output=Order, signals={"add": Item})
    async def cart(ctx: FlowContext, inp: Cart) -> Order:
        skus = [(await ctx.signal("add", Item)).sku for _ in range(items)]
        return Order(skus=sorted(skus))

    return cart


async def test_signal_with_start_under_concurrent_callers_starts_one_run(
    database_url: str,
) -> None:
    callers = 12
    engines = [Engine(database_url, pool_size=6) for _ in range(2)]
    handles = [cart_flow(e, callers) for e in engines]
    for e in engines:
        await e.open()
    try:

        async def call(i: int) -> object:
            engine, handle = engines[i % 2], handles[i % 2]
            return await engine.signal_with_start(
                handle, Cart(cart="c1"), "add", Item(sku=f"s{i:02}"), idempotency_key="cart-c1"
            )

        results = await asyncio.gather(*(call(i) for i in range(callers)))
        runs = {r.run_id for r in results}  # type: ignore[attr-defined]
        assert len(runs) == 1
        assert sum(r.created for r in results) == 1  # type: ignore[attr-defined]
        assert {r.signal.kind for r in results} == {"buffered"}  # type: ignore[attr-defined]
        (run_id,) = runs
        assert sql(database_url, "SELECT count(*) FROM iterflow.runs") == [(1,)]
        await engines[0].listen(concurrency=1)
        order = await handles[0].result(run_id, timeout=30)
        assert order.skus == [f"s{i:02}" for i in range(callers)]
        closed = await engines[1].signal_with_start(
            "cart", Cart(cart="c1"), "add", {"sku": "late"}, idempotency_key="cart-c1"
        )
        assert (closed.run_id, closed.created, closed.signal.kind) == (run_id, False, "closed")
    finally:
        for e in engines:
            await e.close()


async def test_signal_with_start_refuses_bad_values_writing_nothing(
    engine: Engine, database_url: str
) -> None:
    handle = cart_flow(engine, 1)
    before = counts(database_url)
    ok: dict[str, Any] = {"flow": handle, "input": {"cart": "c"}, "signal": "add"}
    ok |= {"payload": {"sku": "a"}, "idempotency_key": "k"}
    cases: list[tuple[str, dict[str, Any]]] = [
        ("INPUT_INVALID", {"input": {}}),
        ("SIGNAL_PAYLOAD_INVALID", {"payload": {"sku": 1}}),
        ("SIGNAL_UNKNOWN", {"signal": "remove"}),
        ("INPUT_INVALID", {"idempotency_key": None}),
        ("INPUT_INVALID", {"idempotency_key": "k\x00"}),
        ("INPUT_INVALID", {"signal": "a\ud800"}),
        ("PAYLOAD_INVALID", {"input": {"cart": "c\x00"}}),
        ("PAYLOAD_INVALID", {"payload": {"sku": "\x00"}}),
        ("FLOW_UNKNOWN", {"flow": "nope"}),
        ("INPUT_INVALID", {"flow": 42}),
    ]
    for code, changed in cases:
        args = ok | changed
        with pytest.raises(FlowError) as info:
            await engine.signal_with_start(
                args.pop("flow"),
                args.pop("input"),
                args.pop("signal"),
                args.pop("payload"),
                **args,
            )
        assert info.value.error_code == code, (code, changed, info.value)
    assert counts(database_url) == before


async def test_the_docs_example_runs(database_url: str) -> None:
    spec = importlib.util.spec_from_file_location(
        "events_example", ROOT / "docs" / "examples" / "events.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    outcomes, thread = await module.main(database_url)
    assert sorted(outcomes) == ["contact created", "welcomed"]
    assert thread.messages == ["my order is late", "any news?"]


def test_the_docs_section_shows_the_example() -> None:
    text = (ROOT / "docs" / "flow-control.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert (ROOT / "docs" / "examples" / "events.py").read_text() in blocks


# -- the Starlette publish endpoint ---------------------------------------------------------------


def test_publish_webhook_starts_the_subscribers_of_a_signed_event(database_url: str) -> None:
    engine = Engine(database_url, pool_size=4)
    subscribers(engine)

    def resolve(event: dict[str, Any]) -> Publication:
        if event.get("type") != "signup":
            return None
        return "user.signed_up", event["data"], event["id"]

    hook = publish_webhook(engine, secret=SECRET, resolve=resolve, scheme="github")
    app = Starlette(
        lifespan=iterflow_lifespan(engine), routes=[Route("/events", hook, methods=["POST"])]
    )

    def post(event: dict[str, Any], secret: str = SECRET) -> Any:
        body = json.dumps(event).encode()
        digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        headers = {"X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}
        return client.post("/events", content=body, headers=headers)

    with TestClient(app) as client:
        event = {"id": "evt_1", "type": "signup", "data": {"user": "ann", "plan": "pro"}}
        first = post(event)
        assert first.status_code == 200, first.text
        body = first.json()
        assert (body["result"], body["event"]) == ("published", "user.signed_up")
        assert [(r["flow"], r["created"]) for r in body["runs"]] == [
            ("onboard", True),
            ("welcome", True),
        ]
        again = post(event).json()  # a redelivery starts nothing new
        assert [r["run_id"] for r in again["runs"]] == [r["run_id"] for r in body["runs"]]
        assert not any(r["created"] for r in again["runs"])
        rejected = post({"id": "evt_2", "type": "signup", "data": {"user": "bob"}})
        assert rejected.status_code == 422
        problem = rejected.json()
        assert problem["code"] == "EVENT_INPUT_INVALID" and "onboard@1" in problem["detail"]
        assert post({"id": "evt_3", "type": "other"}).json() == {"result": "ignored"}
        assert post(event, secret="wrong").status_code == 401
        assert client.portal is not None
        assert len(client.portal.call(engine.list_runs).runs) == 2
