"""Schedules on PostgreSQL: exactly one run per tick, catch-up, DST, jitter, overlap, backfill,
code-declared schedules and the API's refusals. Time is controlled: each sweep is given its
``now`` (or uses the database's), nothing sleeps for a tick."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from pydantic import BaseModel

from iterflow import Engine, FakeClock, FlowContext, Tick
from iterflow.core.errors import FlowError
from iterflow.core.schedule import tick_idempotency_key
from iterflow.core.scheduling import schedule_spec
from iterflow.core.settings import Settings
from iterflow.store.base import ScheduleStore
from iterflow.store.outbox import schedule_task_name
from tests.integration.flows import eventually, sql


class Report(BaseModel):
    at: str


class Other(BaseModel):
    n: int


def _register(engine: Engine) -> Any:
    @engine.flow("report", input=Tick, output=Report)
    async def report(ctx: FlowContext, tick: Tick) -> Report:
        return Report(at=tick.scheduled_at.isoformat())

    return report


async def _set_state(engine: Engine, schedule_id: str, last: datetime, nxt: datetime) -> None:
    """Move a schedule's watermark (as if it had been created at ``last``)."""
    store = cast(ScheduleStore, engine.store)
    record = await store.get_schedule(schedule_id)
    assert record is not None
    await store.update_schedule(record.spec, last_tick=last, next_tick=nxt, paused=False)


async def _runs(engine: Engine) -> list[Any]:
    page = await engine.list_runs(name="report", limit=200)
    return sorted(page.runs, key=lambda r: r.meta["scheduled_at"])


async def test_two_concurrent_sweeps_start_each_tick_once(engine: Engine) -> None:
    report = _register(engine)
    for i in range(20):
        await engine.schedule(report, cron="*/5 * * * *", id=f"s{i}", catchup="1h", overlap="allow")
    t0 = datetime(2040, 1, 1, tzinfo=UTC)
    for i in range(20):
        await _set_state(engine, f"s{i}", t0, t0 + timedelta(minutes=5))
    now = t0 + timedelta(minutes=30)
    reports = await asyncio.gather(*(engine.sweep_schedules(now=now) for _ in range(4)))
    assert sum(r.started for r in reports) == 20 * 6
    runs = await _runs(engine)
    keys = [r.idempotency_key for r in runs]
    assert len(keys) == len(set(keys)) == 120
    # a racing sweep after the fact (a stale watermark) still starts nothing twice
    await _set_state(engine, "s0", t0, t0 + timedelta(minutes=5))
    again = await engine.sweep_schedules(now=now)
    assert again.started == 0 and len(await _runs(engine)) == 120


async def test_catch_up_after_downtime_starts_the_window_oldest_first(engine: Engine) -> None:
    report = _register(engine)
    await engine.schedule(report, cron="0 * * * *", id="hourly", catchup="3h", overlap="allow")
    t0 = datetime(2040, 1, 1, tzinfo=UTC)
    await _set_state(engine, "hourly", t0, t0 + timedelta(hours=1))
    result = await engine.sweep_schedules(now=t0 + timedelta(hours=10, minutes=5))
    assert result.started == 3
    ticks = [r.meta["scheduled_at"] for r in await _runs(engine)]
    assert ticks == [(t0 + timedelta(hours=h)).isoformat() for h in (8, 9, 10)]
    events = await engine.schedule_events("hourly")
    skipped = next(e for e in events if e.type == "skipped")
    assert skipped.data is not None and skipped.data["count"] == 7
    record = await engine.get_schedule("hourly")
    assert record.next_tick == t0 + timedelta(hours=11)
    assert record.last_tick == t0 + timedelta(hours=10, minutes=5)


async def test_no_catchup_runs_only_the_latest_missed_tick(engine: Engine) -> None:
    report = _register(engine)
    await engine.schedule(report, cron="0 * * * *", id="hourly")
    t0 = datetime(2040, 1, 1, tzinfo=UTC)
    await _set_state(engine, "hourly", t0, t0 + timedelta(hours=1))
    assert (await engine.sweep_schedules(now=t0 + timedelta(days=7))).started == 1


async def test_spring_forward_in_paris_runs_once_after_the_gap(engine: Engine) -> None:
    report = _register(engine)
    await engine.schedule(report, cron="30 2 * * *", tz="Europe/Paris", id="paris")
    # 2027-03-28: clocks jump from 02:00 to 03:00 in Paris (01:00 UTC); 02:30 does not exist
    last = datetime(2027, 3, 27, 12, tzinfo=UTC)
    await _set_state(engine, "paris", last, datetime(2027, 3, 28, 1, tzinfo=UTC))
    done = await engine.sweep_schedules(now=datetime(2027, 3, 28, 1, 0, 1, tzinfo=UTC))
    assert done.started == 1
    (run,) = await _runs(engine)
    assert run.input == {"scheduled_at": "2027-03-28T01:00:00Z", "schedule_id": "paris"}
    assert run.idempotency_key == "schedule:paris@2027-03-28T01:00:00Z"
    record = await engine.get_schedule("paris")
    assert record.next_tick == datetime(2027, 3, 29, 0, 30, tzinfo=UTC)  # 02:30 CEST
    await engine.listen(concurrency=1)
    assert await report.result(run.id, timeout=30) == Report(
        at=datetime(2027, 3, 28, 1, tzinfo=UTC).isoformat()
    )


async def test_jitter_delays_the_run_start(engine: Engine) -> None:
    report = _register(engine)
    await engine.schedule(report, cron="0 * * * *", id="jittery", jitter="10m")
    t0 = datetime(2040, 1, 1, tzinfo=UTC)
    await _set_state(engine, "jittery", t0, t0 + timedelta(hours=1))
    await engine.sweep_schedules(now=t0 + timedelta(hours=1))
    (run,) = await _runs(engine)
    tick = t0 + timedelta(hours=1)
    assert run.wake_at is not None and tick <= run.wake_at < tick + timedelta(minutes=10)
    wake = await engine.store.pending_wake(run.id)
    assert wake is not None and wake.scheduled_at == run.wake_at


async def test_overlap_skip_and_buffer_one(engine: Engine) -> None:
    report = _register(engine)
    await engine.schedule(report, cron="0 * * * *", id="skip")
    await engine.schedule(report, cron="0 * * * *", id="buffer", overlap="buffer_one")
    t0 = datetime(2040, 1, 1, tzinfo=UTC)
    for sid in ("skip", "buffer"):
        await _set_state(engine, sid, t0, t0 + timedelta(hours=1))
    await engine.sweep_schedules(now=t0 + timedelta(hours=1))
    # no worker runs: the first runs stay live
    second = await engine.sweep_schedules(now=t0 + timedelta(hours=2))
    assert second.started == 0
    assert (await engine.get_schedule("buffer")).buffered_tick == t0 + timedelta(hours=2)
    assert [e.type for e in await engine.schedule_events("skip", limit=1)] == ["skipped"]
    # the previous run ends: the buffered tick starts at the next sweep
    first = (await engine.get_schedule("buffer")).last_run_id
    assert first is not None
    await engine.cancel(first)
    third = await engine.sweep_schedules(now=t0 + timedelta(hours=2, seconds=5))
    assert third.started == 1
    assert (await engine.get_schedule("buffer")).buffered_tick is None


async def test_backfill_is_idempotent(engine: Engine) -> None:
    report = _register(engine)
    await engine.schedule(report, cron="0 0 * * *", id="nightly")
    start, end = datetime(2030, 1, 1, tzinfo=UTC), datetime(2030, 1, 5, tzinfo=UTC)
    first = await engine.backfill("nightly", start, end)
    assert [r.created for r in first] == [True] * 5
    second = await engine.backfill("nightly", start, end)
    assert [r.created for r in second] == [False] * 5
    assert [r.run_id for r in second] == [r.run_id for r in first]


async def test_pause_resume_trigger_delete(engine: Engine) -> None:
    report = _register(engine)
    record = await engine.schedule(report, cron="* * * * *", id="minutely")
    assert record.next_tick is not None and not record.paused
    assert (await engine.pause("minutely")).paused
    assert (await engine.sweep_schedules(now=datetime(2099, 1, 1, tzinfo=UTC))).started == 0
    resumed = await engine.resume("minutely")
    assert not resumed.paused and resumed.last_tick is not None
    triggered = await engine.trigger("minutely")
    assert triggered.created
    assert (await engine.get_schedule("minutely")).last_run_id == triggered.run_id
    await engine.delete_schedule("minutely")
    assert await engine.list_schedules() == []
    with pytest.raises(FlowError) as caught:
        await engine.pause("minutely")
    assert caught.value.error_code == "SCHEDULE_NOT_FOUND"


@pytest.mark.parametrize(
    ("kwargs", "code", "text"),
    [
        ({"cron": "0 25 * * *"}, "SCHEDULE_INVALID", "field 2 (hour) '25'"),
        ({"cron": "0 9 * * *", "tz": "Mars/Olympus"}, "SCHEDULE_INVALID", "unknown time zone"),
        (
            {
                "cron": "0 9 * * *",
                "start_at": datetime(2030, 2, 1, tzinfo=UTC),
                "end_at": datetime(2030, 1, 1, tzinfo=UTC),
            },
            "SCHEDULE_INVALID",
            "must be after start_at",
        ),
        ({"cron": "0 9 * * *", "overlap": "queue"}, "SCHEDULE_INVALID", "unknown overlap"),
        ({"cron": "0 9 * * *", "catchup": "0s"}, "SCHEDULE_INVALID", "catchup"),
    ],
)
async def test_refusals_write_nothing(
    engine: Engine, kwargs: dict[str, Any], code: str, text: str
) -> None:
    report = _register(engine)
    with pytest.raises(FlowError) as caught:
        await engine.schedule(report, id="bad", **kwargs)
    assert caught.value.error_code == code and text in caught.value.message
    assert await engine.list_schedules() == []


@pytest.mark.parametrize("bad", ["\ud800", "report\udfff", "a\x00b", "x" * 201])
async def test_an_id_postgresql_cannot_store_is_refused_by_every_schedule_call(
    eng: Engine, bad: str
) -> None:
    """Lone surrogates, NUL and overlong ids never reach the store, on both stores: creating
    is SCHEDULE_INVALID, every lookup SCHEDULE_NOT_FOUND, and nothing is written."""
    report = _register(eng)
    with pytest.raises(FlowError) as created:
        await eng.schedule(report, cron="0 9 * * *", id=bad)
    assert created.value.error_code == "SCHEDULE_INVALID"
    assert created.value.message.startswith("a schedule id ")
    start, end = datetime(2030, 1, 1, tzinfo=UTC), datetime(2030, 1, 2, tzinfo=UTC)
    lookups: list[Callable[[str], Awaitable[object]]] = [
        eng.get_schedule,
        eng.schedule_events,
        eng.pause,
        eng.resume,
        eng.delete_schedule,
        eng.trigger,
        lambda schedule_id: eng.backfill(schedule_id, start, end),
    ]
    for lookup in lookups:
        with pytest.raises(FlowError) as caught:
            await lookup(bad)
        assert caught.value.error_code == "SCHEDULE_NOT_FOUND", lookup
    assert await eng.list_schedules() == []


async def test_input_and_conflicts(engine: Engine) -> None:
    @engine.flow("other", input=Other, output=Other)
    async def other(ctx: FlowContext, value: Other) -> Other:
        return value

    with pytest.raises(FlowError, match=r"not iterflow\.Tick") as caught:
        await engine.schedule(other, cron="0 9 * * *")
    assert caught.value.error_code == "SCHEDULE_INVALID"
    with pytest.raises(FlowError) as bad_input:
        await engine.schedule(other, cron="0 9 * * *", input={"n": "x"})
    assert bad_input.value.error_code == "INPUT_INVALID"
    first = await engine.schedule(other, cron="0 9 * * *", input={"n": 1}, id="o")
    same = await engine.schedule(other, cron="0 9 * * *", input={"n": 1}, id="o")
    assert same == first
    with pytest.raises(FlowError) as conflict:
        await engine.schedule(other, cron="0 10 * * *", input={"n": 1}, id="o")
    assert conflict.value.error_code == "SCHEDULE_CONFLICT"
    assert (await engine.get_schedule("o")).spec.cron == "0 9 * * *"


async def test_code_declared_schedules_are_upserted_and_paused_when_removed(
    database_url: str,
) -> None:
    async def body(ctx: FlowContext, tick: Tick) -> Report:
        return Report(at=tick.schedule_id)

    async with Engine(database_url) as first:
        first.flow(
            "digest", input=Tick, output=Report, schedule="0 9 * * MON-FRI", tz="Europe/Paris"
        )(body)
        await first.sync_schedules()
        record = await first.get_schedule("digest")
        assert (record.spec.source, record.spec.cron, record.spec.tz) == (
            "code",
            "0 9 * * MON-FRI",
            "Europe/Paris",
        )
    async with Engine(database_url) as changed:
        changed.flow("digest", input=Tick, output=Report, schedule="0 10 * * *")(body)
        await changed.sync_schedules()
        redefined = await changed.get_schedule("digest")
        assert redefined.spec.cron == "0 10 * * *" and redefined.spec.tz == "UTC"
        assert redefined.next_tick is not None and redefined.next_tick.hour == 10
    async with Engine(database_url) as removed:
        removed.flow("digest", input=Tick, output=Report)(body)
        await removed.sync_schedules()
        assert (await removed.get_schedule("digest")).paused
        events = await removed.schedule_events("digest")
        assert events[0].type == "removed_from_code"
    async with Engine(database_url) as back:
        back.flow("digest", input=Tick, output=Report, schedule="0 10 * * *")(body)
        await back.sync_schedules()
        assert not (await back.get_schedule("digest")).paused


def test_a_scheduled_flow_must_take_a_tick() -> None:
    engine = Engine.in_memory()
    with pytest.raises(FlowError, match=r"not iterflow\.Tick"):

        @engine.flow("x", input=Other, output=Other, schedule="0 9 * * *")
        async def x(ctx: FlowContext, value: Other) -> Other:
            return value

    with pytest.raises(FlowError, match="field 1 \\(minute\\)"):

        @engine.flow("y", input=Tick, output=Other, schedule="61 9 * * *")
        async def y(ctx: FlowContext, value: Tick) -> Other:
            return Other(n=1)


async def test_in_memory_schedules_fire_through_drain() -> None:
    clock = FakeClock(datetime(2030, 1, 1, 8, 59, tzinfo=UTC))
    engine = Engine.in_memory(clock=clock)

    @engine.flow("tick", input=Tick, output=Report, schedule="0 * * * *")
    async def tick(ctx: FlowContext, value: Tick) -> Report:
        return Report(at=value.scheduled_at.isoformat())

    async with engine:
        assert await engine.drain() == 0
        clock.advance("1m")
        assert await engine.drain() == 1
        clock.advance("2h")
        assert await engine.drain() == 1  # no catch-up: the latest missed tick only
        runs = (await engine.list_runs(name="tick")).runs
        outputs = sorted(r.output["at"] for r in runs)
        assert outputs == ["2030-01-01T09:00:00+00:00", "2030-01-01T11:00:00+00:00"]
        assert schedule_spec(id="tick", flow="tick", cron="0 * * * *").cron == "0 * * * *"


async def test_a_scheduled_run_shows_its_schedule_and_tick(engine: Engine) -> None:
    """Each run records its schedule and tick (meta and a ``schedule:<id>`` tag), and the
    timeline that ``flowctl show`` prints names them."""
    from iterflow.core.timeline import render_timeline

    report = _register(engine)
    await engine.schedule(report, cron="0 * * * *", id="hourly")
    t0 = datetime(2040, 1, 1, tzinfo=UTC)
    await _set_state(engine, "hourly", t0, t0 + timedelta(hours=1))
    assert (await engine.sweep_schedules(now=t0 + timedelta(hours=1, minutes=1))).started == 1
    (run,) = await _runs(engine)
    tick = (t0 + timedelta(hours=1)).isoformat()
    assert run.meta["schedule_id"] == "hourly" and run.meta["scheduled_at"] == tick
    assert "schedule:hourly" in run.tags
    text = render_timeline(await engine.status(run.id))
    assert f"schedule: hourly tick {tick}" in text and "tags: schedule:hourly" in text


async def test_a_live_worker_starts_a_due_tick_within_seconds(
    engine: Engine, database_url: str
) -> None:
    """No direct sweep: the periodic task (every second) of a worker at the default settings
    starts the run of a tick that has just become due, within a few seconds."""
    defaults, settings = Settings(), engine.settings
    for name in ("worker_poll_interval", "lease_seconds", "reconcile_every_seconds"):
        assert getattr(settings, name) == getattr(defaults, name), name
    report = _register(engine)
    await engine.schedule(report, cron="* * * * *", id="live")
    await engine.listen(concurrency=2)
    task = schedule_task_name(engine.settings.db_schema)

    async def deferring() -> bool:
        rows = sql(
            database_url,
            "SELECT count(*) FROM procrastinate_periodic_defers WHERE task_name = %s",
            task,
        )
        return bool(rows[0][0])

    await eventually(deferring, timeout=30, what="the worker's periodic sweep")
    # The current minute's tick becomes due now (as if the schedule was created a minute ago).
    ((tick,),) = sql(
        database_url,
        "UPDATE iterflow.schedules SET last_tick = date_trunc('minute', now()) - interval '1m', "
        "next_tick = date_trunc('minute', now()) WHERE id = 'live' RETURNING next_tick",
    )
    due_at = time.monotonic()  # committed: due from now on
    key = tick_idempotency_key("live", tick)

    async def started() -> bool:
        return bool(
            sql(database_url, "SELECT 1 FROM iterflow.runs WHERE idempotency_key = %s", key)
        )

    await eventually(started, timeout=15, what="the due tick's run")
    lateness = time.monotonic() - due_at  # an upper bound: polled every 20 ms
    ((run_id,),) = sql(database_url, "SELECT id FROM iterflow.runs WHERE idempotency_key = %s", key)
    assert lateness < 5.0, f"the run started {lateness:.1f} s after its tick became due"
    assert await report.result(run_id, timeout=15) == Report(at=tick.isoformat())
    record = await engine.get_schedule("live")
    assert record.last_tick is not None and record.last_tick >= tick
    assert [e.type for e in await engine.schedule_events("live", limit=1)] == ["started"]
    print(f"\ndue -> run seen started by the periodic sweep: {lateness:.2f} s")


async def test_an_idle_sweep_reads_no_schedule_row_even_on_a_generic_plan(
    database_url: str,
) -> None:
    """Regression: the due query's bound ``now`` let PostgreSQL's plan cache switch to a generic
    plan (after sweeps with many due rows made the custom plans look expensive), an ordered scan
    of the whole ``next_tick`` index that read every schedule on every idle sweep (10,000 rows a
    second for 10,000 schedules in ``python -m bench --only schedules``). The sweep forces a
    custom plan for its transaction; the database here defaults to generic plans."""
    name = sql(database_url, "SELECT current_database()")[0][0]
    sql(database_url, f"ALTER DATABASE {name} SET plan_cache_mode = force_generic_plan")
    sql(
        database_url,
        "INSERT INTO iterflow.schedules (id, flow, cron, tz, source, last_tick, next_tick) "
        "SELECT 'idle' || i, 'report', '0 * * * *', 'UTC', 'api', now(), now() + interval '1h' "
        "FROM generate_series(1, 2000) AS i",
    )
    sql(database_url, "ANALYZE iterflow.schedules")
    async with Engine(database_url, pool_size=1) as engine:
        _register(engine)
        for _ in range(10):
            assert (await engine.sweep_schedules()).schedules == 0
    query = (
        "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) "
        "FROM pg_stat_user_tables WHERE schemaname = 'iterflow' AND relname = 'schedules'"
    )
    read = [sql(database_url, query)[0][0]]
    for _ in range(20):  # the engine's backends flush their counters as they exit
        await asyncio.sleep(0.1)
        read.append(sql(database_url, query)[0][0])
    assert read[-1] < 100, f"10 idle sweeps read {read[-1]} schedule rows"
