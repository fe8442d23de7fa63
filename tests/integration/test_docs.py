"""Docs mirror the code and are executed: the README's flow block is docs/examples/quickstart.py,
and that example runs against a real database."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.DOTALL)


def test_readme_flow_block_is_the_quickstart_example() -> None:
    blocks = _python_blocks((ROOT / "README.md").read_text())
    example = (ROOT / "docs" / "examples" / "quickstart.py").read_text()
    assert example in blocks


async def test_quickstart_example_runs(database_url: str) -> None:
    spec = importlib.util.spec_from_file_location(
        "quickstart_example", ROOT / "docs" / "examples" / "quickstart.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    receipt = await module.main(database_url)
    assert receipt.approved_by == "ana" and receipt.charge_id == "ch_A-1_4200"


def test_schedules_doc_block_is_the_example() -> None:
    blocks = _python_blocks((ROOT / "docs" / "schedules.md").read_text())
    example = (ROOT / "docs" / "examples" / "schedules.py").read_text()
    assert example in blocks


async def test_schedules_example_runs() -> None:
    spec = importlib.util.spec_from_file_location(
        "schedules_example", ROOT / "docs" / "examples" / "schedules.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ticks = await module.main()
    assert ticks == ["2030-03-29T08:00:00+00:00", "2030-04-01T07:00:00+00:00"]
