"""Sizes of each measurement (full and ``--quick``) and what every section is given."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .server import BenchServer

__all__ = ["Context", "Sizes"]


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is. ``quick()`` finishes the whole benchmark in under a minute."""

    repeats: int = 3
    #: Repetitions of the sequential in-process measurement (each paired with its own limit).
    step_repeats: int = 5
    insert_rows: int = 2000
    paired_insert_rows: int = 1000
    concurrent_seconds: float = 3.0
    runs_by_steps: tuple[tuple[int, int], ...] = ((1, 400), (10, 100), (100, 15))
    e2e_runs_by_steps: tuple[tuple[int, int], ...] = ((1, 100), (10, 50), (100, 8))
    latency_samples: int = 60
    timer_samples: int = 60
    timer_spacing: float = 0.23
    concurrent_runs: int = 200
    concurrent_steps: int = 10
    worker_concurrency: int = 10
    waiting_runs: int = 10_000
    waiting_min_delay: float = 10.0
    idle_sample_seconds: float = 3.0
    #: The schedules section: the fleet, real minute boundaries measured (``--quick``: one
    #: simulated), and the schedules made due at once for the sweep's cost.
    schedules: int = 10_000
    schedule_boundaries: int = 2
    sweep_due: int = 1_000
    #: The dashboard section: runs loaded, then requests timed per page.
    web_runs: int = 100_000
    web_samples: int = 30
    #: The hooks section: interleaved rounds, and 10-step runs per round (PostgreSQL, memory).
    hook_rounds: int = 7
    hook_runs: int = 40
    hook_memory_runs: int = 300
    #: The retention section: finished runs purged under a workload (``--retention-runs``).
    retention_runs: int = 1_000_000
    #: The scale section: runs loaded with COPY (``--scale-runs``), samples per operation and
    #: side, and the seconds of sequential load during which dead tuples are watched.
    scale_runs: int = 1_000_000
    scale_samples: int = 30
    scale_vacuum_seconds: float = 120.0

    @classmethod
    def quick(cls) -> Sizes:
        """Small sizes: a smoke test of every section."""
        return cls(
            repeats=1,
            step_repeats=1,
            insert_rows=300,
            paired_insert_rows=150,
            concurrent_seconds=0.5,
            runs_by_steps=((1, 40), (10, 10), (100, 2)),
            e2e_runs_by_steps=((1, 10), (10, 5), (100, 1)),
            latency_samples=10,
            timer_samples=8,
            timer_spacing=0.15,
            concurrent_runs=40,
            waiting_runs=200,
            waiting_min_delay=2.0,
            idle_sample_seconds=1.2,
            schedules=600,
            schedule_boundaries=1,
            sweep_due=100,
            web_runs=2_000,
            web_samples=5,
            hook_rounds=2,
            hook_runs=8,
            hook_memory_runs=40,
            retention_runs=20_000,
            scale_runs=5_000,
            scale_samples=3,
            scale_vacuum_seconds=3.0,
        )


@dataclass
class Context:
    """What a section runs with."""

    server: BenchServer
    sizes: Sizes
    quick: bool
    results_dir: Path

    @property
    def log_dir(self) -> Path:
        """Where worker logs and instrument files go."""
        return self.results_dir / "logs"
