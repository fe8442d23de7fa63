"""Per-flow routing and limits on real PostgreSQL with procrastinate workers (in-process engines).

A worker fetches only the wake-ups of the flow versions it serves (one procrastinate queue per
flow version), so a run no worker knows waits, never fails, and is picked up when a worker that
knows it starts; limits are counted in PostgreSQL across every worker.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from iterflow import Engine, FlowContext, flow
from iterflow.core.errors import ConfigInvalid, FlowDefinitionError
from iterflow.core.models import RunStatus
from iterflow.runtime.worker import AttemptOutcome
from iterflow.store.outbox import flow_queue

from .flows import eventually

ROOT = Path(__file__).resolve().parents[2]
FAST = {"pool_size": 4}


class Order(BaseModel):
    customer: str
    n: int = 0


def versioned(engine: Engine, version: int, ran: list[tuple[str, int]], who: str) -> None:
    @engine.flow("order", version=version, input=Order, output=str)
    async def body(ctx: FlowContext, order: Order) -> str:
        ran.append((who, version))
        return f"{who}:v{version}"


def record_advances(engine: Engine) -> list[uuid.UUID]:
    """The run ids this engine's worker was asked to advance (whatever the outcome)."""
    seen: list[uuid.UUID] = []
    advance = engine.worker.advance

    async def recording(run_id: uuid.UUID, job_id: int | None = None) -> AttemptOutcome:
        seen.append(run_id)
        return await advance(run_id, job_id)

    engine.worker.advance = recording  # type: ignore[method-assign]
    return seen


def all_done(engine: Engine, ids: list[uuid.UUID]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        runs = [(await engine.status(r)).run for r in ids]
        return all(run.status is RunStatus.DONE for run in runs)

    return check


async def test_rolling_deploy_old_worker_never_claims_new_version(database_url: str) -> None:
    ran: list[tuple[str, int]] = []
    old, new = Engine(database_url, **FAST), Engine(database_url, **FAST)
    versioned(old, 1, ran, "old")
    versioned(new, 1, ran, "new")
    versioned(new, 2, ran, "new")
    async with old, new:
        old_seen = record_advances(old)
        await old.listen(concurrency=4)
        v1 = [(await old.start("order", Order(customer="a"))).run_id for _ in range(10)]
        v2 = [(await new.start("order", Order(customer="b"))).run_id for _ in range(10)]
        await eventually(all_done(old, v1), what="the old worker to finish v1 runs")
        for run_id in v2:
            run = (await old.status(run_id)).run
            assert run.version == 2 and run.status is RunStatus.PENDING and run.error is None
            assert (await old.explain(run_id)).state == "no_worker"
        await new.listen(concurrency=4)  # the new worker starts: it takes the v2 runs
        await eventually(all_done(new, v2), what="the new worker to finish v2 runs")
    assert not set(v2) & set(old_seen), "the old worker fetched a v2 wake-up"
    assert ("old", 2) not in ran and ran.count(("new", 2)) == 10


async def test_a_flow_registered_after_the_worker_started_is_served(database_url: str) -> None:
    engine = Engine(database_url, **FAST)

    @engine.flow("early", input=Order, output=str)
    async def early(ctx: FlowContext, order: Order) -> str:
        await ctx.sleep(1)  # an attempt suspended across the worker's re-routing
        return "early"

    async with engine:
        await engine.listen()
        early_id = (await engine.start("early", Order(customer="e"))).run_id

        @engine.flow("later", version=3, input=Order, output=str, queue="elsewhere")
        async def later(ctx: FlowContext, order: Order) -> str:
            return "later"

        later_id = (await engine.start("later", Order(customer="l"))).run_id
        assert await engine.result(later_id, timeout=20) == "later"
        assert await engine.result(early_id, timeout=20) == "early"

        async def listed() -> bool:  # its row in ``workers`` follows the registration
            [worker] = await engine.workers()
            return worker.flows == ("early@1", "later@3") and worker.queues == (
                "default",
                "elsewhere",
            )

        await eventually(listed, what="the worker's row to list the new flow")


async def test_unknown_flow_waits_then_runs_when_a_worker_that_knows_it_starts(
    database_url: str,
) -> None:
    """At default settings (no shortened lease, poll or sweep)."""
    other, starter, late = Engine(database_url), Engine(database_url), Engine(database_url)

    for engine in (other, starter, late):

        @engine.flow("other", input=Order, output=str)
        async def other_body(ctx: FlowContext, order: Order) -> str:
            return "other"

    for engine in (starter, late):

        @engine.flow("late", input=Order, output=str)
        async def late_body(ctx: FlowContext, order: Order) -> str:
            return "late"

    async with other, starter, late:
        await other.listen(flows=["other"])
        run_id = (await starter.start("late", Order(customer="x"))).run_id
        # proof the running worker is active and past the late run's wake-up: a later run done
        probe = (await starter.start("other", Order(customer="y"))).run_id
        assert await other.result(probe, timeout=20) == "other"
        run = (await other.status(run_id)).run
        assert run.status is RunStatus.PENDING and run.error is None and run.claims == 0
        said = await other.explain(run_id)
        assert said.state == "no_worker" and "late@1" in said.summary
        await late.listen()
        assert await late.result(run_id, timeout=20) == "late"


async def test_queues_and_flows_choose_what_a_worker_serves(database_url: str) -> None:
    billing = Engine(database_url, **FAST)
    starter = Engine(database_url, **FAST)
    for engine in (billing, starter):

        @engine.flow("charge", input=Order, output=str, queue="billing")
        async def charge(ctx: FlowContext, order: Order) -> str:
            return "charged"

        @engine.flow("mail", input=Order, output=str)
        async def mail(ctx: FlowContext, order: Order) -> str:
            return "mailed"

    async with billing, starter:
        with pytest.raises(ConfigInvalid):
            await billing.listen(flows=["nope"])
        seen = record_advances(billing)
        await billing.listen(queues=["billing"])
        charge_id = (await starter.start("charge", Order(customer="c"))).run_id
        mail_id = (await starter.start("mail", Order(customer="c"))).run_id
        assert await billing.result(charge_id, timeout=20) == "charged"
        workers = await billing.workers()
        assert [w.flows for w in workers] == [("charge@1",)]
        assert [w.queues for w in workers] == [("billing",)]
        assert mail_id not in seen
        assert (await billing.status(mail_id)).run.status is RunStatus.PENDING


async def test_a_run_queued_before_routing_moves_to_its_own_queue(database_url: str) -> None:
    """Runs started before migration 0008 sit in the engine's base queue, which every worker
    listens to: a worker that does not serve the flow moves the wake-up to the flow's queue."""
    engine = Engine(database_url, **FAST)

    @engine.flow("legacy", input=Order, output=str)
    async def legacy(ctx: FlowContext, order: Order) -> str:
        return "ok"

    async with engine:
        run_id = (await engine.start("legacy", Order(customer="z"))).run_id
        base = engine.settings.queue_name
        async with engine.sqlalchemy_engine.begin() as conn:  # as before the migration
            await conn.execute(sa.text("UPDATE iterflow.runs SET queue = NULL"))
            # ... and a worker fetched it
            await conn.execute(
                sa.text("UPDATE procrastinate_jobs SET queue_name = :q, status = 'doing'"),
                {"q": base},
            )
        engine.worker.serve(flows=[])  # serves nothing: it routes the run and leaves it
        assert await engine.worker.advance(run_id) == AttemptOutcome.SKIPPED
        async with engine.sqlalchemy_engine.connect() as conn:
            queues = (
                await conn.execute(
                    sa.text("SELECT queue_name FROM procrastinate_jobs WHERE status = 'todo'")
                )
            ).scalars()
            assert list(queues) == [flow_queue(base, "legacy", 1)]
        engine.worker.serve()
        async with engine.sqlalchemy_engine.begin() as conn:
            await conn.execute(sa.text("DELETE FROM procrastinate_jobs"))  # the job was fetched
        assert await engine.worker.advance(run_id) == AttemptOutcome.DONE


async def test_concurrency_limit_is_shared_by_workers_and_explained(database_url: str) -> None:
    live: dict[str, int] = {}
    peak: dict[str, int] = {}
    gate = asyncio.Event()
    engines = [Engine(database_url, **FAST) for _ in range(2)]
    for engine in engines:

        @engine.flow(
            "limited",
            input=Order,
            output=int,
            concurrency=2,
            concurrency_key=lambda o: o.customer,
        )
        async def limited(ctx: FlowContext, order: Order) -> int:
            async def work() -> int:
                live[order.customer] = live.get(order.customer, 0) + 1
                peak[order.customer] = max(peak.get(order.customer, 0), live[order.customer])
                try:
                    await gate.wait()
                finally:
                    live[order.customer] -= 1
                return order.n

            return await ctx.step("work", work)

    async with engines[0], engines[1]:
        for engine in engines:
            await engine.listen(concurrency=4)
        ids = [
            (await engines[0].start("limited", Order(customer=c, n=i))).run_id
            for i in range(6)
            for c in ("hot", "cold")
        ]

        async def two_live_each() -> bool:
            return live.get("hot") == 2 and live.get("cold") == 2

        await eventually(two_live_each, what="two live attempts per key")

        async def held_explained() -> bool:
            for run_id in ids:
                said = await engines[0].explain(run_id)
                if said.state == "held":
                    return "held back by concurrency limit of flow limited key" in said.summary
            return False

        await eventually(held_explained, what="a held run explained")
        gate.set()
        for run_id in ids:
            await engines[0].result(run_id, timeout=30)
    assert peak == {"hot": 2, "cold": 2}


async def test_a_hot_key_does_not_starve_the_others_and_priority_goes_first(
    database_url: str,
) -> None:
    gate = asyncio.Event()
    order: list[int] = []
    engine = Engine(database_url, **FAST)

    @engine.flow(
        "fair", input=Order, output=int, concurrency=1, concurrency_key=lambda o: o.customer
    )
    async def fair(ctx: FlowContext, job: Order) -> int:
        async def work() -> int:
            if job.customer == "hot":
                order.append(job.n)
                await gate.wait()
            return job.n

        return await ctx.step("work", work)

    async with engine:
        await engine.listen(concurrency=3)
        hot = [(await fair.start(Order(customer="hot", n=i))).run_id for i in range(8)]

        async def backlog_held() -> bool:
            said = [(await engine.explain(r)).state for r in hot]
            return said.count("held") == 7 and len(order) == 1

        await eventually(backlog_held, what="one live hot attempt and seven held")
        urgent = (await fair.start(Order(customer="hot", n=99), priority=10)).run_id
        cold = (await fair.start(Order(customer="cold", n=7))).run_id
        # the hot backlog is held out of the queue: the cold key's run is not stuck behind it
        assert await engine.result(cold, timeout=20) == 7
        assert len(order) == 1

        async def urgent_held() -> bool:
            return (await engine.explain(urgent)).state == "held"

        await eventually(urgent_held, what="the high-priority hot run to be held")
        gate.set()
        for run_id in [*hot, urgent]:
            await engine.result(run_id, timeout=30)
    assert order[1] == 99, f"the high-priority run is woken first: {order}"


def test_limits_are_checked_when_the_flow_is_defined() -> None:
    engine = Engine("postgresql://unused/db")
    for kwargs in (
        {"concurrency": 0},
        {"concurrency_key": lambda o: o},  # a key with no limit to apply
        {"rate_limit": (0, "1m")},
        {"rate_limit": (5, "never")},
        {"queue": "no spaces"},
    ):
        with pytest.raises(FlowDefinitionError):

            @engine.flow(f"bad{len(kwargs)}", input=Order, output=str, **kwargs)  # type: ignore[arg-type]
            async def body(ctx: FlowContext, order: Order) -> str:
                return ""


def test_a_built_flow_is_routed_and_limited_where_it_is_registered() -> None:
    async def shout(order: Order) -> str:
        return order.customer.upper()

    built = flow("shout").input(Order).step("shout", shout).build()
    engine = Engine("postgresql://unused/db")
    handle = engine.register(
        built, queue="billing", concurrency=2, concurrency_key=lambda o: o.customer
    )
    definition = handle.definition
    assert definition.queue == "billing"
    assert definition.limits is not None and definition.limits.concurrency == 2
    assert definition.limit_key(Order(customer="acme")) == "acme"
    assert built.queue == "default" and built.limits is None  # the built definition is kept
    with pytest.raises(FlowDefinitionError):
        Engine("postgresql://unused/db").register(built, concurrency=0)


def test_the_docs_section_shows_the_example() -> None:
    text = (ROOT / "docs" / "flow-control.md").read_text()
    section = text.split("## Concurrency and rate limits", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert (ROOT / "docs" / "examples" / "flow_limits.py").read_text() in blocks


async def test_the_docs_example_runs(database_url: str) -> None:
    spec = importlib.util.spec_from_file_location(
        "flow_limits_example", ROOT / "docs" / "examples" / "flow_limits.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results, held = await module.main(database_url)
    assert results == ["acme:100", "acme:200", "acme:300"]
    assert held.startswith("held back by concurrency limit of flow charge key acme (2/2 live)")
