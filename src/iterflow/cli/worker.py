"""``flowctl worker``: run a worker for the engine at ``module:attribute``."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal

from iterflow.cli.common import Subparsers, load_engine

__all__ = ["register"]


def register(subparsers: Subparsers) -> None:
    """Add ``worker``."""
    wrk = subparsers.add_parser("worker", help="run a worker for the engine at module:attribute")
    wrk.add_argument("engine", help="import path of an Engine, e.g. myapp.flows:engine")
    wrk.add_argument("--concurrency", type=int, default=4)
    wrk.set_defaults(func=_worker)


async def _worker(args: argparse.Namespace) -> None:
    import asyncio

    engine = load_engine(args.engine, args.database_url)
    # SIGTERM (docker stop, systemd, Kubernetes) stops the worker gracefully, like Ctrl-C:
    # procrastinate stops fetching, lets running attempts finish (up to its graceful timeout)
    # and unregisters the worker. Python's default for SIGTERM would kill it on the spot.
    main = asyncio.current_task()
    if main is not None and hasattr(signal, "SIGTERM"):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    async with engine:
        names = ", ".join(f.key for f in engine.registry.all()) or "none"
        logging.getLogger("iterflow").info("worker started; flows: %s", names)
        try:
            await engine.run_worker(concurrency=args.concurrency)
        except asyncio.CancelledError:
            logging.getLogger("iterflow").info("worker stopped")
