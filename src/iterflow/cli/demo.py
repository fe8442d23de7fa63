"""``flowctl demo``: an order flow on embedded PostgreSQL, with a signal sent over HTTP the way a
payment provider's webhook would send it: a signed event posted to iterflow's
:func:`~iterflow.contrib.starlette.signal_webhook` endpoint, served by uvicorn (both come with
``iterflow[web]``).

The demo starts its own embedded server (in ``--data-dir``, default ``./.iterflow``) and stops it
at the end; ``$ITERFLOW_DATABASE_URL`` and ``$DATABASE_URL`` are ignored, so it never writes into
the database an application uses. Only an explicit ``flowctl --database-url URL demo`` runs it
there (migrating it). With ``--json`` the narrative goes to stderr and stdout gets one document.

flowctl imports this module to build its parser, so the demo's own imports (pydantic, the
engine, asyncio, starlette, uvicorn, urllib) happen inside the functions that run it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iterflow.cli.common import Subparsers, echo, embedded_data_dir, print_json, wants_json

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

    import uvicorn

    from iterflow.runtime.context import FlowContext
    from iterflow.runtime.engine import Engine, FlowHandle

__all__ = ["build_engine", "register", "run_demo"]


def register(subparsers: Subparsers) -> None:
    """Add ``demo``."""
    demo = subparsers.add_parser(
        "demo",
        help="run the order demo on its own embedded PostgreSQL (in --data-dir; "
        "$DATABASE_URL is ignored, only an explicit --database-url is used)",
    )
    demo.add_argument("--sleep", type=float, default=2.0, help="durable sleep in seconds")
    demo.set_defaults(func=_demo)


async def _demo(args: argparse.Namespace) -> None:
    summary = await run_demo(
        args.database_url,
        pgdata=embedded_data_dir(args),
        sleep_seconds=args.sleep,
        as_json=wants_json(args),
    )
    if wants_json(args):
        print_json(summary)


def build_engine(url: str | None, sleep_seconds: float) -> tuple[Engine, FlowHandle[Any, Any]]:
    """The demo engine and its order flow handle: input ``{"order_id", "amount_cents"}``, output
    a ``Receipt``."""
    from datetime import timedelta

    from pydantic import BaseModel

    from iterflow.runtime.engine import Engine

    class OrderIn(BaseModel):
        """The demo order."""

        order_id: str
        amount_cents: int

    class PaymentConfirmed(BaseModel):
        """What the (simulated) payment provider posts to the webhook."""

        payment_id: str
        status: str

    class Receipt(BaseModel):
        """The demo's output."""

        order_id: str
        reserved: bool
        payment_id: str
        shipped: bool

    engine = Engine(url)

    @engine.flow(
        "order", version=1, input=OrderIn, output=Receipt, signals={"payment": PaymentConfirmed}
    )
    async def order(ctx: FlowContext, order: OrderIn) -> Receipt:
        def reserve_stock(order_id: str) -> bool:
            return True

        reserved = await ctx.step("reserve", reserve_stock, order.order_id)
        await ctx.sleep(timedelta(seconds=sleep_seconds), label="fraud-cool-off")
        payment = await ctx.signal("payment", PaymentConfirmed, timeout="10m")

        async def ship(order_id: str) -> bool:
            return payment.status == "paid"

        shipped = await ctx.step("ship", ship, order.order_id)
        return Receipt(
            order_id=order.order_id,
            reserved=reserved,
            payment_id=payment.payment_id,
            shipped=shipped,
        )

    return engine, order


#: The demo's webhook secret (a real app reads its provider's secret from the environment).
DEMO_SECRET = "whsec_demo"


async def _webhook_server(engine: Engine) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    """The payment provider's webhook endpoint, ``POST /webhooks/payments``: iterflow's
    :func:`~iterflow.contrib.starlette.signal_webhook` (Stripe-style signature, the event id as
    the idempotency key) served by uvicorn on 127.0.0.1 (a random port)."""
    import asyncio

    try:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.routing import Route

        from iterflow.contrib.starlette import WebhookSignal, signal_webhook
    except ImportError as exc:
        raise SystemExit(
            f"flowctl demo serves its webhook with iterflow[web] ({exc}): "
            "pip install 'iterflow[web]'"
        ) from exc

    def resolve(event: dict[str, Any]) -> WebhookSignal | None:
        if event.get("type") != "payment.succeeded":
            return None
        return WebhookSignal(event["run_id"], "payment", event["data"], event["id"])

    endpoint = signal_webhook(engine, secret=DEMO_SECRET, resolve=resolve, scheme="stripe")
    app = Starlette(routes=[Route("/webhooks/payments", endpoint, methods=["POST"])])
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="off", log_config=None, log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name="demo-webhook")
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("the demo's webhook server stopped before it started")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, task, port


def _post(url: str, event: dict[str, Any]) -> str:
    """POST ``event`` signed as the provider would (``Stripe-Signature: t=...,v1=<HMAC>``)."""
    import hashlib
    import hmac
    import urllib.request

    body = json.dumps(event).encode()
    stamp = str(int(time.time()))
    digest = hmac.new(DEMO_SECRET.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
    request = urllib.request.Request(
        url,
        data=body,
        headers={
            "Content-Type": "application/json",
            "Stripe-Signature": f"t={stamp},v1={digest.hexdigest()}",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.loads(response.read())["result"])


async def _order(
    engine: Engine, handle: FlowHandle[Any, Any], say: Callable[..., None]
) -> tuple[uuid.UUID, Any]:
    """Start one order (twice: the idempotency key), post its payment webhook (twice: a
    redelivery) once it waits, and return its run id and receipt."""
    import asyncio

    from iterflow.core.models import RunStatus

    order = {"order_id": f"A-{uuid.uuid4().hex[:6]}", "amount_cents": 4200}
    key = f"order-{order['order_id']}"
    started = await handle.start(order, idempotency_key=key)
    again_start = await handle.start(order, idempotency_key=key)
    run_id = started.run_id
    say(
        f"started run {run_id} (created={started.created}); the same idempotency key "
        f"again returns {again_start.run_id == run_id and not again_start.created}"
    )
    server, serving, port = await _webhook_server(engine)
    try:
        deadline = time.monotonic() + 30
        while (await engine.status(run_id)).run.status is not RunStatus.AWAITING_SIGNAL:
            if time.monotonic() > deadline:
                raise TimeoutError("the demo run never reached its payment wait")
            await asyncio.sleep(0.1)
        say("run is waiting for the payment webhook; posting it…")
        hook = f"http://127.0.0.1:{port}/webhooks/payments"
        event = {
            "id": "evt_1",
            "type": "payment.succeeded",
            "run_id": str(run_id),
            "data": {"payment_id": "pay_123", "status": "paid"},
        }
        first = await asyncio.to_thread(_post, hook, event)
        again = await asyncio.to_thread(_post, hook, event)  # a provider's redelivery
        say(f"webhook answered {first!r}; its retry answered {again!r}")
        receipt = await handle.result(run_id, timeout=30)
        say(f"result: {receipt!r}")
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await serving
    return run_id, receipt


async def run_demo(
    url: str | None,
    *,
    pgdata: Path = Path(".iterflow/pgdata"),
    sleep_seconds: float = 2.0,
    as_json: bool = False,
) -> dict[str, Any]:
    """Migrate, run one order end to end, print its timeline, shut everything down, and return
    a summary (``{"run_id", "output", "database", "seconds"}``). With ``url`` None (the
    environment's URLs are not read) the demo starts an embedded server in ``pgdata`` and stops
    it at the end. ``as_json`` prints the narrative on stderr (stdout is the caller's)."""
    import asyncio

    from iterflow.core.timeline import render_timeline
    from iterflow.store.embedded import EmbeddedPostgres
    from iterflow.store.urls import redacted

    def say(*lines: str) -> None:
        echo(*lines, file=sys.stderr if as_json else None)

    t0 = time.monotonic()
    embedded: EmbeddedPostgres | None = None
    if url is None:
        embedded = EmbeddedPostgres(pgdata)
        url = await asyncio.to_thread(embedded.start)
        where = f"embedded PostgreSQL in {embedded.data_dir}"
    else:
        where = redacted(url)
    try:
        engine, handle = build_engine(url, sleep_seconds)
        async with engine:
            say(f"database ready: {where} ({time.monotonic() - t0:.1f}s); migrating…")
            await engine.migrate()
            await engine.listen(concurrency=2)
            run_id, receipt = await _order(engine, handle, say)
            say(*render_timeline(await engine.status(run_id)).rstrip("\n").split("\n"))
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
    seconds = round(time.monotonic() - t0, 1)
    if embedded is not None:
        say(f"demo finished in {seconds:.1f}s; embedded PostgreSQL stopped ({embedded.data_dir})")
    else:
        say(f"demo finished in {seconds:.1f}s; its run stays in {where}")
    return {
        "run_id": str(run_id),
        "output": receipt.model_dump(mode="json"),
        "database": "embedded" if embedded is not None else where,
        "seconds": seconds,
    }
