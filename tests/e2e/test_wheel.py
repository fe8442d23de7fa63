"""`flowctl migrate` works from an installed wheel, not only from the repository."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from iterflow.store.schemagen import metadata_for
from tests.integration.flows import sql

ROOT = Path(__file__).resolve().parents[2]


def test_migrate_from_an_installed_wheel(tmp_path: Path, empty_database_url: str) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = dist.glob("iterflow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "iterflow/_migrations/versions/0001_initial.py" in names
    assert "iterflow/_migrations/env.py" in names

    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "-q",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(site), "ITERFLOW_DATABASE_URL": empty_database_url}
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import iterflow, iterflow.store.migrate as m; "
            "print(iterflow.__file__); print(m.script_location())",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    module_file, scripts = probe.stdout.split()
    assert module_file.startswith(str(site)) and scripts.startswith(str(site))
    subprocess.run(
        [sys.executable, "-m", "iterflow.cli", "migrate"],
        cwd=tmp_path,
        env=env,
        check=True,
        timeout=120,
    )
    tables = sql(
        empty_database_url,
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'iterflow'",
    )
    # every table of the metadata, and the alembic version table
    assert tables == [(len(metadata_for("iterflow").tables) + 1,)]
