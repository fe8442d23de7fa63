"""docs/errors.md cannot go stale: every registered error code has its row, the page names no
code that does not exist, and its example runs."""

from __future__ import annotations

import re
from pathlib import Path
from types import ModuleType

from iterflow.core.errors import registered_codes

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "errors.md"


def _rows() -> dict[str, str]:
    """The code of every table row (``| `CODE` | ...``) with its row."""
    rows = re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|(.*)$", PAGE.read_text(), flags=re.MULTILINE)
    codes = [code for code, _ in rows]
    assert len(codes) == len(set(codes)), "a code has two rows"
    return dict(rows)


def test_every_registered_code_has_a_row() -> None:
    missing = sorted(set(registered_codes()) - set(_rows()))
    assert not missing, f"docs/errors.md has no row for {missing}"


def test_every_row_is_a_registered_code() -> None:
    unknown = sorted(set(_rows()) - set(registered_codes()))
    assert not unknown, f"docs/errors.md documents codes that do not exist: {unknown}"


def test_every_row_says_when_what_is_written_and_whether_to_retry() -> None:
    for code, row in _rows().items():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        assert len(cells) >= 3 and all(cells), (code, cells)


def test_readme_points_at_the_page() -> None:
    assert "docs/errors.md" in (ROOT / "README.md").read_text()


def _example() -> ModuleType:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)
    assert len(blocks) == 1
    module = ModuleType("errors_doc_example")
    exec(compile(blocks[0], str(PAGE), "exec"), module.__dict__)
    return module


async def test_the_example_runs() -> None:
    module = _example()
    code, details, status = await module.main()
    assert code == "PAYMENT_DECLINED" and status == 422
    assert details["decline_code"] == "insufficient_funds"
    assert isinstance(details["at"], str)  # a datetime, made JSON-safe when stored


def test_the_example_webhook_statuses_are_registered_codes() -> None:
    module = _example()
    assert set(module.WEBHOOK_STATUS) <= set(registered_codes())
    for code, status in module.WEBHOOK_STATUS.items():
        assert f"| `{code}` |" in PAGE.read_text() and str(status) in _rows()[code], code
