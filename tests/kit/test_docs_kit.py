"""docs/testing.md shows the kit's examples verbatim, and each example's tests pass."""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from iterflow import Engine
from iterflow.sync import SyncEngine
from iterflow.testing import TestEngine

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"kit_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_page_shows_every_example_verbatim() -> None:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "testing.md").read_text(), re.S)
    names = ("testing_time", "testing_schedules", "testing_crash", "testing_replay", "testing_sync")
    for name in names:
        assert (EXAMPLES / f"{name}.py").read_text() in blocks, name


async def test_time_skipping_example_runs_in_well_under_a_second() -> None:
    example = _load("testing_time")
    began = time.monotonic()
    await example.test_the_survey_is_answered()
    async with TestEngine() as fixture:  # what the iterflow_engine fixture yields
        await example.test_no_answer_in_a_week(fixture)
    assert time.monotonic() - began < 1.0


async def test_schedules_example_fires_ticks_sleeps_and_retries_in_order() -> None:
    example = _load("testing_schedules")
    began = time.monotonic()
    await example.test_schedules_fire_in_order_with_sleeps_and_retries()
    assert time.monotonic() - began < 2.0  # two days of schedules, skipped


async def test_crash_injection_example() -> None:
    example = _load("testing_crash")
    await example.test_a_crash_after_the_checkpoint_does_not_charge_again()
    await example.test_a_crash_before_the_checkpoint_charges_at_most_once()


def test_replay_example_finds_the_recorded_runs_and_the_drift() -> None:
    example = _load("testing_replay")
    reports = example.replay_folder(example.RUNS, [example.checkout])
    assert [(r.source, r.outcome, r.ok) for r in reports] == [
        ("checkout-done.json", "done", True),
        ("checkout-sleeping.json", "stopped", True),
    ]
    for report in reports:
        example.test_recorded_runs_replay(report)
    example.test_a_renamed_step_is_drift()


def test_sync_example_as_plain_functions(database_url: str) -> None:
    example = _load("testing_sync")
    example.engine.configure(database_url=database_url)
    example.flows = SyncEngine(example.engine, worker=True)
    try:
        started: dict[str, Any] = example.checkout("A-1", 4200)
        # "running" when the in-process worker claims it as it starts (an eager start)
        assert started["status"] in ("pending", "running")
        assert example.checkout("A-1", 4200)["run_id"] == started["run_id"]  # idempotent
        assert example.approve(started["run_id"], "ana") in ("delivered", "buffered")
        assert example.receipt(started["run_id"]) == "ch_A-1 approved by ana"
        assert example.flows.status(started["run_id"]).run.status == "done"
    finally:
        example.flows.close()
    assert isinstance(example.engine, Engine)
