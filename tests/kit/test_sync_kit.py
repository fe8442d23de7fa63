"""``iterflow.sync.SyncEngine``: blocking calls on a private loop thread; refused from its own
loop; and the plugin is declared as a pytest entry point."""

from __future__ import annotations

import asyncio
import threading
import tomllib
from pathlib import Path

import pytest

from iterflow import Engine, FlowContext
from iterflow.core.errors import ConfigInvalid, ResultTimeout
from iterflow.sync import SyncEngine

ROOT = Path(__file__).resolve().parents[2]


def test_blocking_calls_from_plain_threads() -> None:
    engine = Engine.in_memory()
    holder: dict[str, SyncEngine] = {}

    @engine.flow("echo", input=str, output=str, signals={"go": str})
    async def echo(ctx: FlowContext, text: str) -> str:
        await ctx.signal("go", str)
        return await ctx.step("echo", lambda: text.upper())

    @engine.flow("nested", input=str, output=str)
    async def nested(ctx: FlowContext, text: str) -> str:
        def inside() -> str:
            try:
                holder["sync"].status(ctx.run_id)
            except ConfigInvalid as exc:
                return exc.error_code
            return "no error"

        return await ctx.step("inside", inside)

    with SyncEngine(engine, worker=True) as flows:
        holder["sync"] = flows
        run = flows.start(echo, "hi", idempotency_key="k")
        with pytest.raises(ResultTimeout):
            flows.result(run.run_id, timeout=0.05)
        results: list[str] = []
        thread = threading.Thread(target=lambda: results.append(flows.result(run.run_id)))
        thread.start()
        assert flows.signal(run.run_id, "go", "now").kind in ("delivered", "buffered")
        thread.join(10)
        assert results == ["HI"]
        assert flows.status(run.run_id).run.status == "done"
        assert [r.id for r in flows.list_runs(name="echo").runs] == [run.run_id]
        assert flows.retry(run.run_id).kind == "not_failed"
        other = flows.start("echo", "again")
        assert flows.cancel(other.run_id).kind == "canceled"
        # a sync step runs in a worker thread: the call reaches the loop and works
        assert flows.result(flows.start(nested, "x").run_id, timeout=10) == "no error"
    flows.close()  # idempotent
    with pytest.raises(ConfigInvalid, match="wraps an iterflow Engine"):
        SyncEngine("postgresql://")  # type: ignore[arg-type]


async def test_a_call_from_its_own_loop_is_refused() -> None:
    engine = Engine.in_memory()
    flows = SyncEngine(engine)
    loop = flows._ensure()  # the private loop, to run code on it as a flow body would

    async def call() -> str:
        try:
            flows.status("00000000-0000-4000-8000-000000000000")
        except ConfigInvalid as exc:
            return exc.error_code
        return "no error"

    try:
        assert asyncio.run_coroutine_threadsafe(call(), loop).result(5) == "CONFIG_INVALID"
    finally:
        flows.close()


def test_the_plugin_is_a_pytest11_entry_point() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"iterflow": "iterflow.pytest_plugin"}
