"""The profile's PostgreSQL CPU per statement (``bench/pglog.py``): the log parser on a fixed
text, and the profile on a real embedded server, where each of the engine's hot statements must
be found under its name (a statement whose SQL changed would otherwise fall out of the profile
unnoticed). Figures are reported, never asserted."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench import pglog, profiling
from bench.config import Context, Sizes
from bench.report import Section
from bench.server import BenchServer

LOG = """\
2026-12-03 12:27:59.491 UTC [5999] LOG:  BIND MESSAGE STATISTICS
2026-12-03 12:27:59.491 UTC [5999] DETAIL:  ! system usage stats:
\t!\t0.000010 s user, 0.000002 s system, 0.000014 s elapsed
\t!\t[0.015608 s user, 0.000000 s system total]
2026-12-03 12:27:59.491 UTC [5999] STATEMENT:
\t    INSERT INTO "iterflow".steps (run_id, position)
\t    SELECT id, $1 FROM "iterflow".runs WHERE id = $2
\t    FOR SHARE
\t    RETURNING 1 AS leased
2026-12-03 12:27:59.492 UTC [5999] LOG:  EXECUTE MESSAGE STATISTICS
2026-12-03 12:27:59.492 UTC [5999] DETAIL:  ! system usage stats:
\t!\t0.000030 s user, 0.000008 s system, 0.000044 s elapsed
2026-12-03 12:27:59.492 UTC [5999] STATEMENT:
\t    INSERT INTO "iterflow".steps (run_id, position)
\t    SELECT id, $1 FROM "iterflow".runs WHERE id = $2
\t    FOR SHARE
\t    RETURNING 1 AS leased
2026-12-03 12:27:59.493 UTC [5997] LOG:  duration: 0.1 ms
2026-12-03 12:27:59.494 UTC [5997] LOG:  QUERY STATISTICS
2026-12-03 12:27:59.494 UTC [5997] DETAIL:  ! system usage stats:
\t!\t0.000100 s user, 0.000000 s system, 0.000100 s elapsed
2026-12-03 12:27:59.494 UTC [5997] STATEMENT:  SELECT 'something else'
"""


def test_the_parser_adds_each_statements_messages_and_counts_its_executions() -> None:
    rows = {row.label: row for row in pglog.statement_cpu(LOG)}
    memo = rows["checkpoint (memo under the share-lock fence)"]
    assert memo.calls == 1  # the execute message; the bind is CPU, not a call
    assert abs(memo.seconds - 0.000050) < 1e-9
    other = rows["SELECT 'something else'"]
    assert (other.calls, round(other.seconds, 9)) == (1, 0.0001)
    assert list(rows) == ["SELECT 'something else'", memo.label]  # largest first


async def test_the_profile_names_the_engines_hot_statements_on_a_real_server(
    tmp_path: Path,
) -> None:
    server = BenchServer()  # embedded: the profile reads the server's own log
    await asyncio.to_thread(server.start)
    try:
        sizes = Sizes(concurrent_runs=20, concurrent_steps=10, worker_concurrency=4)
        ctx = Context(server=server, sizes=sizes, quick=True, results_dir=tmp_path)
        section = Section("profile", "test")
        await profiling._statement_profile(ctx, section)
    finally:
        await asyncio.to_thread(server.stop)
    assert section.raw is not None
    per_run = {
        label: calls / section.raw["statement_cpu_runs"]
        for label, calls, _ in section.raw["statement_cpu"]
    }
    # a run's 10 checkpoints (the first renews the lease): alone, or with other runs' in one
    # statement (the first, when alone, too: its lock is skipped, not waited for)
    alone = per_run.get("checkpoint (memo under the share-lock fence)", 0)
    together = per_run["checkpoints of several runs (group commit)"]
    assert 1 <= alone + together <= 10
    assert "checkpoint (renewing the lease)" not in per_run  # only a retried step's, alone
    assert per_run["claim"] == 1
    assert per_run["finish / suspend / park (ends its own job)"] == 1
    assert per_run["start"] == 1
    assert per_run["the wake-up fetch"] >= 1
    assert any(row.metric.startswith("PostgreSQL CPU per run: claim") for row in section.rows)
