"""The dashboard in a real headless Chromium (Playwright), served by a real HTTP server, its runs
executed by a real worker: the operator's scenarios of issue 12, against the DOM contract.

Fixtures: ``tests/web/conftest.py`` (``live``: server + engine + worker; ``operator``: a page
whose role cookie may act; ``new_context``: another browser profile). Waits are Playwright's
``expect`` (auto-retrying, with a deadline) or a database poll with a deadline; no sleeps.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import TYPE_CHECKING

from playwright.async_api import Page, Response, Route, expect

from .conftest import TIMEOUT_MS, LiveDashboard, new_context, new_page, screenshot

if TYPE_CHECKING:
    from playwright.async_api import Browser, Locator

expect.set_options(timeout=TIMEOUT_MS)

AWAITING_SIGNAL = re.compile(r"awaiting[ _]signal", re.IGNORECASE)


def order(order_id: str) -> dict[str, object]:
    return {"order_id": order_id, "amount_cents": 4200}


def row(page: Page, run_id: uuid.UUID) -> Locator:
    return page.locator(f'table#runs tr[data-run-id="{run_id}"]')


def status_of(page: Page) -> Locator:
    """The run page's status (the list rows have their own ``run-status`` cells)."""
    return page.locator("[data-testid=run-status]").first


def action_form(page: Page, action: str) -> Locator:
    """The run page's form posting to ``.../<action>`` (cancel, retry)."""
    return page.locator(f'#actions form[action$="/{action}"]')


async def submit(form: Locator) -> None:
    await form.locator("button[type=submit], input[type=submit], button:not([type])").first.click()


async def start_mix(live: LiveDashboard) -> dict[str, list[uuid.UUID]]:
    """Two runs waiting for approval, two charges done, one charge failed; returns their ids
    by the state they settle in (waited for in the database)."""
    engine = live.engine
    live.controls.declined.add("C-bad")
    ids: dict[str, list[uuid.UUID]] = {"waiting": [], "done": [], "failed": []}
    for order_id in ("A-1", "A-2"):
        ids["waiting"].append((await engine.start("approval", order(order_id))).run_id)
    for order_id in ("C-1", "C-2"):
        ids["done"].append((await engine.start("charge", order(order_id))).run_id)
    ids["failed"].append((await engine.start("charge", order("C-bad"))).run_id)
    for state, status in (("waiting", "awaiting_signal"), ("done", "done"), ("failed", "failed")):
        for run_id in ids[state]:
            await live.reach(run_id, status)
    return ids


async def test_runs_list_shows_every_run_and_filters(live: LiveDashboard, operator: Page) -> None:
    ids = await start_mix(live)
    page = operator
    await page.goto(live.at("/"))
    await expect(page.locator("table#runs tr[data-run-id]")).to_have_count(5)
    for state in ("waiting", "done", "failed"):
        for run_id in ids[state]:
            await expect(row(page, run_id).locator("[data-testid=run-status]")).to_have_text(
                AWAITING_SIGNAL if state == "waiting" else re.compile(state, re.IGNORECASE)
            )
    counts = page.locator("[data-testid=status-counts]")
    await expect(counts.locator('[data-status="failed"]')).to_contain_text("1")
    await expect(counts.locator('[data-status="done"]')).to_contain_text("2")
    await screenshot(page, "runs-list")

    filters = page.locator("form#filters")
    await set_field(filters.locator('[name="flow"]'), "charge")
    await set_field(filters.locator('[name="status"]'), "failed")
    await submit(filters)
    await expect(page).to_have_url(re.compile(r"flow=charge"))
    await expect(page).to_have_url(re.compile(r"status=failed"))
    await expect(page.locator("table#runs tr[data-run-id]")).to_have_count(1)
    failed = row(page, ids["failed"][0])
    await expect(failed).to_have_count(1)
    await screenshot(page, "runs-list-filtered")

    await failed.locator("a.run-link").click()
    await expect(page).to_have_url(re.compile(f"/runs/{ids['failed'][0]}"))
    await expect(status_of(page)).to_have_text(re.compile("failed", re.IGNORECASE))


async def set_field(field: Locator, value: str) -> None:
    """Fill an input, pick an option of a select, or tick the checkbox/radio of ``value``."""
    first = field.first
    tag = await first.evaluate("el => el.tagName.toLowerCase()")
    kind = (await first.get_attribute("type") or "").lower()
    if tag == "select":
        await first.select_option(value)
    elif kind in ("checkbox", "radio"):
        await field.and_(field.page.locator(f'[value="{value}"]')).check()
    else:
        await first.fill(value)


async def test_signal_a_waiting_run_and_watch_it_finish_live(
    live: LiveDashboard, browser: Browser, operator: Page
) -> None:
    ids = await start_mix(live)
    run_id = ids["waiting"][0]
    page = operator

    await page.goto(live.at("/"))
    await row(page, run_id).locator("a.run-link").click()
    await expect(page).to_have_url(re.compile(f"/runs/{run_id}"))
    await expect(status_of(page)).to_have_text(AWAITING_SIGNAL)
    why = page.locator("[data-testid=why-waiting]")
    await expect(why).to_contain_text(re.compile(r"waiting for signal\W+approve", re.IGNORECASE))
    await expect(page.locator("svg#graph")).to_be_visible()
    await screenshot(page, "run-waiting")

    # the runs list, open in a second tab, must follow the run live too
    list_page = await new_page(page.context)
    await list_page.goto(live.at("/"))
    await expect(row(list_page, run_id).locator("[data-testid=run-status]")).to_have_text(
        AWAITING_SIGNAL
    )

    form = page.locator('#actions form[data-signal="approve"]')
    await expect(form.locator("legend")).to_contain_text("(the run waits for it)")
    await form.locator('[name="approved_by"]').fill("alice")
    async with page.expect_response(subscribed):
        await submit(form)  # the run page after the redirect subscribes to updates
    await expect(page.locator("[data-testid=action-result]")).to_contain_text(
        re.compile("delivered|buffered", re.IGNORECASE)
    )
    await live.reach(run_id, "running")  # the ship step is held by the gate
    assert (await status_of(page).inner_text()).strip() != "done"

    # from here the page must not reload: a marker on window survives only without a reload
    await page.evaluate("window.__iterflowNoReload = true")
    await list_page.evaluate("window.__iterflowNoReload = true")
    live.controls.ship_gate.set()
    await live.reach(run_id, "done")
    await expect(status_of(page)).to_have_text(re.compile("done", re.IGNORECASE))
    await expect(row(list_page, run_id).locator("[data-testid=run-status]")).to_have_text(
        re.compile("done", re.IGNORECASE)
    )
    assert await page.evaluate("window.__iterflowNoReload === true"), "the run page reloaded"
    assert await list_page.evaluate("window.__iterflowNoReload === true"), "the list reloaded"
    receipt = (await live.engine.status(run_id)).run.output
    assert receipt == {"order_id": "A-1", "approved_by": "alice"}
    await screenshot(page, "run-done")


def subscribed(response: Response) -> bool:
    """A live-update subscription of the page answered (SSE, or the polling fallback)."""
    return "/events" in response.url or "/changes" in response.url


async def test_retry_a_failed_run_and_watch_it_finish_live(
    live: LiveDashboard, operator: Page
) -> None:
    ids = await start_mix(live)
    run_id = ids["failed"][0]
    page = operator
    await page.goto(live.at(f"/runs/{run_id}"))
    await expect(status_of(page)).to_have_text(re.compile("failed", re.IGNORECASE))
    await expect(page.locator("table#steps")).to_contain_text("card declined")
    await screenshot(page, "run-failed")

    live.controls.declined.discard("C-bad")  # the card works now
    live.controls.charge_gate.clear()  # hold the retried charge until the page listens
    async with page.expect_response(subscribed):
        await submit(action_form(page, "retry"))
    await expect(page.locator("[data-testid=action-result]")).to_contain_text(
        re.compile("queued", re.IGNORECASE)
    )
    assert (await status_of(page).inner_text()).strip() != "done"
    await page.evaluate("window.__iterflowNoReload = true")
    live.controls.charge_gate.set()
    await live.reach(run_id, "done")
    await expect(status_of(page)).to_have_text(re.compile("done", re.IGNORECASE))
    assert await page.evaluate("window.__iterflowNoReload === true"), "the run page reloaded"
    assert (await live.engine.status(run_id)).run.output == {"charge_id": "ch_C-bad"}


async def test_a_run_ending_before_the_page_subscribes_still_shows_its_end(
    live: LiveDashboard, operator: Page
) -> None:
    """The run ends after the page was rendered but before its live subscription connects
    (a fast worker after a redirect does this): the page must still show the end. The
    subscription requests are held back by the browser until the run has ended."""
    await start_mix(live)
    run_id = (await live.engine.start("approval", order("A-race"))).run_id
    await live.reach(run_id, "awaiting_signal")
    await live.engine.signal(run_id, "approve", {"approved_by": "bob"})
    await live.reach(run_id, "running")  # held at its ship step

    ended = asyncio.Event()

    async def hold(route: Route) -> None:
        await ended.wait()
        await route.continue_()

    page = operator
    await page.route(re.compile(r"/(events|changes)(\?|$)"), hold)
    await page.goto(live.at(f"/runs/{run_id}"))
    await expect(status_of(page)).to_have_text(re.compile("running", re.IGNORECASE))
    # signalled and running its next step: the form no longer says the run waits for it
    legend = page.locator('#actions form[data-signal="approve"] legend')
    await expect(legend).to_have_count(1)
    await expect(legend).not_to_contain_text("waits for it")
    await page.evaluate("window.__iterflowNoReload = true")
    live.controls.ship_gate.set()
    await live.reach(run_id, "done")
    ended.set()
    await expect(status_of(page)).to_have_text(re.compile("done", re.IGNORECASE))
    assert await page.evaluate("window.__iterflowNoReload === true"), "the run page reloaded"


async def test_a_claimed_run_goes_from_pending_to_running_to_done_live(
    live: LiveDashboard, operator: Page
) -> None:
    """A claim writes no event: the list and the run page still follow the run from pending
    (a delayed start) to running (claimed, held in its charge step) to done, without reloading."""
    live.controls.charge_gate.clear()
    run_id = (await live.engine.start("charge", order("C-live"), delay="5s")).run_id
    page = operator
    await page.goto(live.at("/"))
    cell = row(page, run_id).locator("[data-testid=run-status]")
    await expect(cell).to_have_text(re.compile("pending", re.IGNORECASE))
    run_page = await new_page(page.context)
    await run_page.goto(live.at(f"/runs/{run_id}"))
    await expect(status_of(run_page)).to_have_text(re.compile("pending", re.IGNORECASE))
    for opened in (page, run_page):
        await opened.evaluate("window.__iterflowNoReload = true")

    await live.reach(run_id, "running")  # claimed at its due time; the gate holds its step
    await expect(cell).to_have_text(re.compile("running", re.IGNORECASE))
    await expect(status_of(run_page)).to_have_text(re.compile("running", re.IGNORECASE))
    assert await live.status_of(run_id) == "running"
    live.controls.charge_gate.set()
    await expect(cell).to_have_text(re.compile("done", re.IGNORECASE))
    await expect(status_of(run_page)).to_have_text(re.compile("done", re.IGNORECASE))
    for opened in (page, run_page):
        assert await opened.evaluate("window.__iterflowNoReload === true"), "a page reloaded"


async def test_without_the_event_stream_the_page_polls_and_still_follows_the_run(
    live: LiveDashboard, operator: Page
) -> None:
    """A proxy that refuses the event stream (502): the page falls back to polling ``/changes``
    and still shows the run go from awaiting its signal to running to done, without reloading."""
    run_id = (await live.engine.start("approval", order("A-poll"))).run_id
    await live.reach(run_id, "awaiting_signal")
    streams: list[str] = []

    async def refuse(route: Route) -> None:
        streams.append(route.request.url)
        await route.fulfill(status=502, body="bad gateway")

    page = operator
    await page.route(re.compile(r"/events(\?|$)"), refuse)
    await page.goto(live.at(f"/runs/{run_id}"))
    await expect(page.locator("html")).to_have_attribute("data-live", "poll")
    assert streams, "the page never tried the event stream"
    await expect(status_of(page)).to_have_text(AWAITING_SIGNAL)
    await page.evaluate("window.__iterflowNoReload = true")

    await live.engine.signal(run_id, "approve", {"approved_by": "carol"})
    await live.reach(run_id, "running")  # held at its ship step
    await expect(status_of(page)).to_have_text(re.compile("running", re.IGNORECASE))
    live.controls.ship_gate.set()
    await live.reach(run_id, "done")
    await expect(status_of(page)).to_have_text(re.compile("done", re.IGNORECASE))
    assert await page.evaluate("window.__iterflowNoReload === true"), "the run page reloaded"


async def test_a_viewer_sees_no_action_and_a_revoked_operator_is_refused(
    live: LiveDashboard, browser: Browser, operator: Page
) -> None:
    ids = await start_mix(live)
    run_id = ids["waiting"][0]

    # a viewer may look, not act: no form on the run page
    viewer_context = await new_context(browser, live, role="viewer")
    try:
        viewer = await new_page(viewer_context)
        await viewer.goto(live.at(f"/runs/{run_id}"))
        await expect(status_of(viewer)).to_have_text(AWAITING_SIGNAL)
        await expect(viewer.locator("#actions form")).to_have_count(0)
    finally:
        await viewer_context.close()

    # an operator's page, then the role is revoked before the click: the server refuses
    page = operator
    await page.goto(live.at(f"/runs/{run_id}"))
    cancel = action_form(page, "cancel")
    await expect(cancel).to_have_count(1)
    await page.context.add_cookies([{"name": "role", "value": "viewer", "url": live.origin}])
    async with page.expect_response(lambda r: r.request.method == "POST") as answer:
        await submit(cancel)
    assert (await answer.value).status == 403
    await expect(page.locator("[data-testid=action-error]")).to_contain_text(
        re.compile("not authorized", re.IGNORECASE)
    )
    await screenshot(page, "action-refused")
    assert await live.status_of(run_id) == "awaiting_signal"
