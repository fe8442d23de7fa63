"""A type checker sees the builder's channel type change step by step (mypy --strict on
tests/typing/builder_types.py, whose ``assert_type`` calls and ``type: ignore`` comments are the
assertions: an unused ignore is an error under strict mode), and every ``ctx`` implementation
conforms to the core's ``Ctx`` Protocol (tests/typing/ctx_conformance.py), and the ``ctx`` calls
are typed honestly: a forgotten ``await`` and arguments that do not fit a step function are
type errors (tests/typing/ctx_types.py)."""

from __future__ import annotations

from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parents[2]


def test_builder_types_check_under_mypy_strict() -> None:
    out, err, status = api.run(
        [
            "--strict",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            str(ROOT / "tests" / "typing" / "builder_types.py"),
            str(ROOT / "tests" / "typing" / "ctx_conformance.py"),
            str(ROOT / "tests" / "typing" / "ctx_types.py"),
            *(
                str(ROOT / "docs" / "examples" / f"{n}.py")
                for n in ("builder", "graphs", "patching")
            ),
        ]
    )
    assert status == 0, out + err
