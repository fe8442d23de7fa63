"""``flowctl demo`` runs on its own embedded PostgreSQL whatever the environment names; only an
explicit ``--database-url`` puts it in another database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil

from iterflow.store.urls import redacted
from tests.integration.flows import sql

NOWHERE = "postgresql://nobody:s3cret@127.0.0.1:1/nowhere"


def demo(cwd: Path, *argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``flowctl [argv] demo --sleep 0`` in a process of its own, in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "iterflow.cli", *argv, "demo", "--sleep", "0"],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def iterflow_schema(url: str) -> list[tuple[object, ...]]:
    return sql(
        url, "SELECT schema_name FROM information_schema.schemata WHERE schema_name = 'iterflow'"
    )


def test_demo_ignores_the_environments_database(tmp_path: Path, empty_database_url: str) -> None:
    data_dir = tmp_path / "demo-data"
    env = {"DATABASE_URL": empty_database_url, "ITERFLOW_DATABASE_URL": ""}
    proc = demo(tmp_path, "--data-dir", str(data_dir), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert iterflow_schema(empty_database_url) == []  # $DATABASE_URL's database: untouched
    pgdata = data_dir / "pgdata"
    assert f"database ready: embedded PostgreSQL in {pgdata}" in proc.stdout
    assert "shipped=True" in proc.stdout
    assert f"embedded PostgreSQL stopped ({pgdata})" in proc.stdout
    assert (pgdata / "PG_VERSION").is_file() and not (tmp_path / ".iterflow").exists()
    leftovers = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and any(str(pgdata) in part for part in p.info["cmdline"])
    ]
    assert leftovers == [], f"postgres processes left running: {leftovers}"


def test_demo_uses_an_explicit_database_url(tmp_path: Path, empty_database_url: str) -> None:
    env = {"DATABASE_URL": NOWHERE, "ITERFLOW_DATABASE_URL": NOWHERE}
    proc = demo(tmp_path, "--database-url", empty_database_url, "--json", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)  # the narrative is on stderr
    assert summary["output"]["shipped"] is True
    where = redacted(empty_database_url)
    assert summary["database"] == where
    assert f"its run stays in {where}" in proc.stderr and "embedded" not in proc.stderr
    assert not (tmp_path / ".iterflow").exists()
    runs = sql(empty_database_url, "SELECT id::text, name FROM iterflow.runs")
    assert runs == [(summary["run_id"], "order")]
