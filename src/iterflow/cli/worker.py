"""``flowctl worker``: run a worker for the engine at ``module:attribute``; ``flowctl workers``:
the workers registered now (what they run, their last heartbeat)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal

from iterflow.cli.common import (
    Subparsers,
    echo,
    iso,
    load_app_engine,
    open_engine,
    print_json,
    schema_option,
    wants_json,
)

__all__ = ["register"]


def register(subparsers: Subparsers) -> None:
    """Add ``worker`` and ``workers``."""
    wrk = subparsers.add_parser("worker", help="run a worker for the engine at module:attribute")
    wrk.add_argument("engine", help="import path of an Engine, e.g. myapp.flows:engine")
    wrk.add_argument("--concurrency", type=int, default=4)
    wrk.add_argument(
        "--queues",
        type=_names,
        default=None,
        help="serve only the flows in these queues (comma-separated, e.g. billing,default)",
    )
    wrk.add_argument(
        "--flows",
        type=_names,
        default=None,
        help="serve only these flows (comma-separated names); with --queues, both must match",
    )
    wrk.set_defaults(func=_worker)

    workers = subparsers.add_parser(
        "workers",
        parents=[schema_option()],
        help="list registered workers: host, pid, flows they run, last heartbeat",
    )
    workers.set_defaults(func=_workers)


async def _worker(args: argparse.Namespace) -> None:
    import asyncio

    engine = load_app_engine(args)
    # SIGTERM (docker stop, systemd, Kubernetes) stops the worker gracefully, like Ctrl-C:
    # procrastinate stops fetching, lets running attempts finish (up to its graceful timeout)
    # and unregisters the worker. Python's default for SIGTERM would kill it on the spot.
    # Both the stop request and the cancellation: a library can lose a cancellation that
    # arrives while it starts (Engine.stop_worker), the request cannot be lost.
    main = asyncio.current_task()

    def terminate() -> None:
        engine.stop_worker()
        if main is not None:
            main.cancel()

    if main is not None and hasattr(signal, "SIGTERM"):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, terminate)
    async with engine:
        served = engine.registry.serving(args.queues, args.flows)  # CONFIG_INVALID early
        names = ", ".join(f.key for f in served) or "none"
        logging.getLogger("iterflow").info("worker started; flows: %s", names)
        with contextlib.suppress(asyncio.CancelledError):
            await engine.run_worker(
                concurrency=args.concurrency, queues=args.queues, flows=args.flows
            )
        logging.getLogger("iterflow").info("worker stopped")


def _names(value: str) -> list[str]:
    """``a,b`` -> ``["a", "b"]`` (blank items dropped)."""
    return [n.strip() for n in value.split(",") if n.strip()]


async def _workers(args: argparse.Namespace) -> None:
    async with open_engine(args) as engine:
        workers = await engine.workers()
    if wants_json(args):
        print_json(
            {
                "workers": [
                    {
                        "id": w.id,
                        "host": w.host,
                        "pid": w.pid,
                        "flows": list(w.flows),
                        "queues": list(w.queues),
                        "started_at": iso(w.started_at),
                        "heartbeat_at": iso(w.heartbeat_at),
                        "stale": w.stale,
                    }
                    for w in workers
                ]
            }
        )
        return
    if not workers:
        echo("no worker is registered")
        return
    for w in workers:
        state = "STALE" if w.stale else "live"
        echo(
            f"{w.id}  {state}  pid {w.pid} on {w.host}  heartbeat {iso(w.heartbeat_at)}  "
            f"started {iso(w.started_at)}"
        )
        echo(f"  flows: {', '.join(w.flows) or 'none'}  queues: {', '.join(w.queues)}")
