"""A fork server for worker processes: imports ``iterflow.cli`` and the app once, then forks a
fresh ``flowctl worker <app>`` per request.

A cold ``python -m iterflow.cli worker`` spends ~1.3 s of CPU importing SQLAlchemy, asyncpg,
psycopg, procrastinate and pydantic; a test that SIGKILLs a worker every few hundred
milliseconds on a 2-core machine cannot afford that per restart. Each child runs exactly the
CLI code path (``iterflow.cli.main(["worker", app, ...])``) in its own session, with stdout and
stderr on its own log file; nothing is opened before the fork (no connection, no event loop, no
thread), so the children share nothing but read-only imported code.

Protocol (lines on stdin/stdout): ``spawn <log path>`` → ``pid <pid>``; whenever a child is
reaped → ``exit <pid> <returncode>``. EOF on stdin: SIGKILL the remaining children and exit.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import traceback


def _child(app: str, concurrency: str, log: str) -> None:
    os.setsid()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    code = 1
    try:
        from iterflow import cli

        code = cli.main(["worker", app, "--concurrency", concurrency])
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def main() -> None:
    app, concurrency = sys.argv[1], sys.argv[2]
    import procrastinate  # noqa: F401
    import psycopg_pool  # noqa: F401

    import iterflow.cli  # noqa: F401  - warm the imports the children need

    __import__(app.partition(":")[0])
    out = sys.stdout
    children: set[int] = set()
    out.write("ready\n")
    out.flush()
    buffer = b""
    stdin = sys.stdin.fileno()
    while True:
        readable, _, _ = select.select([stdin], [], [], 0.02)
        if readable:
            chunk = os.read(stdin, 4096)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                command, _, arg = line.decode().partition(" ")
                if command == "spawn":
                    out.flush()
                    pid = os.fork()
                    if pid == 0:
                        _child(app, concurrency, arg)
                    children.add(pid)
                    out.write(f"pid {pid}\n")
                    out.flush()
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            children.discard(pid)
            out.write(f"exit {pid} {os.waitstatus_to_exitcode(status)}\n")
            out.flush()
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for pid in list(children):
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
