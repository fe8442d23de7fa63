"""Real worker processes: ``python -m iterflow.cli worker bench.flows:engine`` subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]

__all__ = ["WorkerProcess"]

ROOT = Path(__file__).resolve().parent.parent


class WorkerProcess:
    """One ``flowctl worker`` process on the bench flows, with optional instruments."""

    def __init__(
        self,
        database_url: str,
        log_dir: Path,
        *,
        name: str,
        concurrency: int = 10,
        monitor: bool = False,
        finish_log: bool = False,
        profile: Path | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.database_url = database_url
        self.settings = settings
        self.concurrency = concurrency
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log = log_dir / f"{name}.log"
        self.monitor_file = log_dir / f"{name}.monitor.jsonl" if monitor else None
        self.finish_file = log_dir / f"{name}.finish.log" if finish_log else None
        for path in (self.log, self.monitor_file, self.finish_file):
            if path is not None and path.exists():
                path.unlink()
        self.profile = profile
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        """Spawn the process (it is ready once it has run a first wake-up)."""
        env = dict(os.environ)
        env["ITERFLOW_DATABASE_URL"] = self.database_url
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        if self.monitor_file is not None:
            env["BENCH_MONITOR"] = str(self.monitor_file)
        if self.finish_file is not None:
            env["BENCH_FINISH_LOG"] = str(self.finish_file)
        if self.profile is not None:
            env["BENCH_PYINSTRUMENT"] = str(self.profile)
        if self.settings:
            env["BENCH_SETTINGS"] = json.dumps(self.settings)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "iterflow.cli",
                    "worker",
                    "bench.flows:engine",
                    "--concurrency",
                    str(self.concurrency),
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        """The worker's process id."""
        if self.proc is None:
            raise RuntimeError("worker not started")
        return self.proc.pid

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc is not None and self.proc.poll() is None

    def rss(self) -> int:
        """Resident set size in bytes, read from outside (psutil)."""
        return int(psutil.Process(self.pid).memory_info().rss)

    def cpu_seconds(self) -> float:
        """User + system CPU used so far."""
        t = psutil.Process(self.pid).cpu_times()
        return float(t.user + t.system)

    def monitor(self) -> list[dict[str, Any]]:
        """The instrument lines written so far (RSS and asyncio task count)."""
        if self.monitor_file is None or not self.monitor_file.exists():
            return []
        lines = self.monitor_file.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def finishes(self) -> dict[str, float]:
        """``run_id -> unix time`` at which each run's finishing transaction returned."""
        if self.finish_file is None or not self.finish_file.exists():
            return {}
        out: dict[str, float] = {}
        for line in self.finish_file.read_text().splitlines():
            run_id, _, at = line.partition(" ")
            if at:
                out[run_id] = float(at)
        return out

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` (SIGINT lets the worker's ``finally`` blocks run), then SIGKILL if it
        lingers."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)

    def tail(self, lines: int = 20) -> str:
        """The end of the worker's log (for error messages)."""
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
