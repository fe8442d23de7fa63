"""Start and kill real worker processes (``flowctl worker``) for fault-injection tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def start_worker(
    app: str, database_url: str, log: Path, *, concurrency: int = 2, options: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """Spawn ``flowctl worker app [options]`` in its own process group, logging to ``log``."""
    env = dict(os.environ)
    env["ITERFLOW_DATABASE_URL"] = database_url
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), env.get("PYTHONPATH", "")])
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "iterflow.cli",
                "worker",
                app,
                "--concurrency",
                str(concurrency),
                *options,
            ],
            cwd=HERE,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the worker and reap it."""
    if proc.poll() is None:
        proc.send_signal(sig)
    proc.wait(timeout=30)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a worker gracefully (SIGTERM), then SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            kill(proc)
