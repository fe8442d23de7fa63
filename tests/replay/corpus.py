"""Case files of the replay corpus: load them, replay them, describe an outcome.

A case (``cases/*.json``, format 1) holds the flow's import path and identity, the input, the
recorded memo rows (``StepRecord`` fields), pending timers, the unconsumed inbox, the time of
the replay (``now``) and the documented outcome. Cases are never edited: when the stored shape
changes, record a new one (``python -m tests.replay.record``).
"""

from __future__ import annotations

import importlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from iterflow.core.definition import FlowDef
from iterflow.core.export import step_of
from iterflow.core.models import SignalRecord, StepRecord, TimerRecord
from tests.replay.harness import Outcome, replay

CASES = Path(__file__).parent / "cases"
FORMAT = 1


def load_flow(ref: str) -> FlowDef[Any, Any]:
    """``module:attribute`` of a ``FlowDef`` (or a handle) in current code."""
    module, _, attr = ref.partition(":")
    obj = getattr(importlib.import_module(module), attr)
    return obj if isinstance(obj, FlowDef) else obj.definition


def steps_of(case: dict[str, Any]) -> list[StepRecord]:
    """The case's memo rows (the same fields as a ``flowctl export``'s ``steps``)."""
    return [step_of(s) for s in case["steps"]]


async def replay_case(case: dict[str, Any]) -> Outcome:
    """Replay a case with current code."""
    flow = load_flow(case["flow"])
    if (flow.name, flow.version) != (case["name"], case["version"]):
        raise AssertionError(
            f"{case['flow']} is {flow.key}, the case recorded {case['name']}@{case['version']}"
        )
    return await replay(
        flow,
        input=case["input"],
        history=steps_of(case),
        now=datetime.fromisoformat(case["now"]),
        timers=[
            TimerRecord(t["cursor_key"], datetime.fromisoformat(t["fire_at"]))
            for t in case["timers"]
        ],
        inbox=[
            SignalRecord(
                id=m["id"],
                name=m["name"],
                payload=m["payload"],
                idempotency_key=m.get("idempotency_key"),
                received_at=datetime.fromisoformat(m["received_at"]),
            )
            for m in case["inbox"]
        ],
    )


def expected_of(outcome: Outcome) -> dict[str, Any]:
    """The documented form of an outcome (what a case's ``expected`` holds)."""
    data: dict[str, Any] = {"outcome": outcome.kind}
    if outcome.kind == "done":
        data["output"] = outcome.output
    elif outcome.kind == "suspended":
        data["status"] = outcome.status
        data["cursor_key"] = outcome.cursor_key
    else:
        error = outcome.error or {}
        data["code"] = error.get("code")
        details = error.get("details") or {}
        for side in ("recorded", "requested"):
            if side in details:
                data[side] = details[side]
    data["written"] = outcome.written_keys
    return data


def load_cases() -> list[Path]:
    return sorted(CASES.glob("*.json"))


def read_case(path: Path) -> dict[str, Any]:
    case: dict[str, Any] = json.loads(path.read_text())
    if case.get("format") != FORMAT:
        raise AssertionError(f"{path.name}: unknown case format {case.get('format')!r}")
    return case
