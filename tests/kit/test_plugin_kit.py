"""The pytest plugin in a user's project: a test file using ``iterflow_any_engine`` runs on the
in-memory engine and on PostgreSQL (the plugin's own embedded server, or $DATABASE_URL), with
nothing but the plugin and pytest-asyncio loaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

USER_TEST = """
from pydantic import BaseModel

from iterflow import Engine, FlowContext
from iterflow.testing import TestEngine

app = Engine()


class Greeting(BaseModel):
    name: str


@app.flow("greet", input=Greeting, output=str)
async def greet(ctx: FlowContext, g: Greeting) -> str:
    return await ctx.step("hello", lambda: f"hello {g.name}")


async def test_greet(iterflow_any_engine: TestEngine) -> None:
    t = iterflow_any_engine
    run = await t.start(greet, Greeting(name="ana"))
    assert await t.result(run) == "hello ana"
    assert t.steps_run == {"hello": 1}
"""


def test_a_user_test_runs_on_both_engines_with_the_plugin(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_user.py").write_text(USER_TEST)
    (project / "pytest.ini").write_text("[pytest]\nasyncio_mode = auto\n")
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # the entry point, explicitly
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "iterflow.pytest_plugin",
            "-p",
            "pytest_asyncio.plugin",
            "-p",
            "no:cacheprovider",
            "-q",
            "--basetemp",
            str(tmp_path / "bt"),
            str(project / "test_user.py"),
        ],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 passed" in result.stdout
