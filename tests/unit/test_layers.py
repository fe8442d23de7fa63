"""The package's layers, checked at import time (``lint-imports`` in ./scripts/test checks the
static import graph; see ``[tool.importlinter]`` in pyproject.toml).

* every core module imports without loading a database, queue, web or telemetry package, nor the
  store or the runtime;
* ``import iterflow`` (the lazy facade) and ``import iterflow.cli`` load none of SQLAlchemy,
  asyncpg or procrastinate, and every name the facade exports resolves;
* no import cycle among iterflow's modules, type-only imports included.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

import iterflow
import iterflow.core

#: Never loaded by importing a core module.
CORE_FORBIDDEN = (
    "sqlalchemy",
    "asyncpg",
    "psycopg",
    "psycopg_pool",
    "procrastinate",
    "alembic",
    "pgserver",
    "starlette",
    "opentelemetry",
    "iterflow.store",
    "iterflow.runtime",
    "iterflow.cli",
    "iterflow.contrib",
    "iterflow.testing",
)
#: Never loaded by ``import iterflow`` or ``import iterflow.cli``.
HEAVY = ("sqlalchemy", "asyncpg", "procrastinate")

CORE_MODULES = sorted(
    f"iterflow.core.{m.name}" for m in pkgutil.iter_modules(iterflow.core.__path__)
)


def _loaded_after(statement: str, prefixes: tuple[str, ...]) -> list[str]:
    """Run ``statement`` in a fresh interpreter; the loaded modules under ``prefixes``."""
    code = (
        f"{statement}\n"
        "import sys\n"
        f"prefixes = {prefixes!r}\n"
        "print('\\n'.join(sorted(m for m in sys.modules "
        "if any(m == p or m.startswith(p + '.') for p in prefixes))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return out.split()


def test_core_modules_found() -> None:
    assert {"iterflow.core.ctx", "iterflow.core.definition", "iterflow.core.replay"} <= set(
        CORE_MODULES
    )


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_nothing_impure(module: str) -> None:
    assert _loaded_after(f"import {module}", CORE_FORBIDDEN) == []


@pytest.mark.parametrize("module", ["iterflow", "iterflow.cli"])
def test_facade_and_cli_import_no_database_packages(module: str) -> None:
    assert _loaded_after(f"import {module}", HEAVY) == []


def test_facade_exports_resolve() -> None:
    exports: dict[str, str] = vars(iterflow)["_EXPORTS"]
    assert sorted(iterflow.__all__) == sorted(exports)
    for name, module in exports.items():
        value = getattr(iterflow, name)
        assert value is getattr(sys.modules[module], name), name
    assert set(iterflow.__all__) <= set(dir(iterflow))
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = iterflow.no_such_name  # type: ignore[attr-defined]


def test_facade_type_checking_imports_match_exports() -> None:
    """Type checkers see exactly the lazily exported names, from the same modules."""
    tree = ast.parse(Path(iterflow.__file__).read_text())
    seen: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom) and stmt.module, ast.unparse(stmt)
                for alias in stmt.names:
                    seen[alias.asname or alias.name] = stmt.module
    assert seen == vars(iterflow)["_EXPORTS"]


def test_facade_exports_what_docs_use() -> None:
    """Everything the README and docs import from ``iterflow``, plus the facade of LAYOUT.md."""
    used = {
        "flow",
        "Engine",
        "FlowContext",
        "FlowError",
        "NonRetryable",
        "RetryPolicy",
        "Settings",
        "StepContext",
        "BuiltFlow",
        "FlowHandle",
        "FlowDef",
        "RunStatus",
        "describe",
        "graph_of",
        "render",
        "overlay",
        "FakeClock",
    }
    root = Path(__file__).resolve().parents[2]
    docs = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    docs += sorted((root / "docs").rglob("*.py"))
    for path in docs:
        for line in path.read_text().splitlines():
            text = line.strip().strip("`")
            if text.startswith("from iterflow import ") and "(" not in text:
                used |= {n.strip() for n in text.removeprefix("from iterflow import ").split(",")}
    used.discard("...")
    assert used <= set(iterflow.__all__)


def _cycles() -> list[tuple[str, ...]]:
    graph = grimp.build_graph("iterflow", cache_dir=None)
    found: set[frozenset[str]] = set()
    cycles: list[tuple[str, ...]] = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain and frozenset(chain) not in found:
                found.add(frozenset(chain))
                cycles.append((module, *chain))
    return cycles


def test_no_import_cycles() -> None:
    """grimp counts ``if TYPE_CHECKING:`` imports: a type-only import is still a dependency."""
    cycles = _cycles()
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_only_the_outbox_spells_procrastinates_tables() -> None:
    """procrastinate's tables are spelled in store/outbox.py only (the store builds every other
    queue statement from its fragments), so a procrastinate upgrade touches one file."""
    import re
    from pathlib import Path

    package = Path(__file__).resolve().parents[2] / "src" / "iterflow"
    table = re.compile(r"procrastinate_(jobs|workers|events|periodic_defers)\b")
    spelled = sorted(
        path.relative_to(package).as_posix()
        for path in package.rglob("*.py")
        if table.search(path.read_text())
    )
    assert spelled == ["store/outbox.py"]
