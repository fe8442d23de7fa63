"""docs/builder.md is executed: its examples run, and every Python snippet on the page is an
excerpt of one of them (so a snippet cannot drift from code that runs)."""

from __future__ import annotations

import importlib.util
import re
import textwrap
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ("builder", "graphs", "patching")


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"docs_example_{name}", ROOT / "docs" / "examples" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_snippet_is_an_excerpt_of_an_executed_example() -> None:
    page = (ROOT / "docs" / "builder.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
    sources = [(ROOT / "docs" / "examples" / f"{n}.py").read_text() for n in EXAMPLES]
    assert len(blocks) >= 5
    for block in blocks:
        dedented = textwrap.dedent(block)
        assert any(block in src or dedented in textwrap.dedent(src) for src in sources), block


async def test_builder_example_runs() -> None:
    assert await load("builder").main() == "ana@example.com on pro"


async def test_graphs_example_runs() -> None:
    text = await load("graphs").main()
    assert 'n2[/"signal approve<br/>Approval"/]' in text


async def test_patching_example_runs() -> None:
    assert await load("patching").main() == ["patch:fraud-check", "fraud-check", "charge"]
