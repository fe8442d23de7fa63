"""The README's demo command: embedded PostgreSQL, one order end to end, nothing left running."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil


def test_demo_runs_end_to_end_and_stops_its_server(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "iterflow.cli", "demo", "--sleep", "0.5"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "webhook answered 'delivered'; its retry answered 'duplicate'" in out
    assert "result: Receipt(" in out and "shipped=True" in out
    assert "event  completed" in out and "sleep:fraud-cool-off" in out
    assert elapsed < 60, f"demo took {elapsed:.1f}s"
    data_dir = str(tmp_path / ".iterflow" / "pgdata")
    leftovers = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and any(data_dir in part for part in p.info["cmdline"])
    ]
    assert leftovers == [], f"postgres processes left running: {leftovers}"
    print(f"verified: demo finished in {elapsed:.1f}s and left no server running")
