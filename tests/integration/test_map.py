"""The builder's ``.map`` on real PostgreSQL with a worker: sync step functions fanned out over
threads within the concurrency bound, a fan-out waiting on one item's retry shown by
``flowctl graph --run`` (the map node ``waiting``, its finished items counted), and the
runnable example of docs/flow-control.md."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import threading
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from iterflow import Engine, flow
from iterflow.core.models import RunStatus
from iterflow.core.progress import overlay
from tests.integration.flows import eventually

ROOT = Path(__file__).resolve().parents[2]


class Batch(BaseModel):
    items: list[int]


# an application module for `flowctl graph` (module:engine:flow)
app = Engine()


async def flaky(i: int) -> int:
    if i == 1:
        raise ConnectionError("item 1 is down")
    return i


waits_on_a_retry = app.register(
    flow("map-retrying")
    .input(Batch)
    .map("fetch", flaky, over=lambda b: b.items, concurrency=2, retries=1, backoff="1h")
    .build()
)


async def test_sync_steps_fan_out_over_threads_within_the_bound(engine: Engine) -> None:
    n, limit = 8, 3
    lock = threading.Lock()
    state = {"in_flight": 0, "peak": 0, "started": 0}

    def work(i: int) -> str:  # sync: runs in a thread
        with lock:
            state["in_flight"] += 1
            state["started"] += 1
            state["peak"] = max(state["peak"], state["in_flight"])
        deadline = time.monotonic() + 20
        while True:  # hold the slot until every slot is taken (or no item is left)
            with lock:
                if state["in_flight"] >= limit or state["started"] == n:
                    state["in_flight"] -= 1
                    break
            if time.monotonic() > deadline:
                raise AssertionError("the items never filled the slots")
            time.sleep(0.005)
        return f"item-{i}"

    built = (
        flow("map-threads").input(Batch).map("work", work, over=lambda b: b.items, concurrency=3)
    )
    handle = engine.register(built.build())
    await engine.listen(concurrency=2)
    run = await handle.start(Batch(items=list(range(n))))
    assert await handle.result(run.run_id, timeout=30) == [f"item-{i}" for i in range(n)]
    assert state["peak"] == limit
    detail = await engine.status(run.run_id)
    assert [s.cursor_key for s in detail.steps] == ["work"] + [f"work#{i}" for i in range(1, n)]
    ov = overlay(handle.definition.graph, detail)  # type: ignore[attr-defined]
    assert ov.states == {"work": "done", "output": "done"} and ov.counts["work"] == n


def test_flowctl_graph_shows_a_map_and_a_fan_out_waiting_on_one_item(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from iterflow.cli import main

    monkeypatch.setattr(app, "_settings", app.settings)  # load_engine sets the URL; restored
    target = "tests.integration.test_map:app"
    assert main(["graph", f"{target}:map-retrying"]) == 0
    assert 'n0[/"map fetch<br/>concurrency=2, retries=1"\\]' in capsys.readouterr().out

    async def start_and_wait() -> str:
        async with Engine(database_url) as eng:
            handle = eng.register(waits_on_a_retry.definition)
            await eng.listen(concurrency=2)
            run_id = (await handle.start(Batch(items=[0, 1, 2, 3]))).run_id

            async def retrying() -> bool:
                return (await eng.status(run_id)).run.status is RunStatus.RETRYING

            await eventually(retrying, what="the fan-out to wait for item 1's retry")
            return str(run_id)

    run_id = asyncio.run(start_and_wait())
    args = ["--database-url", database_url, "graph", "--run", run_id, "--format", "json"]
    assert main([*args, target]) == 0
    data = json.loads(capsys.readouterr().out)
    nodes = {n["id"]: n for n in data["nodes"]}
    assert nodes["fetch"]["kind"] == "map"
    # items 0, 2 and 3 finished; item 1 waits for its retry (the map waits with it)
    assert (nodes["fetch"]["state"], nodes["fetch"]["count"]) == ("waiting", 3)
    assert data["run"]["status"] == "retrying"
    assert main(["--database-url", database_url, "graph", "--run", run_id]) == 0
    assert "(history)" in capsys.readouterr().out  # without the flow: the graph it walked


def test_flow_control_doc_block_is_the_map_example() -> None:
    page = (ROOT / "docs" / "flow-control.md").read_text()
    section = page.split("## Fan-out with map", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    example = (ROOT / "docs" / "examples" / "map_fanout.py").read_text()
    assert example in blocks


async def test_map_example_runs() -> None:
    spec = importlib.util.spec_from_file_location(
        "map_fanout_example", ROOT / "docs" / "examples" / "map_fanout.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tracking, keys = await module.main()
    assert tracking == ["TRK-apple-100", "TRK-pear-70", "TRK-plum-90"]
    assert keys == [
        "price-line",
        "price-line#1",
        "price-line#2",
        "invoke:ship@1",
        "invoke:ship@1#1",
        "invoke:ship@1#2",
    ]
