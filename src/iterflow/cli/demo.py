"""``flowctl demo``: an order flow on embedded PostgreSQL, with a signal sent over HTTP the way a
payment provider's webhook would send it.

flowctl imports this module to build its parser, so the demo's own imports (pydantic, the
engine, asyncio, urllib) happen inside the functions that run it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
import uuid
from typing import TYPE_CHECKING, Any

from iterflow.cli.common import Subparsers, database_url

if TYPE_CHECKING:
    import asyncio

    from iterflow.runtime.context import FlowContext
    from iterflow.runtime.engine import Engine, FlowHandle

__all__ = ["build_engine", "register", "run_demo"]


def register(subparsers: Subparsers) -> None:
    """Add ``demo``."""
    demo = subparsers.add_parser("demo", help="run the order demo on embedded PostgreSQL")
    demo.add_argument("--sleep", type=float, default=2.0, help="durable sleep in seconds")
    demo.set_defaults(func=_demo)


async def _demo(args: argparse.Namespace) -> None:
    await run_demo(database_url(args), sleep_seconds=args.sleep)


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


async def _webhook_server(engine: Engine) -> tuple[asyncio.Server, int]:
    """A tiny HTTP endpoint: POST /runs/<id>/signals/<name> with a JSON body."""
    import asyncio

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode().split("\r\n")
            _, path, _ = request_line.split(" ", 2)
            headers = {
                k.strip().lower(): v.strip()
                for k, v in (h.split(":", 1) for h in header_lines if ":" in h)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            _, _, run_id, _, name = path.split("/")
            result = await engine.signal(
                run_id, name, json.loads(body), idempotency_key=headers.get("idempotency-key")
            )
            payload = json.dumps({"result": result.kind}).encode()
            status = "202 Accepted"
        except Exception as exc:
            payload = json.dumps({"error": str(exc)}).encode()
            status = "400 Bad Request"
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, port


def _post(url: str, data: dict[str, str], key: str) -> str:
    import urllib.request

    request = urllib.request.Request(
        url,
        data=json.dumps(data).encode(),
        headers={"Content-Type": "application/json", "Idempotency-Key": key},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.loads(response.read())["result"])


async def run_demo(url: str | None, *, sleep_seconds: float = 2.0) -> None:
    """Migrate, run one order end to end, print its timeline, and shut everything down."""
    import asyncio

    from iterflow.core.models import RunStatus
    from iterflow.core.timeline import render_timeline

    t0 = time.monotonic()
    engine, handle = build_engine(url, sleep_seconds)
    async with engine:
        print(f"database ready ({time.monotonic() - t0:.1f}s); migrating…")
        await engine.migrate()
        await engine.listen(concurrency=2)
        server, port = await _webhook_server(engine)
        try:
            order = {"order_id": f"A-{uuid.uuid4().hex[:6]}", "amount_cents": 4200}
            key = f"order-{order['order_id']}"
            started = await handle.start(order, idempotency_key=key)
            again_start = await handle.start(order, idempotency_key=key)
            run_id = started.run_id
            print(
                f"started run {run_id} (created={started.created}); the same idempotency key "
                f"again returns {again_start.run_id == run_id and not again_start.created}"
            )
            deadline = time.monotonic() + 30
            while (await engine.status(run_id)).run.status is not RunStatus.AWAITING_SIGNAL:
                if time.monotonic() > deadline:
                    raise TimeoutError("the demo run never reached its payment wait")
                await asyncio.sleep(0.1)
            print("run is waiting for the payment webhook; posting it…")
            hook = f"http://127.0.0.1:{port}/runs/{run_id}/signals/payment"
            body = {"payment_id": "pay_123", "status": "paid"}
            first = await asyncio.to_thread(_post, hook, body, "evt_1")
            again = await asyncio.to_thread(_post, hook, body, "evt_1")
            print(f"webhook answered {first!r}; its retry answered {again!r}")
            receipt = await handle.result(run_id, timeout=30)
            print(f"result: {receipt!r}")
            print(render_timeline(await engine.status(run_id)))
        finally:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()
    print(f"demo finished in {time.monotonic() - t0:.1f}s; embedded PostgreSQL stopped")
