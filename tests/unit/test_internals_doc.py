"""docs/internals.md names every module of the package, and only modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "iterflow"


def _modules() -> set[str]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "__init__.py" or (rel.endswith("/__init__.py") and rel != "cli/__init__.py"):
            continue  # the facade and the layers' package markers
        found.add(rel)
    return found


def test_internals_doc_names_every_module_and_only_real_ones() -> None:
    text = (ROOT / "docs" / "internals.md").read_text()
    module = r"`((?:(?:core|store|runtime|cli|contrib(?:/web)?)/)?[a-z_]+\.py)`"
    named = set(re.findall(module, text))
    assert _modules() - named == set(), "modules missing from docs/internals.md"
    assert named - _modules() == set(), "docs/internals.md names modules that do not exist"
