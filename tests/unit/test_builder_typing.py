"""The typing cases (tests/typing/) hold under mypy --strict: the builder's channel type changes
step by step, every ``ctx`` implementation conforms to the core's ``Ctx`` Protocol, ``ctx`` calls
and handles are typed honestly, and each ``# expect-error`` line of tests/typing/fail/ is an error
(a forgotten ``await``, step arguments that do not fit, a signal payload of the wrong type).

``./scripts/test`` runs the same checker with pyright strict too (``tests/typing/check.py``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_typing_cases_hold_under_mypy_strict() -> None:
    spec = importlib.util.spec_from_file_location("typing_check", ROOT / "tests/typing/check.py")
    assert spec is not None and spec.loader is not None
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    problems = check.check(("mypy",))
    assert not problems, "\n".join(problems)
