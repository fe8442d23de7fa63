"""docs/web.md's dashboard part, executed: the recipe (``docs/examples/web_app.py``, and
``web_fastapi.py``, the same on FastAPI) mounts the dashboard at ``/ops`` behind the app's own
login (Starlette's ``AuthenticationMiddleware``, HTTP Basic) and an ``authorize`` hook: no login
is a 401 challenge, a viewer sees the runs but no form and is refused an action, an operator
signals the run through the generated form. The API and webhook part of the recipe is tested in
tests/integration/test_starlette.py."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from types import ModuleType

import pytest
from starlette.testclient import TestClient

from tests.integration.test_starlette import RECIPES, web_recipe

ROOT = Path(__file__).resolve().parents[2]
ORIGIN = {"Origin": "http://testserver"}
OPS = ("ops", "ops-password")
SUPPORT = ("support", "support-password")


def _example(monkeypatch: pytest.MonkeyPatch, recipe: str) -> ModuleType:
    monkeypatch.setenv("DASHBOARD_OPS_PASSWORD", OPS[1])
    monkeypatch.setenv("DASHBOARD_SUPPORT_PASSWORD", SUPPORT[1])
    return web_recipe(recipe, monkeypatch)


def _csrf(html: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', html)
    assert found is not None, "the page carries no CSRF token"
    return found.group(1)


def test_web_doc_documents_the_dashboard_and_flowctl_ui() -> None:
    text = (ROOT / "docs" / "web.md").read_text()
    for needed in ("## The dashboard", "dashboard(engine, authorize=", "flowctl ui", "redact"):
        assert needed in text, needed


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_dashboard_recipe(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch, recipe: str
) -> None:
    example = _example(monkeypatch, recipe)
    example.engine.configure(database_url=empty_database_url)
    with TestClient(example.app) as client:
        created = client.put("/orders/A-7", json={"amount_cents": 990})  # the API: no login
        assert created.status_code == 200
        run_id = created.json()["run_id"]

        for auth in (None, ("ops", "wrong"), ("nobody", "x")):
            refused = client.get("/ops/", auth=auth)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"].startswith("Basic")

        listing = client.get("/ops/", auth=SUPPORT)
        assert listing.status_code == 200
        assert f'data-run-id="{run_id}"' in listing.text

        viewer_page = client.get(f"/ops/runs/{run_id}", auth=SUPPORT)
        assert viewer_page.status_code == 200
        assert 'data-testid="read-only-note"' in viewer_page.text
        assert 'method="post"' not in viewer_page.text
        cancel = client.post(
            f"/ops/runs/{run_id}/cancel",
            data={"csrf_token": _csrf(viewer_page.text)},
            headers=ORIGIN,
            auth=SUPPORT,
            follow_redirects=False,
        )
        assert cancel.status_code == 403 and "NOT_AUTHORIZED" in cancel.text

        operator_page = client.get(f"/ops/runs/{run_id}", auth=OPS)
        assert 'data-signal="paid"' in operator_page.text
        sent = client.post(
            f"/ops/runs/{run_id}/signal/paid",
            data={"csrf_token": _csrf(operator_page.text), "payment_intent": "pi_ops"},
            headers=ORIGIN,
            auth=OPS,
            follow_redirects=False,
        )
        assert sent.status_code == 303, sent.text
        assert "result=" in sent.headers["location"]
        receipt = client.get("/orders/A-7/receipt", params={"wait": "30"})
        assert receipt.json() == {"order_id": "A-7", "payment_intent": "pi_ops"}
        assert client.portal is not None
        out = client.portal.call(functools.partial(example.checkout.result, run_id, timeout=5))
        assert out.payment_intent == "pi_ops"
