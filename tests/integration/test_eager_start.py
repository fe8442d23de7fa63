"""A start in a process whose worker runs is written already claimed and attempted at once
(``iterflow.runtime.eager``): one commit for start and claim, no wake-up job. Runs it cannot
take that way (a flow-control limit, a delay, a run key, a flow version it does not serve, no
free slot) go through the queue as before; a crash of the starting process is recovered from
the lease by another worker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import textwrap
import uuid
from pathlib import Path

import asyncpg
import pytest
from pydantic import BaseModel

from iterflow import Engine, FlowContext
from iterflow.core.models import RunStatus
from iterflow.runtime.notify import TerminalListener
from iterflow.store.outbox import flow_queue
from iterflow.store.urls import libpq_url
from tests.integration.flows import eventually, jobs_of, sql

ROOT = Path(__file__).parent.parent.parent


class Num(BaseModel):
    n: int


async def add(ctx: FlowContext, x: Num) -> int:
    total = x.n
    for i in range(3):

        async def one_more(t: int = total) -> int:
            return t + 1

        total = await ctx.step(f"add-{i}", one_more)
    return total


def statuses(url: str, run_id: uuid.UUID) -> list[str]:
    return [status for _, status in jobs_of(url, run_id)]


async def test_a_start_with_a_worker_here_is_claimed_in_its_commit_and_finishes(
    engine: Engine, database_url: str
) -> None:
    handle = engine.flow("eager-add", input=Num, output=int)(add)
    await engine.listen(concurrency=2)
    started = await handle.start(Num(n=1))
    assert started.created and started.status is RunStatus.RUNNING
    assert "todo" not in statuses(database_url, started.run_id)  # no wake-up was queued for it
    assert await handle.result(started.run_id, timeout=15) == 4
    assert statuses(database_url, started.run_id) == []  # its finish ended the job it held
    detail = await engine.status(started.run_id)
    assert detail.run.claims == 1 and detail.run.status is RunStatus.DONE
    types = [e.type for e in detail.events]
    assert types[0] == "started" and types[-1] == "completed"


async def test_limited_delayed_and_unserved_flows_go_through_the_queue(engine: Engine) -> None:
    limited = engine.flow("eager-limited", input=Num, output=int, concurrency=1)(add)
    plain = engine.flow("eager-add", input=Num, output=int)(add)
    other = engine.flow("eager-other", input=Num, output=int)(add)
    await engine.listen(concurrency=2, flows=["eager-limited", "eager-add"])
    held = await limited.start(Num(n=1))
    later = await plain.start(Num(n=2), delay="1h")
    unserved = await other.start(Num(n=3))
    assert held.status is RunStatus.PENDING
    assert later.status is RunStatus.PENDING
    assert unserved.status is RunStatus.PENDING
    assert await limited.result(held.run_id, timeout=15) == 4


async def test_no_free_slot_queues_the_start(engine: Engine) -> None:
    gate = asyncio.Event()

    @engine.flow("eager-block", input=Num, output=int)
    async def block(ctx: FlowContext, x: Num) -> int:
        await ctx.step("wait", gate.wait)
        return x.n

    await engine.listen(concurrency=1)
    first = await block.start(Num(n=1))
    second = await block.start(Num(n=2))
    assert first.status is RunStatus.RUNNING  # took the one slot
    assert second.status is RunStatus.PENDING  # queued: procrastinate runs it
    gate.set()
    assert await block.result(first.run_id, timeout=15) == 1
    assert await block.result(second.run_id, timeout=15) == 2


async def test_two_engines_starting_concurrently(database_url: str) -> None:
    runs: list[int] = []
    async with Engine(database_url, pool_size=4) as a, Engine(database_url, pool_size=4) as b:
        handles = []
        for eng in (a, b):

            @eng.flow("eager-count", input=Num, output=int)
            async def count(ctx: FlowContext, x: Num) -> int:
                def once() -> int:
                    runs.append(x.n)
                    return x.n

                return await ctx.step("once", once)

            handles.append(count)
            await eng.listen(concurrency=4)
        starts = [h.start(Num(n=i)) for i in range(8) for h in handles]
        keyed = [h.start(Num(n=100), idempotency_key="same") for h in handles]
        results = await asyncio.gather(*starts, *keyed)
        ids = {r.run_id for r in results}
        assert len(ids) == 17  # 16 plain runs and one for the shared key
        created = [r for r in results[16:] if r.created]
        assert len(created) == 1
        for r in results:
            assert await handles[0].result(r.run_id, timeout=30) in {*range(8), 100}
    assert sorted(runs) == sorted([*range(8), *range(8), 100])  # every step ran once


class Go(BaseModel):
    ok: bool


async def test_a_signal_delivered_during_the_attempt_wakes_the_run_when_it_waits(
    database_url: str,
) -> None:
    """At the default settings. The attempt of a start claimed at once holds its run's job lock
    (a ``doing`` job), as a fetched wake-up does: the wake-up a signal queues while the attempt
    runs is not fetched (it used to be, refused by the claim and deleted, and the run waited
    for its signal until the reconciler's sweep found it stranded: a ``rewoken`` event). The
    attempt's suspend ends the held job and NOTIFYs the queued one, which wakes the run."""
    entered, gate = asyncio.Event(), asyncio.Event()
    notified: list[str] = []
    async with Engine(database_url) as engine:

        async def slow() -> int:
            entered.set()
            await gate.wait()
            return 1

        @engine.flow("eager-signal", input=Go, output=bool, signals={"go": Go})
        async def waits(ctx: FlowContext, x: Go) -> bool:
            await ctx.step("slow", slow)
            return (await ctx.signal("go", Go)).ok

        await engine.listen(concurrency=2)
        started = await waits.start(Go(ok=False))
        assert started.status is RunStatus.RUNNING
        await asyncio.wait_for(entered.wait(), 15)
        assert statuses(database_url, started.run_id) == ["doing"]  # the lock its attempt holds
        await engine.signal(started.run_id, "go", Go(ok=True))
        assert statuses(database_url, started.run_id) == ["doing", "todo"]
        queue = flow_queue(engine.settings.queue_name, "eager-signal", 1)
        # procrastinate's own fetch does not hand out the signal's wake-up meanwhile
        fetch = "SELECT id FROM procrastinate_fetch_job_v2(%s, NULL)"
        assert sql(database_url, fetch, [queue]) == [(None,)]
        [(job_id,)] = sql(
            database_url,
            "SELECT id FROM procrastinate_jobs WHERE lock = %s AND status = 'todo'",
            str(started.run_id),
        )
        listener = await asyncpg.connect(libpq_url(database_url))
        try:
            await listener.add_listener(
                f"procrastinate_queue_v1#{queue}", lambda *args: notified.append(args[3])
            )
            gate.set()
            assert await waits.result(started.run_id, timeout=30) is True
        finally:
            await listener.close()
        detail = await engine.status(started.run_id)
    types = [e.type for e in detail.events]
    assert "rewoken" not in types and types[-1] == "completed"
    assert detail.run.claims == 2  # the eager attempt, then the one the signal woke
    woken = [json.loads(n) for n in notified]
    assert {"type": "job_inserted", "job_id": job_id} in woken  # sent by the suspend's commit


async def stuck_eager_run(engine: Engine, name: str) -> uuid.UUID:
    """A run of a new flow ``name``, claimed at its start by the engine's worker, whose
    attempt is inside a step that never ends."""
    entered = asyncio.Event()

    async def forever() -> int:
        entered.set()
        await asyncio.sleep(3600)
        return 0

    @engine.flow(name, input=Num, output=int)
    async def stuck(ctx: FlowContext, x: Num) -> int:
        return await ctx.step("forever", forever)

    await engine.listen(concurrency=2)
    started = await stuck.start(Num(n=1))
    await asyncio.wait_for(entered.wait(), 15)
    return started.run_id


async def cancel_and_see_its_job_ended(engine: Engine, url: str, run_id: uuid.UUID) -> None:
    """Cancel ``run_id`` during its attempt; the attempt's end leaves no job of the run."""
    await engine.cancel(run_id)

    async def ended() -> bool:
        return statuses(url, run_id) == []

    await eventually(ended, what="the canceled attempt to end the job it held")


async def test_an_attempt_that_ends_without_a_write_ends_the_job_it_holds(
    engine: Engine, database_url: str
) -> None:
    """A run canceled during its eager attempt: the attempt stops without a last write of its
    own, and ends the ``doing`` job it held (a retry is then fetched at once, not after the
    reconciler released an orphan)."""
    run_id = await stuck_eager_run(engine, "eager-cancel")
    assert statuses(database_url, run_id) == ["doing"]
    await cancel_and_see_its_job_ended(engine, database_url, run_id)


async def test_a_held_job_an_older_reconciler_marked_failed_is_deleted_at_the_attempts_end(
    engine: Engine, database_url: str
) -> None:
    """An earlier iterflow's reconciler released a held job whose run had no lease any more by
    marking it ``failed`` (this one deletes it); during a rolling deploy it may still do so to a
    run canceled while its attempt runs here. The attempt's end deletes that job rather than
    leaving a failed row behind."""
    run_id = await stuck_eager_run(engine, "eager-released")
    # what the older reconciler's orphan release did to it once the run had no lease
    sql(
        database_url,
        "UPDATE procrastinate_jobs SET status = 'failed' WHERE lock = %s AND status = 'doing'",
        str(run_id),
    )
    assert statuses(database_url, run_id) == ["failed"]
    await cancel_and_see_its_job_ended(engine, database_url, run_id)


CRASHING = textwrap.dedent("""
    import asyncio, sys
    from pydantic import BaseModel
    from iterflow import Engine, FlowContext

    class Num(BaseModel):
        n: int

    async def main() -> None:
        async with Engine(sys.argv[1], pool_size=2, lease_seconds=2) as engine:
            async def hang() -> int:
                print("stepped", flush=True)
                await asyncio.sleep(3600)
                return 0

            @engine.flow("eager-crash", input=Num, output=int)
            async def crash(ctx: FlowContext, x: Num) -> int:
                await ctx.step("first", lambda: 1)
                return await ctx.step("hang", hang)

            await engine.listen(concurrency=2)
            started = await crash.start(Num(n=5))
            print(started.run_id, started.status.value, flush=True)
            await asyncio.sleep(3600)

    asyncio.run(main())
""")


async def test_a_crash_of_the_starting_process_is_recovered_by_another_worker(
    database_url: str,
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASHING,
        database_url,
        stdout=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        run_id, status = line.decode().split()
        assert status == "running"
        stepped = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert stepped.decode().strip() == "stepped"
    finally:
        proc.kill()
        await proc.wait()
    # A worker at the default settings: its periodic reconciler recovers the expired lease.
    async with Engine(database_url, pool_size=4) as engine:

        @engine.flow("eager-crash", input=Num, output=int)
        async def crash(ctx: FlowContext, x: Num) -> int:
            first = await ctx.step("first", lambda: 1)
            return await ctx.step("hang", lambda: first + x.n)

        await engine.listen(concurrency=2)
        assert await crash.result(uuid.UUID(run_id), timeout=60) == 6
        detail = await engine.status(uuid.UUID(run_id))
        assert detail.run.claims == 2
        assert "recovered" in [e.type for e in detail.events]


async def test_closing_right_after_an_eager_run_while_the_worker_starts_never_hangs(
    database_url: str,
) -> None:
    """The run finishes in the starting process before its worker is up: the engine closes
    while the worker is still starting (seen hanging a close when the cancellation was lost)."""
    for _ in range(5):
        async with Engine(database_url) as eng:
            handle = eng.flow("eager-close", input=Num, output=int)(add)
            await eng.listen()
            started = await handle.start(Num(n=0))
            assert await handle.result(started.run_id, timeout=15) == 3
            worker = eng._worker_tasks[0]
        assert worker.done()


async def test_a_worker_whose_cancellation_is_lost_while_starting_still_stops_at_close(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python 3.11's ``asyncio.wait_for`` (in libraries the worker's startup awaits) returns
    normally when it is cancelled just as what it waits for completes. The close's stop event
    ends the worker all the same."""
    original = TerminalListener.start
    entered = asyncio.Event()

    async def start_losing_a_cancel(self: TerminalListener, timeout: float = 10.0) -> None:
        entered.set()
        with contextlib.suppress(asyncio.CancelledError):  # lost, as wait_for loses it
            await asyncio.sleep(0.5)
        await original(self, timeout)

    monkeypatch.setattr(TerminalListener, "start", start_losing_a_cancel)
    async with Engine(database_url) as eng:
        await eng.listen()
        await entered.wait()
        worker = eng._worker_tasks[0]
    assert worker.done() and not worker.cancelled()  # it returned: stopped by the event
