"""``flowctl export`` and offline ``replay``: the export of a real PostgreSQL run replays with
the current code without a database; drift names the recorded and requested calls; new work is
never run; hostile or foreign files are refused with ``HISTORY_INVALID``."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from iterflow import Engine, FlowContext
from iterflow.cli import exit_code, main
from iterflow.core.errors import ConfigInvalid, HistoryInvalid, RunNotFound
from iterflow.testing import TestEngine, replay, replay_folder
from tests.kit import flows
from tests.kit.flows import Order


async def test_flowctl_export_of_a_postgresql_run_replays_offline(
    iterflow_pg_engine: TestEngine,
    iterflow_database_url: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    t = iterflow_pg_engine
    run = await t.start(flows.order, Order(id="E-1", amount=7))
    schema = t.engine.settings.db_schema
    argv = ["--database-url", iterflow_database_url, "export", str(run), "--schema", schema]
    assert await asyncio.to_thread(main, argv) == 0  # flowctl runs its own event loop
    document = json.loads(capsys.readouterr().out)
    assert document["format"] == "iterflow.run/1"
    assert document["run"]["status"] == "sleeping"
    assert [s["cursor_key"] for s in document["steps"]] == ["charge"]
    assert document["events"][0]["type"] == "started"
    assert document == t.export(run)  # the kit's export is the same document
    out = tmp_path / "run.json"
    assert await asyncio.to_thread(main, [*argv, "-o", str(out)]) == 0
    report = replay(flows.order, out)
    assert report.ok and report.outcome == "stopped", report
    assert report.requested == {
        "kind": "sleep",
        "label": "cool-off",
        "cursor_key": "sleep:cool-off",
        "position": 1,
    }
    assert await asyncio.to_thread(main, [*argv, "-o", str(out)]) == exit_code(
        ConfigInvalid("x")
    )  # never overwrites
    assert "exists" in capsys.readouterr().err
    unknown = [*argv[:3], "00000000-0000-4000-8000-000000000000", "--schema", schema]
    assert await asyncio.to_thread(main, unknown) == exit_code(RunNotFound("x"))
    assert "RUN_NOT_FOUND" in capsys.readouterr().err


class Boom(Exception):
    pass


def never(n: int) -> int:
    raise Boom("offline replay must not run a step")


def ran_once(n: int) -> int:
    return n + 1


def _flows() -> tuple[Any, Any, Any]:
    """Three versions of flow "calc": recorded, unchanged, and with a renamed step."""
    recorded_app, same_app, renamed_app = Engine(), Engine(), Engine()

    @recorded_app.flow("calc", input=int, output=int)
    async def recorded(ctx: FlowContext, n: int) -> int:
        a = await ctx.step("add", ran_once, n)
        await ctx.sleep("1h")
        return await ctx.step("again", ran_once, a)

    @same_app.flow("calc", input=int, output=int)
    async def same(ctx: FlowContext, n: int) -> int:
        a = await ctx.step("add", never, n)  # replayed from its memo: never called
        await ctx.sleep("1h")
        return await ctx.step("again", never, a)

    @renamed_app.flow("calc", input=int, output=int)
    async def renamed(ctx: FlowContext, n: int) -> int:
        a = await ctx.step("add", never, n)
        await ctx.sleep("1h")
        return await ctx.step("add-again", never, a)

    return recorded, same, renamed


async def _exports() -> tuple[dict[str, Any], dict[str, Any]]:
    recorded, _, _ = _flows()
    async with TestEngine(recorded) as t:
        waiting = await t.start(recorded, 1)
        done = await t.start(recorded, 2)
        await t.advance("1h")
        return t.export(waiting), t.export(done)


async def test_replay_matches_memos_without_running_steps_and_reports_drift() -> None:
    _, same, renamed = _flows()
    waiting, done = await _exports()
    waiting["run"]["status"] = "sleeping"  # as exported before its sleep fired
    waiting["steps"] = waiting["steps"][:1]
    report = replay(same, waiting)  # from async code: runs on a private thread
    assert (report.outcome, report.ok, report.requested["cursor_key"]) == ("stopped", True, "sleep")
    ok = replay([flows.order, same], done)  # the flow of the run's name and version
    assert (ok.outcome, ok.ok, ok.output) == ("done", True, 4)
    drift = replay(renamed, done)
    assert (drift.outcome, drift.ok) == ("drift", False)
    assert drift.recorded is not None and drift.requested is not None
    assert (drift.recorded["cursor_key"], drift.requested["cursor_key"]) == ("again", "add-again")
    assert drift.recorded["position"] == drift.requested["position"] == 2
    with pytest.raises(AssertionError, match="history recorded step 'again'"):
        drift.check()


async def test_a_completed_run_whose_code_makes_more_calls_is_drift() -> None:
    _, same, _ = _flows()
    _, done = await _exports()
    shorter = copy.deepcopy(done)
    shorter["steps"] = shorter["steps"][:2]  # as if the recorded code ended after the sleep
    report = replay(same, shorter)
    assert (report.outcome, report.ok) == ("drift", False)
    assert "the recorded run finished" in report.message


async def test_missing_flow_failed_as_recorded_and_decode_failures() -> None:
    _, same, _ = _flows()
    _, done = await _exports()
    other = copy.deepcopy(done)
    other["run"]["version"] = 7
    assert replay(same, other).outcome == "missing" and not replay(same, other).ok
    failed = copy.deepcopy(done)
    error = {"code": "STEP_FAILED", "message": "step 'again' failed"}
    failed["steps"][2].update(status="failed", output=None, error=error)
    failed["run"].update(status="failed", output=None, error=error)
    as_recorded = replay(same, failed)
    assert (as_recorded.outcome, as_recorded.ok) == ("failed", True)
    failed["run"].update(status="sleeping", error=None)
    assert not replay(same, failed).ok  # a failure the recorded run did not have
    undecodable = copy.deepcopy(done)
    undecodable["steps"][0]["output"] = "not an int"
    broken = replay(same, undecodable)
    assert (broken.outcome, broken.ok) == ("failed", False)
    bad_input = copy.deepcopy(done)
    bad_input["run"]["input"] = {"no": "longer an int"}
    assert replay(same, bad_input).error["code"] == "INPUT_INVALID"  # type: ignore[index]


class Hostile(BaseModel):
    text: str


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d["steps"][0].update(output="a\u0000b"), "NUL"),
        (lambda d: d["steps"][0].update(label="\ud800"), "surrogate"),
        (lambda d: d["run"].update(input=float("nan")), "NaN"),
        (lambda d: d.update(format="iterflow.run/9"), "unknown run export format"),
        (lambda d: d["run"].pop("id"), "run.id"),
        (lambda d: d["steps"][0].update(kind="teleport"), "kind"),
        (lambda d: d["run"].update(created_at="2030-01-01T00:00:00"), "timezone"),
    ],
)
async def test_hostile_exports_are_refused(mutate: Any, match: str) -> None:
    _, same, _ = _flows()
    _, done = await _exports()
    mutate(done)
    with pytest.raises(HistoryInvalid, match=match) as caught:
        replay(same, done)
    assert caught.value.error_code == "HISTORY_INVALID"


def test_files_that_are_not_exports_are_refused(tmp_path: Path) -> None:
    _, same, _ = _flows()
    cases = {"nan.json": '{"format": NaN}', "text.json": "not json", "deep.json": "[" * 100_000}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(HistoryInvalid):
            replay(same, tmp_path / name)
    with pytest.raises(HistoryInvalid, match="cannot read"):
        replay(same, tmp_path / "absent.json")
    with pytest.raises(HistoryInvalid, match="not a folder"):
        replay_folder(tmp_path / "absent", [same])


async def test_replay_stops_inside_a_gather_without_running_its_new_branch() -> None:
    async with TestEngine(flows.pair) as t:
        run = await t.start(flows.pair, 5)
        document = t.export(run)
    assert replay(flows.pair, document).outcome == "done"
    partial = copy.deepcopy(document)
    partial["run"].update(status="running", output=None)
    partial["steps"] = [s for s in partial["steps"] if s["cursor_key"] == "a"]
    report = replay(flows.pair, partial)  # branch "b" is new work: the replay stops there
    assert (report.outcome, report.ok, report.requested["cursor_key"]) == ("stopped", True, "b")
