"""``python -m bench --only web`` at a small size: the dashboard page-load section loads its
runs (seeds executed by a worker, then cloned), answers every page 200 and reports p50/p95
against the 300 ms target. The full size (100,000 runs) is the benchmark's, not the suite's."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench import web
from bench.config import Context, Sizes
from bench.server import BenchServer


async def test_the_page_load_section_runs_at_a_small_size(server_url: str, tmp_path: Path) -> None:
    server = BenchServer(url=server_url)
    await asyncio.to_thread(server.start)
    try:
        sizes = Sizes(web_runs=300, web_samples=2)
        ctx = Context(server=server, sizes=sizes, quick=True, results_dir=tmp_path)
        section = await web.run(ctx)
    finally:
        await asyncio.to_thread(server.stop)
    rows = {row.metric: row for row in section.rows}
    loaded = rows["runs loaded (seeds cloned with INSERT ... SELECT)"]
    assert loaded.value == 300
    assert section.raw["loaded"]["by_status"]["failed"] == 300 * web.MIX["failed"] // 100 + 1
    for page in (
        "runs list, no filter",
        "runs list, status=failed",
        "runs list, tag=vip",
        "runs list, next page (rel=next)",
        "run page, a done run",
        "run page, a run waiting for a signal",
    ):
        p95 = rows[f"{page}, p95"]
        assert p95.target is not None and p95.target.threshold == 300
        assert p95.value is not None and p95.value > 0
        assert p95.status in ("PASS", "MISS")
        assert rows[f"{page}, p50"].value is not None
