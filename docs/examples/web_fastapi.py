import os

from fastapi import FastAPI
from starlette.middleware.authentication import AuthenticationMiddleware
from web_app import (  # the recipe above: its engine, flow, lifespan, endpoints and login
    DashboardLogin,
    authorize,
    checkout,
    engine,
    lifespan,
    login_required,
    put_order,
    receipt,
    resolve,
)

from iterflow.contrib.starlette import install_error_handler, signal_webhook
from iterflow.contrib.web import dashboard

__all__ = ["app", "checkout", "engine"]

app = FastAPI(lifespan=lifespan)
app.add_route("/orders/{order_id}", put_order, methods=["PUT"])
app.add_route("/orders/{order_id}/receipt", receipt)
# the webhook verifies the raw body's signature: a plain endpoint, out of the OpenAPI schema
app.add_route(
    "/webhooks/stripe",
    signal_webhook(engine, secret=os.environ["STRIPE_WEBHOOK_SECRET"], resolve=resolve),
    methods=["POST"],
)
app.mount("/ops", dashboard(engine, authorize=authorize))
app.add_middleware(AuthenticationMiddleware, backend=DashboardLogin(), on_error=login_required)
install_error_handler(app)  # any FlowError escaping a route -> a problem+json response

# `uvicorn web_fastapi:app` from docs/examples
