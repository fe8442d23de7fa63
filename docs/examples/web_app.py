import base64
import hmac
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pydantic import BaseModel
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    AuthenticationError,
    SimpleUser,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from iterflow import Engine, FlowContext
from iterflow.contrib.starlette import (
    WebhookSignal,
    install_error_handler,
    iterflow_lifespan,
    signal_webhook,
)
from iterflow.contrib.web import dashboard


class Order(BaseModel):
    order_id: str
    amount_cents: int


class Payment(BaseModel):
    payment_intent: str


class Receipt(BaseModel):
    order_id: str
    payment_intent: str


engine = Engine()  # $ITERFLOW_DATABASE_URL, $DATABASE_URL, else embedded in ./.iterflow


@engine.flow("checkout", input=Order, output=Receipt, signals={"paid": Payment})
async def checkout(ctx: FlowContext, order: Order) -> Receipt:
    payment = await ctx.signal("paid", Payment, timeout="1d")
    return Receipt(order_id=order.order_id, payment_intent=payment.payment_intent)


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    # opens the engine, installs its tables, starts a worker in this process; closes it all
    async with iterflow_lifespan(engine, migrate=True, worker=True)(app):
        async with engine.sqlalchemy_engine.begin() as conn:  # your own migrations, in real life
            await conn.execute(
                text("CREATE TABLE IF NOT EXISTS shop_orders (id text PRIMARY KEY, run_id uuid)")
            )
        yield


async def put_order(request: Request) -> JSONResponse:
    order_id = request.path_params["order_id"]
    body = await request.json()
    amount = body.get("amount_cents") if isinstance(body, dict) else None
    # One transaction: the order row and the run commit together, or neither does. The order id
    # is the idempotency key, so a repeated PUT returns the same run.
    async with engine.sqlalchemy_engine.begin() as conn:
        run = await checkout.start(
            {"order_id": order_id, "amount_cents": amount},  # invalid -> INPUT_INVALID -> 422
            idempotency_key=order_id,
            conn=conn,
        )
        await conn.execute(
            text("INSERT INTO shop_orders VALUES (:id, :run_id) ON CONFLICT DO NOTHING"),
            {"id": order_id, "run_id": run.run_id},
        )
    return JSONResponse({"run_id": str(run.run_id), "created": run.created})


async def run_of(order_id: str) -> uuid.UUID | None:
    async with engine.sqlalchemy_engine.connect() as conn:
        query = text("SELECT run_id FROM shop_orders WHERE id = :id")
        return (await conn.execute(query, {"id": order_id})).scalar_one_or_none()


async def receipt(request: Request) -> JSONResponse:
    run_id = await run_of(request.path_params["order_id"])
    if run_id is None:
        return JSONResponse({"detail": "no such order"}, status_code=404)
    try:
        wait = min(float(request.query_params.get("wait", "0")), 30.0)  # a bounded long poll
    except ValueError:
        return JSONResponse({"detail": "wait must be a number of seconds"}, status_code=400)
    done = await checkout.result(run_id, timeout=wait)  # RESULT_TIMEOUT -> 504, failed run -> 500
    return JSONResponse(done.model_dump())


async def resolve(event: dict[str, Any]) -> WebhookSignal | None:
    """A Stripe event -> the signal it means for a run (None: not for us, acknowledged)."""
    if event.get("type") != "payment_intent.succeeded":
        return None
    intent = event["data"]["object"]
    run_id = await run_of(intent["metadata"]["order_id"])
    if run_id is None:
        return None
    return WebhookSignal(run_id, "paid", {"payment_intent": intent["id"]}, event["id"])


# -- the dashboard at /ops: whoever logs in may look, only operators may act --------------------

LOGINS = {  # user -> (the environment variable holding its password, its role)
    "ops": ("DASHBOARD_OPS_PASSWORD", "operator"),
    "support": ("DASHBOARD_SUPPORT_PASSWORD", "viewer"),
}


class DashboardLogin(AuthenticationBackend):
    """HTTP Basic on /ops (your app's own login in real life; the API and the webhook above
    authenticate their own way). A login whose password variable is unset cannot log in."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, SimpleUser] | None:
        if not conn.url.path.startswith("/ops"):
            return None
        scheme, _, encoded = conn.headers.get("Authorization", "").partition(" ")
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except ValueError:
            user = password = ""
        variable, role = LOGINS.get(user, ("", ""))
        expected = os.environ.get(variable, "") if variable else ""
        if scheme.lower() != "basic" or not expected:
            raise AuthenticationError("log in to the dashboard")
        if not hmac.compare_digest(password.encode(), expected.encode()):
            raise AuthenticationError("log in to the dashboard")
        return AuthCredentials([role]), SimpleUser(user)


def login_required(conn: HTTPConnection, exc: AuthenticationError) -> Response:
    challenge = {"WWW-Authenticate": 'Basic realm="iterflow"'}
    return PlainTextResponse(str(exc), status_code=401, headers=challenge)


def authorize(request: Request, action: str) -> bool:
    """The dashboard's hook: whoever logged in may look ("view"), operators may also act."""
    return action == "view" or "operator" in request.auth.scopes


app = Starlette(
    lifespan=lifespan,
    routes=[
        Route("/orders/{order_id}", put_order, methods=["PUT"]),
        Route("/orders/{order_id}/receipt", receipt),
        Route(
            "/webhooks/stripe",
            signal_webhook(engine, secret=os.environ["STRIPE_WEBHOOK_SECRET"], resolve=resolve),
            methods=["POST"],
        ),
        Mount("/ops", app=dashboard(engine, authorize=authorize)),
    ],
    middleware=[
        Middleware(AuthenticationMiddleware, backend=DashboardLogin(), on_error=login_required)
    ],
)
install_error_handler(app)  # any FlowError escaping a route -> a problem+json response

# run it with any ASGI server, e.g. `uvicorn docs.examples.web_app:app`
