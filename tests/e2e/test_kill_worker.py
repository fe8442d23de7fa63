"""A worker SIGKILLed mid-attempt: checkpointed steps never run again, the run completes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from iterflow import Engine
from tests.e2e.kill_app import Job, four_steps
from tests.e2e.workers import kill, start_worker, stop
from tests.integration.flows import eventually, sql


async def test_sigkill_after_step_two_of_four(database_url: str, tmp_path: Path) -> None:
    counter = tmp_path / "counts.txt"
    release = tmp_path / "release"
    counter.touch()
    async with Engine(database_url, pool_size=2) as client:
        handle = client.register(four_steps.definition)
        run = await handle.start(Job(counter_file=str(counter), release_file=str(release)))

        first = start_worker("kill_app:engine", database_url, tmp_path / "worker1.log")
        try:

            async def step3_running() -> bool:
                return "s3" in counter.read_text().split()

            await eventually(step3_running, timeout=60, what="step 3 to start on worker 1")
            checkpointed = sql(
                database_url,
                "SELECT cursor_key FROM iterflow.steps WHERE run_id = %s ORDER BY position",
                run.run_id,
            )
            assert checkpointed == [("s1",), ("s2",)]
        finally:
            kill(first)  # SIGKILL: no cleanup, lease left to expire
        print(f"injected: SIGKILL worker pid {first.pid} during step s3 of run {run.run_id}")

        release.touch()
        second = start_worker("kill_app:engine", database_url, tmp_path / "worker2.log")
        try:
            result = await handle.result(run.run_id, timeout=60)
        finally:
            stop(second)

    assert result == ["s1", "s2", "s3", "s4"]
    runs = Counter(counter.read_text().split())
    assert runs == Counter(s1=1, s2=1, s3=2, s4=1), runs
    events = [e for (e,) in sql(database_url, "SELECT type FROM iterflow.events ORDER BY id")]
    assert "recovered" in events
    print(f"verified: step executions {dict(runs)}; s1/s2 not re-run after their checkpoint")
