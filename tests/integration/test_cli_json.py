"""flowctl's operator surface (issue 13): ``--json`` shapes, list filters and the "more" hint,
``show`` in full, ``explain``, ``workers``, ``retry --resume``, ``fork``, bulk retry/cancel with
``--dry-run``, exit statuses of results that changed nothing, ``--data-dir``, ``--version``,
a light ``--help`` and progress lines.

The engine runs in the test's event loop (with a live worker where runs must move); flowctl's
``main`` runs in a thread (it runs its own event loop), as an operator's shell would beside it.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from iterflow import Engine, FlowContext
from iterflow.cli import main
from iterflow.cli.common import Progress
from iterflow.core.models import RunStatus
from tests.integration.flows import Approval, OrderIn, Receipt, settle
from tests.integration.test_flows import order_flow, wait_status

RUN_ID = "00000000-0000-4000-8000-000000000000"


async def flowctl(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, str, str]:
    """Run flowctl on ``url`` (in a thread); return its exit status, stdout and stderr."""
    capsys.readouterr()
    status = await asyncio.to_thread(main, ["--database-url", url, *argv])
    out, err = capsys.readouterr()
    return status, out, err


async def as_json(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> Any:
    status, out, err = await flowctl(capsys, url, *argv, "--json")
    assert status == 0, err
    return json.loads(out)


@pytest.fixture
async def live(database_url: str) -> AsyncIterator[tuple[Engine, Any, Counter[str]]]:
    """An engine with the order flow and a running worker."""
    calls: Counter[str] = Counter()
    async with Engine(database_url, pool_size=4) as engine:
        handle = order_flow(engine, calls)
        await engine.listen(concurrency=2)
        yield engine, handle, calls


# --- list -------------------------------------------------------------------------------------


async def test_list_filters_json_shape_and_a_more_hint_that_keeps_them(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with Engine(database_url) as engine:
        handle = order_flow(engine, Counter())
        ids = [
            (
                await handle.start(OrderIn(order_id=f"o{i}", amount=i), tags=["a", f"n{i % 2}"])
            ).run_id
            for i in range(5)
        ]
        other = await handle.start(
            OrderIn(order_id="x", amount=1), tags=["b"], idempotency_key="k1"
        )

    page = await as_json(capsys, database_url, "list", "--tag", "a", "--tag", "n0", "--limit", "2")
    assert [r["id"] for r in page["runs"]] == [str(ids[4]), str(ids[2])]
    run = page["runs"][0]
    assert set(run) == {
        "id", "flow", "version", "status", "tags", "idempotency_key", "parent_run_id",
        "waiting_for", "wake_at", "error_code", "created_at", "started_at", "finished_at",
        "updated_at", "cursor",
    }  # fmt: skip
    assert run["flow"] == "order" and run["status"] == "pending" and run["tags"] == ["a", "n0"]
    assert run["created_at"].endswith("+00:00")  # timestamps carry their zone
    more = page["more"]
    assert more == f"flowctl list --tag a --tag n0 --limit 2 --cursor {page['next_cursor']}"

    # the hint's own arguments give the next page, filters kept
    status, out, _ = await flowctl(capsys, database_url, *more.split()[1:])
    assert status == 0
    assert str(ids[0]) in out and str(ids[1]) not in out and "more:" not in out
    assert "+00:00" in out

    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    page = await as_json(
        capsys, database_url, "list", "--flow", "order", "--version", "1",
        "--idempotency-key", "k1", "--since", since, "--until", "1h",
    )  # fmt: skip
    assert page["runs"] == []  # created after "1h ago" is before --until: nothing
    page = await as_json(capsys, database_url, "list", "--idempotency-key", "k1", "--since", "1h")
    assert [r["id"] for r in page["runs"]] == [str(other.run_id)]
    page = await as_json(capsys, database_url, "list", "--since", "1h", "--limit", "1")
    # a relative time is resolved in the hint, so every page uses the same window
    assert "--since 20" in page["more"] and "+00:00" in page["more"]
    page = await as_json(capsys, database_url, "list", "--id", str(ids[3])[:8])
    assert [r["id"] for r in page["runs"]] == [str(ids[3])]

    status, _, err = await flowctl(capsys, database_url, "list", "--since", "2030-01-01T00:00")
    assert status == 2 and "CONFIG_INVALID" in err and "no UTC offset" in err


# --- show, explain, workers ---------------------------------------------------------------------


async def test_show_prints_everything_and_marks_what_it_cuts(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with Engine(database_url) as engine:

        @engine.flow("big", input=dict[str, Any], output=dict[str, Any])
        async def big(ctx: FlowContext, data: dict[str, Any]) -> dict[str, Any]:
            return data

        run_id = (await big.start({"blob": "x" * 5000}, tags=["t"])).run_id
        claim = await engine.store.claim(run_id, "test", 30)
        assert claim is not None
        error = {
            "code": "FLOW_FAILED",
            "message": "flow body raised ValueError: bad",
            "traceback": 'Traceback (most recent call last):\n  File "app.py", line 3\nValueError',
        }
        await engine.store.finish(claim.lease, RunStatus.FAILED, None, error)

    status, out, _ = await flowctl(capsys, database_url, "show", str(run_id))
    assert status == 0
    assert f"run {run_id}  big@1  status=failed" in out
    assert "why: failed at " in out and "(FLOW_FAILED)" in out
    assert "error: [FLOW_FAILED] flow body raised ValueError: bad" in out
    assert "  traceback:\n    Traceback (most recent call last):" in out and "ValueError" in out
    assert "more characters; --full prints all]" in out and "x" * 5000 not in out
    assert "tags: t" in out and "steps: 0 (--steps lists them)" in out
    status, out, _ = await flowctl(capsys, database_url, "show", str(run_id), "--full")
    assert "x" * 5000 in out and "--full prints all" not in out
    status, out, _ = await flowctl(capsys, database_url, "show", str(run_id), "--events")
    assert "events (2):" in out and "  started  " in out and "  failed  " in out

    shown = await as_json(capsys, database_url, "show", str(run_id))
    assert set(shown) == {
        "run", "explanation", "children", "children_total", "steps", "events", "signals",
        "timers",
    }  # fmt: skip
    assert shown["run"]["input"] == {"blob": "x" * 5000}  # JSON is never cut
    assert shown["run"]["error"] == error
    assert shown["explanation"]["state"] == "terminal"


async def test_show_steps_children_explain_and_workers(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with Engine(database_url, pool_size=4) as engine:

        @engine.flow("kid", input=int, output=int)
        async def kid(ctx: FlowContext, n: int) -> int:
            return n

        @engine.flow("parent", input=int, output=int, signals={"go": Approval})
        async def parent(ctx: FlowContext, n: int) -> int:
            total = await ctx.step("add", lambda: n + 1)
            total += await ctx.invoke(kid, 2)
            await ctx.signal("go", Approval)
            return total

        assert (await as_json(capsys, database_url, "workers"))["workers"] == []
        await engine.listen()
        run_id = (await parent.start(3)).run_id
        await wait_status(engine, run_id, RunStatus.AWAITING_SIGNAL)

        status, out, _ = await flowctl(capsys, database_url, "show", str(run_id), "--steps")
        assert "why: waiting for signal go since " in out
        assert "waiting_for: signal:go" in out
        assert "children (1):" in out and "kid@1  done  at invoke:kid" in out
        assert "steps (2):" in out
        assert "#0   add  step ok  attempts=1  took=" in out and "s  at 20" in out

        explained = await as_json(capsys, database_url, "explain", str(run_id))
        assert explained["state"] == "waiting_signal"
        assert explained["wakes_on"] == "signal 'go' is delivered"
        assert explained["reconciler"].startswith("re-enqueues a wake-up")
        [worker_id] = explained["workers"]["serving"]
        status, out, _ = await flowctl(capsys, database_url, "explain", str(run_id))
        assert status == 0 and "state=waiting_signal" in out
        assert "workers: 1 of 1 live worker(s) run parent@1" in out

        [worker] = (await as_json(capsys, database_url, "workers"))["workers"]
        assert worker["id"] == worker_id and worker["stale"] is False
        assert worker["flows"] == ["kid@1", "parent@1"]
        assert worker["heartbeat_at"].endswith("+00:00")
        status, out, _ = await flowctl(capsys, database_url, "workers")
        assert "live" in out and "flows: kid@1, parent@1" in out

    # a clean stop unregisters: no live worker knows parent@1 any more
    assert (await as_json(capsys, database_url, "workers"))["workers"] == []
    explained = await as_json(capsys, database_url, "explain", str(run_id))
    assert explained["state"] == "no_worker" and explained["workers"]["serving"] == []
    assert "no worker for this flow (parent@1)" in explained["summary"]


# --- retry --resume, fork, bulk -----------------------------------------------------------------


async def test_retry_resume_continues_a_canceled_run_where_it_stopped(
    live: tuple[Engine, Any, Counter[str]], database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    engine, handle, calls = live
    run_id = (await handle.start(OrderIn(order_id="r", amount=2))).run_id
    await wait_status(engine, run_id, RunStatus.AWAITING_SIGNAL)
    assert (await engine.cancel(run_id)).kind == "canceled"

    status, out, _ = await flowctl(capsys, database_url, "retry", str(run_id), "--json")
    assert status == 5 and json.loads(out) == {
        "run_id": str(run_id),
        "result": "not_failed",
        "status": "canceled",
    }
    status, out, _ = await flowctl(capsys, database_url, "retry", str(run_id), "--resume")
    assert (status, out) == (0, "queued\n")
    await wait_status(engine, run_id, RunStatus.AWAITING_SIGNAL)
    assert (await engine.signal(run_id, "approve", {"approved": True})).kind == "delivered"
    receipt = await handle.result(run_id, timeout=20)
    assert receipt == Receipt(order_id="r", charged=200, approved_by="ops")
    assert calls == Counter(reserve=1, charge=1)  # nothing ran twice
    events = [e.type for e in (await engine.status(run_id)).events]
    assert "resumed" in events and events[-1] == "completed"


async def test_fork_reuses_the_steps_before_the_key(
    live: tuple[Engine, Any, Counter[str]], database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    engine, handle, calls = live
    source = (await handle.start(OrderIn(order_id="f", amount=3), tags=["x"])).run_id
    await wait_status(engine, source, RunStatus.AWAITING_SIGNAL)
    await engine.signal(source, "approve", {"approved": True, "by": "ana"})
    await handle.result(source, timeout=20)
    assert calls == Counter(reserve=1, charge=1)

    forked = await as_json(capsys, database_url, "fork", str(source), "--from-step", "charge")
    assert forked["source"] == str(source) and forked["from_step"] == "charge"
    assert forked["status"] == "pending"
    new_id = uuid.UUID(forked["run_id"])
    await wait_status(engine, new_id, RunStatus.AWAITING_SIGNAL)
    await engine.signal(new_id, "approve", {"approved": True, "by": "bo"})
    assert await handle.result(new_id, timeout=20) == Receipt(
        order_id="f", charged=300, approved_by="bo"
    )
    assert calls == Counter(reserve=1, charge=2)  # reserve reused, charge and after replayed
    run = (await engine.status(new_id)).run
    assert run.tags == ("x",) and run.meta["forked_from"] == str(source)

    status, _, err = await flowctl(capsys, database_url, "fork", str(source), "--from-step", "x")
    assert status == 1 and "FORK_STEP_UNKNOWN" in err and "reserve, charge" in err
    status, _, err = await flowctl(capsys, database_url, "fork", RUN_ID)
    assert status == 4 and "RUN_NOT_FOUND" in err


async def test_bulk_cancel_and_retry_by_filter_with_dry_run(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with Engine(database_url) as engine:
        handle = order_flow(engine, Counter())
        ids = [
            (await handle.start(OrderIn(order_id=f"b{i}", amount=1), tags=["bulk"])).run_id
            for i in range(3)
        ]
        await handle.start(OrderIn(order_id="other", amount=1), tags=["keep"])

    dry = await as_json(capsys, database_url, "cancel", "--tag", "bulk", "--dry-run")
    assert dry == {
        "action": "cancel",
        "dry_run": True,
        "matched": 3,
        "acted": 3,
        "outcomes": {"would_cancel": 3},
        "run_ids": [str(i) for i in ids],  # oldest first
    }
    listed = await as_json(capsys, database_url, "list", "--status", "canceled")
    assert listed["runs"] == []  # a dry run changes nothing

    status, out, err = await flowctl(capsys, database_url, "cancel", "--tag", "bulk")
    assert status == 0 and out == "3 run(s) matched; cancel: 3 (canceled 3)\n"
    assert "cancel runs: 3/3 (" in err  # progress, plain lines when not on a terminal
    listed = await as_json(capsys, database_url, "list", "--status", "canceled")
    assert sorted(r["id"] for r in listed["runs"]) == sorted(str(i) for i in ids)

    dry = await as_json(capsys, database_url, "retry", "--tag", "bulk", "--resume", "--dry-run")
    assert dry["outcomes"] == {"would_resume": 3} and dry["acted"] == 3
    done = await as_json(capsys, database_url, "retry", "--tag", "bulk")
    assert done["outcomes"] == {"not_failed": 3} and done["acted"] == 0
    done = await as_json(capsys, database_url, "retry", "--tag", "bulk", "--resume")
    assert done["outcomes"] == {"queued": 3} and done["acted"] == 3

    status, _, err = await flowctl(capsys, database_url, "retry")
    assert status == 2 and "needs a run id, or filters" in err
    status, _, err = await flowctl(capsys, database_url, "retry", RUN_ID, "--tag", "bulk")
    assert status == 2 and "not both" in err


async def test_results_that_changed_nothing_have_their_own_exit_status(
    database_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    assert (await flowctl(capsys, database_url, "retry", RUN_ID))[:2] == (4, "missing\n")
    assert (await flowctl(capsys, database_url, "cancel", RUN_ID))[:2] == (4, "not_found\n")
    status, out, err = await flowctl(capsys, database_url, "explain", RUN_ID, "--json")
    assert status == 4 and "RUN_NOT_FOUND" in err
    assert json.loads(out) == {
        "error": {"code": "RUN_NOT_FOUND", "message": f"no run {RUN_ID}"},
        "exit": 4,
    }
    (tmp_path / "sig_app.py").write_text(
        "from collections import Counter\n"
        "from iterflow import Engine\n"
        "from tests.integration.test_flows import order_flow\n"
        "engine = Engine()\n"
        "order_flow(engine, Counter())\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    signal = ("signal", "sig_app:engine")
    status, out, _ = await flowctl(capsys, database_url, *signal, RUN_ID, "approve", "{}", "--json")
    assert status == 4 and json.loads(out)["result"] == "not_found"

    async with Engine(database_url) as engine:
        handle = order_flow(engine, Counter())
        run_id = str((await handle.start(OrderIn(order_id="c", amount=1))).run_id)
        assert (await engine.cancel(run_id)).kind == "canceled"
    payload = json.dumps({"approved": True})
    status, out, _ = await flowctl(capsys, database_url, *signal, run_id, "approve", payload)
    assert (status, out) == (6, "closed\n")


# --- the process: --data-dir, --version, --help ---------------------------------------------------


def test_read_commands_never_create_an_embedded_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ITERFLOW_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    data_dir = tmp_path / "nothing-here"
    for argv in (["list"], ["show", RUN_ID], ["explain", RUN_ID], ["workers"], ["retry", RUN_ID]):
        assert main(["--data-dir", str(data_dir), *argv]) == 3
        err = capsys.readouterr().err
        assert "DATABASE_UNAVAILABLE" in err and str(data_dir / "pgdata") in err
        assert "flowctl migrate" in err
    assert not data_dir.exists()


def test_version_and_a_light_help() -> None:
    version = subprocess.run(
        [sys.executable, "-m", "iterflow.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert version.stdout.startswith("flowctl ")
    probe = (
        "import sys\n"
        "from iterflow.cli import main\n"
        "code = main(['--help'])\n"
        "heavy = ('sqlalchemy', 'asyncpg', 'procrastinate', 'psycopg', 'alembic', 'pgserver',\n"
        "         'iterflow.runtime', 'iterflow.store', 'asyncio')\n"
        "print('LOADED', [m for m in heavy if m in sys.modules], code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert "LOADED [] 0" in result.stdout
    for command in ("list", "show", "explain", "fork", "retry", "cancel", "workers", "signal"):
        assert f"    {command}" in result.stdout


def test_progress_rewrites_one_line_on_a_terminal_and_prints_lines_otherwise() -> None:
    ticks = iter(float(i) for i in range(100))
    plain = io.StringIO()
    progress = Progress("gc", stream=plain, tty=False, every=5.0, clock=lambda: next(ticks))
    for done in range(1, 13):
        progress(done, 12)
    progress.close()
    lines = plain.getvalue().splitlines()
    assert lines[0].startswith("gc: 1/12 (") and lines[-1].startswith("gc: 12/12 (")
    assert len(lines) == 4 and all(line.endswith("/s)") for line in lines)

    ticks = iter(float(i) for i in range(100))
    term = io.StringIO()
    progress = Progress("gc", stream=term, tty=True, clock=lambda: next(ticks))
    for done in range(1, 4):
        progress(done, 3)
    progress.close()
    text = term.getvalue()
    assert text.count("\r\x1b[K") == 3 and text.endswith("/s)\n")
    assert text.rsplit("\r\x1b[K", 1)[1].startswith("gc: 3/3 (")
    assert "\n" not in text[:-1]


PROGRESS_LINE = re.compile(r"^(?P<label>[a-z ]+): (?P<done>\d+)/(?P<total>\d+) \(\d+\.\d/s\)$")


def progress_lines(err: str, label: str) -> list[tuple[int, int]]:
    """The ``(done, total)`` of each plain progress line labeled ``label`` on stderr."""
    found = [PROGRESS_LINE.match(line) for line in err.splitlines()]
    return [(int(m["done"]), int(m["total"])) for m in found if m and m["label"] == label]


async def test_migrate_reports_its_progress_in_plain_lines(
    empty_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from alembic.script import ScriptDirectory

    from iterflow.store.migrate import make_config

    revisions = len(list(ScriptDirectory.from_config(make_config()).walk_revisions()))
    status, out, err = await flowctl(capsys, empty_database_url, "migrate")
    assert status == 0 and out.startswith("migrated schema 'iterflow'"), err
    # Told once the revisions to apply are known, then (not on a terminal) the final count.
    assert progress_lines(err, "migrate revisions") == [(0, revisions), (revisions, revisions)]
    status, _, err = await flowctl(capsys, empty_database_url, "migrate")
    assert status == 0 and progress_lines(err, "migrate revisions") == [(0, 0)]  # up to date


async def test_backfill_reports_its_progress_in_plain_lines(
    database_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    (tmp_path / "hourly_app.py").write_text(
        "from iterflow import Engine, FlowContext, Tick\n"
        "engine = Engine()\n"
        "@engine.flow('hourly', input=Tick, output=Tick)\n"
        "async def hourly(ctx: FlowContext, tick: Tick) -> Tick:\n"
        "    return tick\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import hourly_app

    async with Engine(database_url) as engine:  # the schedule row, from the app's flow
        await engine.schedule(hourly_app.hourly, cron="0 * * * *", id="hourly")
    # 2030-01-01 00:00 to 2030-01-07 05:00 UTC, hourly: 150 ticks, started 100 per batch.
    window = ("2030-01-01T00:00+00:00", "2030-01-07T05:00+00:00")
    argv = ("schedules", "backfill", "hourly_app:engine", "hourly", *window)
    status, out, err = await flowctl(capsys, database_url, *argv)
    assert (status, out) == (0, "150 tick(s): 150 run(s) started, 0 existed\n"), err
    # The first batch's count, then (not on a terminal) the final one.
    assert progress_lines(err, "backfill ticks") == [(100, 150), (150, 150)]
    status, out, err = await flowctl(capsys, database_url, *argv, "--json")
    assert status == 0 and json.loads(out)["created"] == 0  # ticks that ran start nothing
    assert progress_lines(err, "backfill ticks") == [(100, 150), (150, 150)]


# --- docs/operations.md --------------------------------------------------------------------------


async def test_the_operations_example_is_in_the_page_and_runs() -> None:
    import importlib.util

    root = Path(__file__).resolve().parents[2]
    example = (root / "docs" / "examples" / "operations.py").read_text()
    assert f"```python\n{example}```" in (root / "docs" / "operations.md").read_text()
    spec = importlib.util.spec_from_file_location(
        "operations_example", root / "docs" / "examples" / "operations.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert await module.main() == {
        "output": 42,
        "calls": {"price": 3, "charge": 2},  # the fork reused "price"; the batch priced twice
        "preview": {"would_cancel": 2},
        "canceled": {"canceled": 2},
    }


def _worker_process(
    tmp_path: Path, app: str, argv: list[str], env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """``python -m iterflow.cli <argv>``, with ``app`` (a module's source) importable under the
    module name of argv's ``<module>:engine``."""
    import os

    root = Path(__file__).resolve().parents[2]
    module = next(a for a in argv if a.endswith(":engine")).split(":")[0]
    (tmp_path / f"{module}.py").write_text(app)
    paths = os.pathsep.join([str(root), str(tmp_path)])
    return subprocess.Popen(
        [sys.executable, "-m", "iterflow.cli", *argv],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": paths, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_worker_process_registers_logs_json_and_unregisters_on_sigterm(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import signal
    import time

    app = (
        "from collections import Counter\n"
        "from iterflow import Engine\n"
        "from tests.integration.test_flows import order_flow\n"
        "engine = Engine()\n"
        "order_flow(engine, Counter())\n"
    )
    argv = ["--json", "--database-url", database_url, "worker", "wk_app:engine"]
    proc = _worker_process(tmp_path, app, argv)
    try:
        deadline = time.monotonic() + 60
        workers: list[dict[str, Any]] = []
        while not workers:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the worker did not register"
            capsys.readouterr()
            assert main(["--database-url", database_url, "workers", "--json"]) == 0
            workers = json.loads(capsys.readouterr().out)["workers"]
            time.sleep(0.05)  # polling an external process, with a deadline
        [worker] = workers
        assert worker["pid"] == proc.pid and worker["flows"] == ["order@1"]
        assert worker["id"].startswith(f"{worker['host']}:{proc.pid}:")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"the worker did not stop on SIGTERM; its log:\n{err}") from None
    assert proc.returncode == 0, err
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    messages = [r["message"] for r in records]
    assert "worker started; flows: order@1" in messages and "worker stopped" in messages
    assert all(set(r) >= {"at", "level", "logger", "message"} for r in records)
    assert main(["--database-url", database_url, "workers", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"workers": []}  # a clean stop unregisters


def test_sigterm_stops_a_worker_even_when_a_library_loses_the_cancellation(
    database_url: str, tmp_path: Path
) -> None:
    """SIGTERM cancels the worker's task and asks the engine to stop (``stop_worker``). Here the
    cancellation lands in code that swallows it, as psycopg_pool's open can on Python 3.11
    (``asyncio.wait_for`` returning normally when cancelled as what it waits for completes):
    the worker must still stop, cleanly. Cancelling alone left it running for good."""
    import signal
    import time

    mark = tmp_path / "in-lossy-code"
    app = (
        "import asyncio, os, pathlib\n"
        "from collections import Counter\n"
        "from iterflow import Engine\n"
        "from iterflow.runtime import engine as engine_module\n"
        "from tests.integration.test_flows import order_flow\n"
        "original = engine_module.Engine.sync_schedules\n"
        "async def lossy(self):\n"
        "    await original(self)\n"
        "    pathlib.Path(os.environ['LOSSY_MARK']).write_text('in')\n"
        "    try:\n"
        "        await asyncio.sleep(30)\n"
        "    except asyncio.CancelledError:\n"
        "        pass  # lost, as a library can lose it\n"
        "engine_module.Engine.sync_schedules = lossy\n"
        "engine = Engine()\n"
        "order_flow(engine, Counter())\n"
    )
    argv = ["--database-url", database_url, "worker", "lossy_app:engine"]
    proc = _worker_process(tmp_path, app, argv, {"LOSSY_MARK": str(mark)})
    try:
        deadline = time.monotonic() + 60
        while not mark.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the worker did not start"
            time.sleep(0.05)  # polling an external process, with a deadline
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"the worker did not stop on SIGTERM; its log:\n{err}")
    assert proc.returncode == 0, err
    assert "worker stopped" in err


async def test_show_prints_the_traceback_a_failed_step_stored(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with Engine(database_url, pool_size=4) as engine:

        @engine.flow("crash", input=int, output=int)
        async def crash(ctx: FlowContext, n: int) -> int:
            def explode(value: int) -> int:
                raise ValueError(f"cannot take {value}")

            return await ctx.step("explode", explode, n)

        await engine.listen()
        run_id = (await crash.start(7)).run_id
        detail = await settle(engine, run_id)
    assert detail.run.status is RunStatus.FAILED

    status, out, _ = await flowctl(capsys, database_url, "show", str(run_id), "--steps")
    assert status == 0
    assert "error: [STEP_FAILED] step 'explode' failed" in out
    assert "  cause: ValueError: cannot take 7" in out
    assert "  traceback:\n    Traceback (most recent call last):" in out
    assert "ValueError: cannot take 7" in out.split("traceback:")[1]
    assert "#0   explode  step failed  attempts=" in out


# --- control characters in data: escaped in text, exact in JSON --------------------------------

TAGS = ["vip\x1b[2K\r  tags: (none)", "x\n  error: FAKE_CODE forged line"]
KEY = "evt_1\x1b]0;owned\x07\x9b31m\x7f"
ERROR = {"code": "BAD\x1b[31m", "message": "boom\n  idempotency key: forged\x1b[0m"}


def assert_no_control_characters(text: str) -> None:
    """Nothing but newlines (between lines) among C0, DEL and C1 characters."""
    assert re.findall("[\x00-\x09\x0b-\x1f\x7f-\x9f]", text) == [], text


async def test_text_output_escapes_control_characters_and_json_keeps_them_exact(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with Engine(database_url) as engine:

        @engine.flow("echo", input=str, output=str)
        async def echo(ctx: FlowContext, text: str) -> str:
            return text

        run_id = (await echo.start("in\x1b[8m", tags=TAGS, idempotency_key=KEY)).run_id
        claim = await engine.store.claim(run_id, "test", 30)
        assert claim is not None
        await engine.store.finish(claim.lease, RunStatus.FAILED, None, ERROR)

    status, out, _ = await flowctl(capsys, database_url, "show", str(run_id), "--events")
    assert status == 0
    assert_no_control_characters(out)
    assert "  tags: vip\\x1b[2K\\r  tags: (none), x\\n  error: FAKE_CODE forged line" in out
    assert "  idempotency key: evt_1\\x1b]0;owned\\x07\\x9b31m\\x7f" in out
    assert "error: [BAD\\x1b[31m] boom\\n  idempotency key: forged\\x1b[0m" in out
    assert '"in\\u001b[8m"' in out  # the input, as JSON
    forged = ("  tags: (none)", "  error: FAKE_CODE", "  idempotency key: forged")
    assert not [line for line in out.splitlines() if line.startswith(forged)]

    for argv in (["list", "--idempotency-key", KEY], ["explain", str(run_id)]):
        status, out, _ = await flowctl(capsys, database_url, *argv)
        assert status == 0
        assert_no_control_characters(out)
        assert "BAD\\x1b[31m" in out, argv

    status, out, _ = await flowctl(capsys, database_url, "show", str(run_id), "--json")
    assert status == 0
    assert_no_control_characters(out)  # JSON escapes them too (\u001b, \u009b)
    shown = json.loads(out)["run"]
    assert shown["tags"] == TAGS and shown["idempotency_key"] == KEY
    assert shown["error"] == ERROR and shown["input"] == "in\x1b[8m"
    [listed] = (await as_json(capsys, database_url, "list", "--tag", TAGS[1]))["runs"]
    assert listed["tags"] == TAGS and listed["error_code"] == ERROR["code"]
