"""The replay corpus: recorded histories that current code must replay to their documented
outcome (``expected`` in each case). A failure here means a change would break runs that are
in flight today: make it compatible (or guard it with ``ctx.patched``) instead of editing the
case. New stored shapes get new cases, recorded with ``python -m tests.replay.record``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.replay.corpus import expected_of, load_cases, read_case, replay_case

CASES = load_cases()


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
async def test_case_replays_to_its_documented_outcome(path: Path) -> None:
    case = read_case(path)
    outcome = await replay_case(case)
    assert expected_of(outcome) == case["expected"], case["description"]
    if outcome.kind in ("drift", "failed"):
        assert outcome.store.written == []  # nothing is written past the point of difference


def test_corpus_covers_every_required_shape() -> None:
    cases = [read_case(p) for p in CASES]
    expected = [c["expected"] for c in cases]
    suspended = {e["status"] for e in expected if e["outcome"] == "suspended"}
    assert {"sleeping", "awaiting_signal"} <= suspended
    assert any(e["outcome"] == "done" and not e["written"] for e in expected)  # completed
    assert any(e["outcome"] == "drift" for e in expected)
    mid_loop = [
        c
        for c in cases
        if c["recorded_status"] != "done"
        and any("#" in s["cursor_key"] and s["kind"] == "step" for s in c["steps"])
    ]
    assert mid_loop, "a case suspended inside a loop"
    assert {c["flow"] for c in cases} >= {
        "tests.replay.flows:ORDER",  # a raw body
        "tests.replay.flows:ONBOARD",  # a built flow
    }
