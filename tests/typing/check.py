"""Type-check the typing cases under mypy --strict and pyright strict (``./scripts/test``).

* ``tests/typing/pass/*.py`` (and the docs examples in ``DOCS``) must be clean: their
  ``assert_type`` calls are the assertions.
* ``tests/typing/fail/*.py``: every line marked ``# expect-error`` must be reported as an error,
  and no other line may be. ``# expect-error[mypy]`` or ``# expect-error[pyright]`` limits the
  expectation to one tool (the other must then be silent on that line).

Neither tool's own suppression comments are trusted for this (pyright ignores ``# type: ignore``
here, ``enableTypeIgnoreComments`` is off), so an expected error really is reported.

    python tests/typing/check.py                 # both tools
    python tests/typing/check.py --tool mypy     # one of them

pyright comes from the ``pyright`` PyPI package (the dev extra): it bundles the checker and runs
it with the ``node`` on ``PATH``; without one, it installs Node.js into the virtualenv once
(``PYRIGHT_PYTHON_ENV_DIR`` / ``PYRIGHT_PYTHON_CACHE_DIR`` default to the venv here).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "tests" / "typing"
DOCS = tuple(
    ROOT / "docs" / "examples" / f"{n}.py"
    for n in (
        "builder",
        "debounce",
        "events",
        "graphs",
        "map_fanout",
        "patching",
        "saga",
        "signals",
    )
)
TOOLS = ("mypy", "pyright")
MARK = re.compile(r"#\s*expect-error(?:\[(?P<tools>[a-z, ]+)\])?\s*$")

#: file -> line (1-based) -> messages
Report = dict[Path, dict[int, list[str]]]


def cases() -> tuple[list[Path], list[Path]]:
    """The files that must be clean, and the files with expected errors."""
    passing = sorted((HERE / "pass").glob("*.py")) + [p for p in DOCS if p.exists()]
    failing = sorted((HERE / "fail").glob("*.py"))
    return passing, failing


def expected(path: Path, tool: str) -> set[int]:
    """The lines of ``path`` marked as errors for ``tool``."""
    lines = set()
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        found = MARK.search(text)
        if found is None:
            continue
        tools = found.group("tools")
        if tools is None or tool in {t.strip() for t in tools.split(",")}:
            lines.add(number)
    return lines


def run_mypy(files: list[Path]) -> Report:
    """mypy --strict with the project's configuration (pydantic plugin, Python 3.11)."""
    cmd = [
        sys.executable,
        "-m",
        "mypy",
        "--strict",
        "--config-file",
        str(ROOT / "pyproject.toml"),
        "--no-error-summary",
        "--show-absolute-path",
        "--hide-error-context",
        "--no-pretty",
        "--show-error-codes",
        *map(str, files),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode not in (0, 1) or proc.stderr.strip():
        raise SystemExit(f"mypy did not run: {proc.stderr or proc.stdout}")
    report: Report = defaultdict(lambda: defaultdict(list))
    for line in proc.stdout.splitlines():
        found = re.match(r"^(?P<file>.+?):(?P<line>\d+): error: (?P<msg>.*)$", line)
        if found:
            path = Path(found["file"]).resolve()
            report[path][int(found["line"])].append(found["msg"])
    return report


def run_pyright(files: list[Path]) -> Report:
    """pyright in strict mode (``tests/typing/pyrightconfig.json``) on this interpreter's
    environment."""
    venv = Path(sys.prefix)
    env = dict(os.environ)
    env.setdefault("PYRIGHT_PYTHON_CACHE_DIR", str(venv / "pyright-cache"))
    env.setdefault("PYRIGHT_PYTHON_ENV_DIR", str(venv / "pyright-node"))
    env.setdefault("PYRIGHT_PYTHON_IGNORE_WARNINGS", "1")
    cmd = [
        sys.executable,
        "-m",
        "pyright",
        "--outputjson",
        "--project",
        str(HERE / "pyrightconfig.json"),
        "--pythonpath",
        sys.executable,
        *map(str, files),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"pyright did not run: {proc.stderr or proc.stdout}") from None
    report: Report = defaultdict(lambda: defaultdict(list))
    for diag in out.get("generalDiagnostics", []):
        if diag.get("severity") not in ("error", "warning"):
            continue
        path = Path(diag["file"]).resolve()
        line = int(diag["range"]["start"]["line"]) + 1
        rule = diag.get("rule", "")
        report[path][line].append(diag["message"].splitlines()[0] + (f" ({rule})" if rule else ""))
    return report


def compare(tool: str, report: Report, passing: list[Path], failing: list[Path]) -> list[str]:
    """What ``tool`` got wrong: errors in clean files (or in modules they import), expected
    errors not reported, errors not expected."""
    problems: list[str] = []
    checked = {p.resolve() for p in (*passing, *failing)}
    for path, lines in sorted(report.items()):
        if path not in checked:
            for line, msgs in sorted(lines.items()):
                problems.append(f"{tool}: {path}:{line}: error outside the cases: {msgs[0]}")
    for path in failing:
        want = expected(path, tool)
        got = report.get(path.resolve(), {})
        for line in sorted(want - set(got)):
            text = path.read_text().splitlines()[line - 1].strip()
            problems.append(f"{tool}: {_rel(path)}:{line}: expected an error, got none: {text}")
        for line in sorted(set(got) - want):
            problems.append(f"{tool}: {_rel(path)}:{line}: unexpected error: {got[line][0]}")
    for path in passing:
        for line, msgs in sorted(report.get(path.resolve(), {}).items()):
            problems.append(f"{tool}: {_rel(path)}:{line}: error in a clean case: {msgs[0]}")
    return problems


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def check(tools: tuple[str, ...] = TOOLS) -> list[str]:
    """Run ``tools`` over every case; the problems found (empty when all is as expected)."""
    passing, failing = cases()
    files = [*passing, *failing]
    runners = {"mypy": run_mypy, "pyright": run_pyright}
    problems: list[str] = []
    for tool in tools:
        problems += compare(tool, runners[tool](files), passing, failing)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tool", choices=TOOLS, action="append", help="default: both")
    args = parser.parse_args(argv)
    tools = tuple(args.tool or TOOLS)
    problems = check(tools)
    passing, failing = cases()
    for problem in problems:
        print(problem)
    marks = sum(len(expected(p, t)) for p in failing for t in tools)
    print(
        f"typing: {', '.join(tools)} over {len(passing)} clean and {len(failing)} failing "
        f"case files ({marks} expected errors): "
        + ("ok" if not problems else f"{len(problems)} problem(s)")
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
