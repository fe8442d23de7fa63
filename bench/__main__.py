"""``python -m bench``: measure iterflow against the limit of the database it runs on.

Starts an embedded PostgreSQL in a temporary directory with default durability settings
(``fsync=on``, ``synchronous_commit=on``), unless ``--database-url`` or ``DATABASE_URL`` names a
server (the role needs CREATEDB: each measurement runs in a fresh database). Prints a table of
every figure with its target and PASS/MISS margin, and writes the same as JSON.

    python -m bench                  # everything (about 13 minutes on 2 cores)
    python -m bench --quick          # small sizes, under a minute: a smoke test
    python -m bench --only latency   # one section (repeatable)
    python -m bench --profile        # also profile the sequential hot path
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from iterflow.core.settings import Settings

from . import (
    concurrency,
    flow_control,
    hooks,
    latency,
    limits,
    peers,
    profiling,
    retention,
    scale,
    schedules,
    steps,
    waiting,
    web,
)
from .config import Context, Sizes
from .report import Report, Section
from .server import BenchServer

SECTIONS = (
    "limits",
    "steps",
    "latency",
    "concurrency",
    "waiting",
    "schedules",
    "web",
    "hooks",
    "retention",
    "scale",
    "flow-control",
    "peers",
)
RESULTS = Path(__file__).resolve().parent / "results"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="iterflow performance benchmark"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (< 1 minute)")
    parser.add_argument(
        "--only",
        action="append",
        choices=(*SECTIONS, "profile"),
        metavar="NAME",
        help=f"run only this section (repeatable): {', '.join(SECTIONS)}, profile",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=RESULTS / "latest.json",
        help="where to write the JSON results (default: bench/results/latest.json)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="PostgreSQL admin URL (default: $DATABASE_URL, else an embedded server)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also profile the sequential hot path"
    )
    parser.add_argument(
        "--keep-data", action="store_true", help="keep the embedded server's data directory"
    )
    parser.add_argument(
        "--retention-runs",
        type=int,
        default=None,
        help="finished runs the retention section purges (default 1,000,000; --quick 20,000)",
    )
    parser.add_argument(
        "--scale-runs",
        type=int,
        default=None,
        help="runs the scale section loads (default 1,000,000; --quick 5,000)",
    )
    return parser


async def _run(args: argparse.Namespace) -> Report:
    selected = list(args.only or SECTIONS)
    if args.profile and "profile" not in selected:
        selected.append("profile")
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.retention_runs is not None:
        sizes = dataclasses.replace(sizes, retention_runs=args.retention_runs)
    if args.scale_runs is not None:
        sizes = dataclasses.replace(sizes, scale_runs=args.scale_runs)
    server = BenchServer(url=args.database_url, keep_data=args.keep_data)
    await asyncio.to_thread(server.start)
    try:
        described = await asyncio.to_thread(server.describe)
        defaults = Settings()
        meta = {
            "mode": "quick" if args.quick else "full",
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "server": described["server"],
            "server_settings": described["settings"],
            "engine_settings": {
                "pool_size": defaults.pool_size,
                "worker_poll_interval": defaults.worker_poll_interval,
                "lease_seconds": defaults.lease_seconds,
                "worker_concurrency": sizes.worker_concurrency,
            },
            "sizes": sizes.__dict__,
            **{k: v for k, v in described.items() if k not in ("server", "settings")},
        }
        ctx = Context(server=server, sizes=sizes, quick=args.quick, results_dir=RESULTS)
        print(
            f"iterflow benchmark ({meta['mode']}) on {meta['server']}: "
            + ", ".join(f"{k}={v}" for k, v in described["settings"].items()),
            flush=True,
        )
        report = Report(meta=meta)
        for name in selected:
            print(f"-- {name} ...", flush=True)
            t0 = time.perf_counter()
            produced: list[Section]
            if name == "limits":
                produced = [await limits.run(ctx)]
            elif name == "steps":
                produced = await steps.run(ctx)
            elif name == "latency":
                produced = [await latency.run(ctx)]
            elif name == "concurrency":
                produced = [await concurrency.run(ctx)]
            elif name == "waiting":
                produced = [await waiting.run(ctx)]
            elif name == "schedules":
                produced = [await schedules.run(ctx)]
            elif name == "web":
                produced = [await web.run(ctx)]
            elif name == "hooks":
                produced = [await hooks.run(ctx)]
            elif name == "retention":
                produced = [await retention.run(ctx)]
            elif name == "scale":
                produced = [await scale.run(ctx)]
            elif name == "flow-control":
                produced = [await flow_control.run(ctx)]
            elif name == "peers":
                produced = [await peers.run(ctx)]
            else:
                produced = [await profiling.run(ctx)]
            elapsed = time.perf_counter() - t0
            for section in produced:
                section.seconds = elapsed / len(produced)
                report.sections.append(section)
            print(f"   done in {elapsed:.0f} s", flush=True)
        meta["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        return report
    finally:
        await asyncio.to_thread(server.stop)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table; write the JSON."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    t0 = time.perf_counter()
    report = asyncio.run(_run(args))
    report.meta["total_seconds"] = round(time.perf_counter() - t0, 1)
    report.write_json(args.json)
    print()
    print(report.render())
    print(f"\nJSON written to {args.json} ({report.meta['total_seconds']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
