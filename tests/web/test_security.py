"""The dashboard's security defaults on real PostgreSQL through Starlette's TestClient: acting
needs an ``authorize`` hook (read-only without one), the hook's answer is enforced on every
acting route, CSRF protection (same-origin check and double-submit token), the cookie's
attributes, size caps, and the no-store/security headers on every response (checked on every
response by the kit's client hook)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.requests import Request

from tests.web.actions_kit import ORIGIN, PREFIX, Kit, dashboard_kit, forms_of, text_of

#: Every acting route with a valid form, given a waiting ``approval`` run's id.
ACTING: list[tuple[str, str, dict[str, str]]] = [
    ("cancel", "/runs/{id}/cancel", {}),
    ("retry", "/runs/{id}/retry", {}),
    ("signal", "/runs/{id}/signal/approve", {"approved_by": "mallory"}),
    ("start", "/start/approval", {"order_id": "X-1", "_version": "1"}),
    ("bulk_cancel", "/bulk", {"action": "cancel", "flow": "approval", "confirm": "1"}),
    ("bulk_retry", "/bulk", {"action": "retry", "flow": "approval", "confirm": "1"}),
    ("schedule_pause", "/schedules/nightly/pause", {}),
    ("schedule_resume", "/schedules/nightly/resume", {}),
    ("schedule_trigger", "/schedules/nightly/trigger", {}),
]


@pytest.fixture
def waiting_kit(database_url: str, request: pytest.FixtureRequest) -> Iterator[tuple[Kit, Any]]:
    """A kit with the hook given by the test's ``hook`` marker-less param, and a waiting run."""
    hook = request.param
    with dashboard_kit(database_url, authorize=hook) as kit:
        run_id = kit.start("approval", "A-1")
        kit.reach(run_id, "awaiting_signal")
        yield kit, run_id


def runs_of(kit: Kit) -> int:
    counts: dict[Any, int] = kit.call(kit.engine.count_runs)
    return sum(counts.values())


def deny_acting(request: Request, action: str) -> bool:
    return action == "view"


async def deny_acting_async(request: Request, action: str) -> bool:
    return action == "view"


def not_true(request: Request, action: str) -> Any:
    return "yes"  # truthy but not True: denied


@pytest.mark.parametrize("waiting_kit", [None], indirect=True)
def test_without_a_hook_the_dashboard_is_read_only(waiting_kit: tuple[Kit, uuid.UUID]) -> None:
    kit, run_id = waiting_kit
    run_page = kit.get(f"/runs/{run_id}")
    assert run_page.status_code == 200
    assert 'data-testid="read-only-banner"' in run_page.text
    assert forms_of(run_page) == []
    assert "Read-only" in text_of(run_page, "read-only-note")
    start_page = kit.get("/start/approval")
    assert start_page.status_code == 200 and forms_of(start_page) == []
    assert 'id="bulk"' not in kit.get("/", params={"flow": "approval"}).text

    for _, path, data in ACTING:
        answer = kit.post(path.format(id=run_id), data)
        assert answer.status_code == 403, (path, answer.text)
        assert "read-only" in text_of(answer, "action-error")
        assert 'data-code="READ_ONLY"' in answer.text
    assert kit.status(run_id) == "awaiting_signal"
    assert kit.call(kit.engine.status, run_id).signals == ()
    assert runs_of(kit) == 1


@pytest.mark.parametrize("waiting_kit", [deny_acting, deny_acting_async, not_true], indirect=True)
def test_a_hook_refusing_an_action_is_enforced_on_every_route(
    waiting_kit: tuple[Kit, uuid.UUID],
) -> None:
    kit, run_id = waiting_kit
    run_page = kit.get(f"/runs/{run_id}")
    assert run_page.status_code == 200
    assert 'data-testid="read-only-banner"' not in run_page.text  # a hook is configured
    assert forms_of(run_page) == []
    assert forms_of(kit.get("/start/approval")) == []
    assert 'id="bulk"' not in kit.get("/").text
    for action, path, data in ACTING:
        answer = kit.post(path.format(id=run_id), data)
        assert answer.status_code == 403, (path, answer.text)
        message = text_of(answer, "action-error")
        assert "not authorized" in message and action.replace("_", " ") in message
    assert kit.status(run_id) == "awaiting_signal"
    assert runs_of(kit) == 1


def test_the_hook_receives_each_action(database_url: str) -> None:
    seen: list[str] = []

    def record(request: Request, action: str) -> bool:
        seen.append(action)
        return action != "cancel"

    with dashboard_kit(database_url, authorize=record) as kit:
        run_id = kit.start("approval", "A-1")
        kit.reach(run_id, "awaiting_signal")
        run_page = kit.get(f"/runs/{run_id}")
        assert not any("/cancel" in form for form in forms_of(run_page))
        assert any('data-signal="approve"' in form for form in forms_of(run_page))
        seen.clear()
        assert kit.post(f"/runs/{run_id}/cancel").status_code == 403
        assert seen == ["cancel"]
        answer = kit.post(f"/runs/{run_id}/signal/approve", {"approved_by": "ann"})
        assert answer.status_code == 303
        assert seen == ["cancel", "signal"]


@pytest.fixture
def kit(database_url: str) -> Iterator[Kit]:
    with dashboard_kit(database_url) as kit:
        yield kit


def waiting(kit: Kit) -> uuid.UUID:
    run_id = kit.start("approval", "A-1")
    kit.reach(run_id, "awaiting_signal")
    return run_id


def test_csrf_token_missing_wrong_or_in_the_query_string_is_refused(kit: Kit) -> None:
    run_id = waiting(kit)
    path = f"/runs/{run_id}/cancel"
    token = kit.token()
    refused = [
        kit.post(path, csrf=None),  # no token
        kit.post(path, csrf="A" * 43),  # well-formed, not the cookie's
        kit.post(path, csrf="<script>"),  # malformed
        kit.client.post(  # the token in the URL is never read
            f"{PREFIX}{path}?csrf_token={token}", headers={"Origin": ORIGIN}
        ),
    ]
    for answer in refused:
        assert answer.status_code == 403, answer.text
        assert 'data-code="CSRF_INVALID"' in answer.text
    # a forged cookie matching a forged field is refused too: the cookie must be well-formed
    kit.client.cookies.set("iterflow_csrf", "x", path=PREFIX)
    answer = kit.post(path, csrf="x")
    assert answer.status_code == 403 and 'data-code="CSRF_INVALID"' in answer.text
    assert kit.status(run_id) == "awaiting_signal"


def test_the_token_may_come_in_the_x_csrf_token_header(kit: Kit) -> None:
    run_id = waiting(kit)
    answer = kit.post(f"/runs/{run_id}/cancel", csrf=None, headers={"X-CSRF-Token": kit.token()})
    assert answer.status_code == 303
    assert kit.status(run_id) == "canceled"


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "https://testserver.evil.example"},
        {"Origin": "http://testserver:8080"},  # another port is another origin
        {"Origin": "null"},
        {"Referer": "http://evil.example/ops/runs"},
        {},  # neither Origin nor Referer
    ],
)
def test_cross_origin_requests_are_refused(kit: Kit, headers: dict[str, str]) -> None:
    run_id = waiting(kit)
    answer = kit.post(f"/runs/{run_id}/cancel", origin=None, headers=headers)
    assert answer.status_code == 403
    assert 'data-code="CROSS_ORIGIN"' in answer.text
    assert kit.status(run_id) == "awaiting_signal"


def test_same_origin_by_referer_or_forwarded_host_is_accepted(kit: Kit) -> None:
    first, second = waiting(kit), kit.start("approval", "A-2")
    answer = kit.post(
        f"/runs/{first}/cancel", origin=None, headers={"Referer": f"{ORIGIN}/ops/runs/{first}"}
    )
    assert answer.status_code == 303
    # behind a TLS-terminating proxy that sets X-Forwarded-Host: the browser's origin is the
    # proxy's, not the Host the app sees
    answer = kit.post(
        f"/runs/{second}/cancel",
        origin="https://dash.example.com",
        headers={"X-Forwarded-Host": "dash.example.com", "X-Forwarded-Proto": "https"},
    )
    assert answer.status_code == 303, answer.text


def test_csrf_cookie_attributes(kit: Kit) -> None:
    answer = kit.get("/start/approval")
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith("iterflow_csrf=")
    for attribute in ("HttpOnly", "SameSite=strict", f"Path={PREFIX}"):
        assert attribute.lower() in cookie.lower()
    assert "secure" not in cookie.lower()  # plain HTTP here
    token = kit.client.cookies["iterflow_csrf"]
    assert f'<meta name="csrf-token" content="{token}">' in answer.text
    assert f'name="csrf_token" value="{token}"' in answer.text
    again = kit.get("/start/approval")
    assert "set-cookie" not in again.headers  # the browser keeps its token
    over_https = kit.get("/start/approval", headers={"X-Forwarded-Proto": "https"})
    assert "set-cookie" not in over_https.headers
    kit.client.cookies.clear()
    fresh = kit.get("/start/approval", headers={"X-Forwarded-Proto": "https"})
    assert "secure" in fresh.headers["set-cookie"].lower()


def test_oversized_and_unreadable_forms_are_refused(kit: Kit) -> None:
    run_id = waiting(kit)
    cap = 3 * kit.engine.settings.max_payload_bytes + 64 * 1024
    huge = kit.post(f"/runs/{run_id}/signal/approve", {"approved_by": "x" * (cap + 1)})
    assert huge.status_code == 413 and 'data-code="BODY_TOO_LARGE"' in huge.text
    as_json = kit.client.post(
        f"{PREFIX}/runs/{run_id}/cancel",
        content=b'{"csrf_token": "x"}',
        headers={"Origin": ORIGIN, "Content-Type": "application/json"},
    )
    assert as_json.status_code == 415
    multipart = kit.client.post(
        f"{PREFIX}/runs/{run_id}/cancel",
        data={"csrf_token": kit.token()},
        files={"upload": ("a.txt", b"x")},
        headers={"Origin": ORIGIN},
    )
    assert multipart.status_code == 415 and 'data-code="FORM_INVALID"' in multipart.text
    form_type = {"Origin": ORIGIN, "Content-Type": "application/x-www-form-urlencoded"}
    not_utf8 = kit.client.post(
        f"{PREFIX}/runs/{run_id}/cancel", content=b"reason=\xff\xfe", headers=form_type
    )
    assert not_utf8.status_code == 400 and 'data-code="FORM_INVALID"' in not_utf8.text
    many = "&".join(f"f{i}=1" for i in range(1001)).encode()
    too_many = kit.client.post(f"{PREFIX}/runs/{run_id}/cancel", content=many, headers=form_type)
    assert too_many.status_code == 400
    assert kit.status(run_id) == "awaiting_signal"
    assert kit.call(kit.engine.status, run_id).signals == ()


def test_get_on_an_acting_route_does_nothing(kit: Kit) -> None:
    run_id = waiting(kit)
    assert kit.get(f"/runs/{run_id}/cancel").status_code == 405
    assert kit.get("/bulk").status_code == 405
    assert kit.status(run_id) == "awaiting_signal"


def test_every_kind_of_response_carries_no_store_and_the_security_headers(kit: Kit) -> None:
    """The kit's client checks the headers of every response; here each kind of route once:
    pages, errors, static assets, the JSON poll, a redirect and an unknown path."""
    run_id = waiting(kit)
    answers = [
        kit.get("/"),
        kit.get(f"/runs/{run_id}"),
        kit.get(f"/runs/{uuid.uuid4()}"),
        kit.get("/schedules"),
        kit.get("/start"),
        kit.get("/static/app.css"),
        kit.get("/static/app.js"),
        kit.get("/changes"),
        kit.get("/no/such/page"),
        kit.post(f"/runs/{run_id}/signal/approve", {"approved_by": "ann"}),
        kit.post(f"/runs/{run_id}/cancel", csrf=None),
    ]
    assert [a.status_code for a in answers] == [
        200,
        200,
        404,
        200,
        200,
        200,
        200,
        200,
        404,
        303,
        403,
    ]
