"""Retention: ``engine.purge`` on both stores, the workers' periodic sweep on PostgreSQL, its
release when a worker dies in the middle of it, and the documented example."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from iterflow import Engine, FlowContext
from iterflow.cli import main
from iterflow.core.errors import FlowError
from iterflow.core.hooks import Hook, PurgeInfo
from iterflow.core.models import PurgeReport, RunStatus
from iterflow.core.settings import Retention, RetentionRule
from iterflow.store.outbox import retention_task_name
from iterflow.testing import FakeClock
from tests.integration.flows import eventually, settle, sql

ROOT = Path(__file__).resolve().parents[2]


class Job(BaseModel):
    n: int = 0


class Go(BaseModel):
    ok: bool = True


def _flows(engine: Engine) -> tuple[Any, Any, Any]:
    @engine.flow("leaf", input=Job, output=Job)
    async def leaf(ctx: FlowContext, job: Job) -> Job:
        return job

    @engine.flow("tree", input=Job, output=Job)
    async def tree(ctx: FlowContext, job: Job) -> Job:
        await ctx.step("one", _one)
        await ctx.invoke(leaf, Job(n=job.n))
        if job.n < 0:
            raise FlowError("negative", code="NEGATIVE")
        return job

    @engine.flow("wait", input=Job, output=Job, signals={"go": Go})
    async def wait(ctx: FlowContext, job: Job) -> Job:
        await ctx.signal("go", Go)
        return job

    return leaf, tree, wait


async def _one() -> int:
    return 1


async def _ended(engine: Engine, run_id: uuid.UUID) -> None:
    await settle(engine, run_id)


async def test_purge_counts_then_deletes_finished_trees_only(eng: Engine) -> None:
    _, tree, wait = _flows(eng)
    ok = [(await tree.start(Job(n=i))).run_id for i in range(3)]
    bad = (await tree.start(Job(n=-1))).run_id
    live = (await wait.start(Job())).run_id
    for run_id in (*ok, bad):
        await _ended(eng, run_id)

    preview = await eng.purge(older_than=0, dry_run=True)
    assert preview == PurgeReport(
        runs=8, by_status={RunStatus.DONE: 3, RunStatus.FAILED: 1}, dry_run=True
    )
    assert preview.top_level == 4
    assert len((await eng.list_runs(limit=50)).runs) == 9  # nothing deleted
    assert (await eng.purge(older_than="1h")).runs == 0  # too young

    failed = await eng.purge(older_than=0, status="failed", flow=tree)
    assert failed == PurgeReport(runs=2, by_status={RunStatus.FAILED: 1})
    assert await eng.store.get_run(bad) is None
    done = await eng.purge(older_than=0, status=[RunStatus.DONE, "canceled"], flow="tree")
    assert done.runs == 6 and done.by_status == {RunStatus.DONE: 3}
    left = (await eng.list_runs(limit=50)).runs
    assert [r.id for r in left] == [live]
    with pytest.raises(FlowError) as gone:
        await eng.status(ok[0])
    assert gone.value.error_code == "RUN_NOT_FOUND"


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"older_than": "soon"}, "DURATION_INVALID"),
        ({"older_than": -5}, "DURATION_INVALID"),
        ({"older_than": "1d", "status": "running"}, "INPUT_INVALID"),
        ({"older_than": "1d", "status": "nope"}, "INPUT_INVALID"),
        ({"older_than": "1d", "flow": "a\x00b"}, "INPUT_INVALID"),
        ({"older_than": "1d", "flow": "\ud800"}, "INPUT_INVALID"),
        ({"older_than": "1d", "dry_run": "yes"}, "INPUT_INVALID"),
    ],
)
async def test_bad_purge_arguments_are_refused(
    eng: Engine, kwargs: dict[str, Any], code: str
) -> None:
    _, tree, _ = _flows(eng)
    run_id = (await tree.start(Job())).run_id
    await _ended(eng, run_id)
    with pytest.raises(FlowError) as refused:
        await eng.purge(**kwargs)
    assert refused.value.error_code == code
    assert await eng.store.get_run(run_id) is not None


async def test_the_purge_hook_counts_deleted_runs(eng: Engine) -> None:
    seen: list[PurgeInfo] = []

    class Count(Hook):
        def on_purge(self, info: PurgeInfo) -> None:
            seen.append(info)

    eng.add_hook(Count())
    _, tree, _ = _flows(eng)
    await _ended(eng, (await tree.start(Job())).run_id)
    await eng.purge(older_than=0, dry_run=True)
    assert seen == []  # a dry run deletes nothing
    await eng.purge(older_than=0, status="done")
    assert [(i.count, i.statuses) for i in seen] == [(2, (RunStatus.DONE,))]


async def test_a_live_worker_applies_the_retention_policy(database_url: str) -> None:
    """No direct call: the workers' periodic task purges what the policy says, and only that."""
    policy = {"done": "1s", "flows": {"keep": {"failed": "1s"}}, "every_seconds": 1}
    async with Engine(database_url, pool_size=4, retention=policy) as engine:
        _, tree, wait = _flows(engine)

        @engine.flow("keep", input=Job, output=Job)
        async def keep(ctx: FlowContext, job: Job) -> Job:
            if job.n:
                raise FlowError("no", code="NO")
            return job

        await engine.listen(concurrency=2)
        done = (await tree.start(Job())).run_id
        failed = (await tree.start(Job(n=-1))).run_id
        kept_done = (await keep.start(Job())).run_id  # "keep" has its own policy: done stays
        kept_failed = (await keep.start(Job(n=1))).run_id
        live = (await wait.start(Job())).run_id
        for run_id in (done, failed, kept_done, kept_failed):
            await _ended(engine, run_id)

        async def purged() -> bool:
            return (
                await engine.store.get_run(done) is None
                and await engine.store.get_run(kept_failed) is None
            )

        await eventually(purged, timeout=30, what="the periodic retention sweep")
        for run_id in (failed, kept_done, live):
            assert await engine.store.get_run(run_id) is not None
        task = retention_task_name(engine.settings.db_schema)
        defers = sql(
            database_url,
            "SELECT count(*) FROM procrastinate_periodic_defers WHERE task_name = %s",
            task,
        )
        assert defers[0][0] >= 1
        leaves = (await engine.list_runs(name="leaf", limit=10)).runs
        assert len(leaves) == 1  # the failed tree's child stays with its parent


async def test_a_retention_sweep_left_doing_by_a_dead_worker_is_released(
    engine: Engine, database_url: str
) -> None:
    task = retention_task_name(engine.settings.db_schema)
    worker = sql(
        database_url,
        "INSERT INTO procrastinate_workers (last_heartbeat) "
        "VALUES (now() - interval '1 hour') RETURNING id",
    )[0][0]
    job = sql(
        database_url,
        "INSERT INTO procrastinate_jobs (queue_name, task_name, args) "
        "VALUES (%s, %s, '{}') RETURNING id",
        engine.settings.queue_name,
        task,
    )[0][0]
    sql(
        database_url,
        "UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s WHERE id = %s",
        worker,
        job,
    )
    assert (await engine.reconcile()).orphaned_jobs == 1
    # released by deleting it (no failed row left behind)
    assert sql(database_url, "SELECT status FROM procrastinate_jobs WHERE id = %s", job) == []


def test_operations_doc_block_is_the_example() -> None:
    markdown = (ROOT / "docs" / "operations.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", markdown, flags=re.DOTALL)
    assert (ROOT / "docs" / "examples" / "retention.py").read_text() in blocks


async def test_retention_example_runs() -> None:
    spec = importlib.util.spec_from_file_location(
        "retention_example", ROOT / "docs" / "examples" / "retention.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert await module.main() == {
        "late": "RUN_DEADLINE_EXCEEDED",
        "conflict": "IDEMPOTENCY_CONFLICT",
        "would_purge": 1,
        "purged": {RunStatus.DONE: 1},
        "left": ["failed"],
    }


def test_flowctl_gc_counts_then_deletes(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async def finished_runs() -> list[uuid.UUID]:
        async with Engine(database_url, pool_size=2) as engine:
            _, tree, wait = _flows(engine)
            ids = [(await tree.start(Job(n=n))).run_id for n in (1, -1)]
            await wait.start(Job())  # live: never deleted
            for run_id in ids:
                await _drive(engine, run_id)
            return ids

    done, failed = asyncio.run(finished_runs())
    url = ["--database-url", database_url]
    assert main([*url, "gc", "--older-than", "0s", "--dry-run", "--json"]) == 0
    counted = json.loads(capsys.readouterr().out)
    assert counted == {"dry_run": True, "runs": 4, "top_level": {"done": 1, "failed": 1}}
    assert main([*url, "gc", "--older-than", "soon"]) == 2  # DURATION_INVALID
    assert "DURATION_INVALID" in capsys.readouterr().err
    assert main([*url, "gc", "--older-than", "0s", "--status", "failed", "--flow", "tree"]) == 0
    assert capsys.readouterr().out.strip() == (
        "deleted 2 run(s): top-level failed 1; 1 child run(s)"
    )
    left = {row[0] for row in sql(database_url, "SELECT id FROM iterflow.runs")}
    assert done in left and failed not in left and len(left) == 3


async def _drive(engine: Engine, run_id: uuid.UUID) -> None:
    """Run every attempt the run and its children need, in this process (no worker)."""
    while not (await engine.status(run_id)).run.is_terminal:
        for run in (await engine.list_runs(limit=50)).runs:
            if not run.is_terminal:
                await engine.worker.advance(run.id)


def test_a_policy_is_a_list_of_rules_per_status_and_flow() -> None:
    policy = Retention(done="7d", failed=3600, flows={"audit": {"done": "365d"}})
    assert policy.rules() == [
        RetentionRule(RunStatus.DONE, timedelta(days=365), flow="audit"),
        RetentionRule(RunStatus.DONE, timedelta(days=7), exclude=("audit",)),
        RetentionRule(RunStatus.FAILED, timedelta(hours=1), exclude=("audit",)),
    ]
    assert Retention().rules() == []  # nothing is ever purged without an age


@pytest.mark.parametrize(
    "bad",
    [
        {"done": "soon"},
        {"done": float("nan")},
        {"done": -1},
        {"flows": {"a\x00b": {"done": "1d"}}},
        {"flows": {"": {}}},
        {"pace": 0},
        {"batch": 0},
        {"every_seconds": 60},
        {"keep": "1d"},
    ],
)
def test_a_bad_policy_is_refused_when_the_engine_is_made(bad: dict[str, Any]) -> None:
    with pytest.raises(FlowError) as refused:
        Engine("postgresql://unused/db", retention=bad)
    assert refused.value.error_code == "CONFIG_INVALID"


async def test_schedule_events_past_their_age_are_deleted_in_batches(database_url: str) -> None:
    """``Retention(schedule_events=...)``: a sweep deletes the schedules' decisions older than
    the age, batch by batch, and keeps the newer ones (a schedule ticking every minute would
    otherwise add half a million rows a year)."""
    retention = Retention(schedule_events=timedelta(hours=1), batch=2)
    async with Engine(database_url, pool_size=2, retention=retention) as engine:
        _, tree, _ = _flows(engine)
        ids = ("daily-a", "daily-b", "daily-c")
        for sid in ids:
            await engine.schedule(tree, cron="0 3 * * *", input=Job(n=1), id=sid)
            await engine.trigger(sid)
        # five of the six decisions (created and triggered, each) are two hours old: three
        # batches of two
        sql(
            database_url,
            "UPDATE iterflow.schedule_events SET at = now() - interval '2 hours' "
            "WHERE id < (SELECT max(id) FROM iterflow.schedule_events)",
        )
        report = await engine.sweep_retention()
        assert report.schedule_events == 5 and report.runs == 0
        left = {sid: [e.type for e in await engine.schedule_events(sid)] for sid in ids}
        assert left == {"daily-a": [], "daily-b": [], "daily-c": ["triggered"]}
        assert (await engine.sweep_retention()).schedule_events == 0


async def test_schedule_events_retention_on_the_in_memory_store() -> None:
    clock = FakeClock()
    retention = Retention(schedule_events="1h")
    async with Engine.in_memory(clock=clock, retention=retention) as engine:
        _, tree, _ = _flows(engine)
        await engine.schedule(tree, cron="0 3 * * *", input=Job(n=1), id="daily")
        clock.advance("2h")
        await engine.trigger("daily")
        report = await engine.sweep_retention()
        assert report.schedule_events == 1  # "created", two hours old
        assert [e.type for e in await engine.schedule_events("daily")] == ["triggered"]


def test_a_bad_schedule_events_age_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="schedule_events"):
        Retention(schedule_events="soon")
