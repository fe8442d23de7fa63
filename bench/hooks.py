"""(9) Hooks: what the hooks API costs on the hot path.

The same workload (sequential runs of a 10-step no-op flow, each ``start`` then
``engine.worker.advance``: claim, ten checkpoints, finish) is run by three engines side by side
on one database, in interleaved rounds so that load drifting on the machine hits every variant
alike:

* **no hook**: the default; the runtime holds ``None`` and tests that one attribute per event;
* **no-op hook**: a :class:`~iterflow.core.hooks.Hook` overriding every event with ``pass``, so
  every event builds its info record and is dispatched;
* **OpenTelemetry**: :func:`iterflow.contrib.otel.instrument` with the SDK's tracer and meter
  providers and no exporter (spans, links and metrics are made, then dropped).

The same three are then run on the in-memory store, where no database round trip hides the
CPU cost of the hooks; there the figure is steps per CPU-second of the benchmark process, which
other load on the machine disturbs far less than wall-clock time. Each figure is the median of
the rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from iterflow import Engine
from iterflow.core.decisions import AttemptOutcome
from iterflow.core.hooks import (
    AttemptEndInfo,
    AttemptInfo,
    Hook,
    RecoveryInfo,
    RunFinishedInfo,
    SignalInfo,
    StartInfo,
    StepEndInfo,
    StepInfo,
    SuspendInfo,
)
from iterflow.runtime.engine import FlowHandle

from .config import Context
from .flows import Steps, noop
from .report import Section, spread

__all__ = ["NoopHook", "run"]

STEPS = 10
VARIANTS = ("no hook", "no-op hook", "OpenTelemetry")


class NoopHook(Hook):
    """Overrides every event and does nothing: the dispatch cost alone."""

    def inject(self) -> None:
        return None

    def on_start(self, info: StartInfo) -> None:
        pass

    def on_signal(self, info: SignalInfo) -> None:
        pass

    def on_attempt_begin(self, info: AttemptInfo) -> None:
        pass

    def on_attempt_end(self, info: AttemptEndInfo) -> None:
        pass

    def on_step_begin(self, info: StepInfo) -> None:
        pass

    def on_step_end(self, info: StepEndInfo) -> None:
        pass

    def on_suspend(self, info: SuspendInfo) -> None:
        pass

    def on_run_finished(self, info: RunFinishedInfo) -> None:
        pass

    def on_recover(self, info: RecoveryInfo) -> None:
        pass


def _engine(variant: str, url: str | None) -> Engine:
    """An engine of ``variant`` on ``url`` (None: in memory)."""
    make: Callable[..., Engine] = Engine.in_memory if url is None else Engine
    args: dict[str, Any] = {} if url is None else {"database_url": url, "pool_size": 2}
    if variant == "no-op hook":
        return make(hooks=[NoopHook()], **args)
    engine = make(**args)
    if variant == "OpenTelemetry":
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider

        from iterflow.contrib.otel import instrument

        instrument(engine, tracer_provider=TracerProvider(), meter_provider=MeterProvider())
    return engine


def _register(engine: Engine) -> FlowHandle[Steps, int]:
    @engine.flow("bench.hooked", input=Steps, output=int)
    async def hooked(ctx: Any, x: Steps) -> int:
        for _ in range(x.n):
            await ctx.step("noop", noop)
        return x.n

    return hooked


async def _round(engine: Engine, flow: FlowHandle[Steps, int], runs: int) -> tuple[float, float]:
    """``runs`` sequential runs: steps per wall-clock second, and per CPU second of this
    process (what the hooks cost; less disturbed by other load on the machine)."""
    outcomes: set[AttemptOutcome] = set()
    cpu = time.process_time()
    t0 = time.perf_counter()
    for _ in range(runs):
        started = await flow.start(Steps(n=STEPS))
        outcomes.add(await engine.worker.advance(started.run_id))
    seconds = time.perf_counter() - t0
    cpu_seconds = max(time.process_time() - cpu, 1e-9)
    if outcomes != {AttemptOutcome.DONE}:
        raise RuntimeError(f"hooked runs did not all finish: {outcomes}")
    return runs * STEPS / seconds, runs * STEPS / cpu_seconds


Rates = dict[str, list[tuple[float, float]]]


async def _compare(url: str | None, rounds: int, runs: int) -> Rates:
    """Interleaved rounds of every variant: (wall, CPU) steps/s per round, by variant."""
    engines = {v: _engine(v, url) for v in VARIANTS}
    flows = {v: _register(e) for v, e in engines.items()}
    rates: Rates = {v: [] for v in VARIANTS}
    try:
        for engine in engines.values():
            await engine.open()
        for v in VARIANTS:  # warm-up: pools, prepared statements, imports
            await _round(engines[v], flows[v], runs)
        for i in range(rounds):
            order = VARIANTS[i % 3 :] + VARIANTS[: i % 3]  # rotate who goes first
            for v in order:
                rates[v].append(await _round(engines[v], flows[v], runs))
    finally:
        for engine in engines.values():
            await engine.close()
    return rates


def _rows(section: Section, where: str, rates: Rates, which: int) -> None:
    """Rows of one store: ``which`` 0 = steps per wall second, 1 = per CPU second."""
    unit = "steps/s" if which == 0 else "steps per CPU-second"
    values = {v: [r[which] for r in rates[v]] for v in VARIANTS}
    medians = {v: statistics.median(r) for v, r in values.items()}
    for v in VARIANTS:
        sp = spread(values[v])
        note = f"min-max {sp['min']:,.0f}-{sp['max']:,.0f}" if sp["n"] > 1 else ""
        section.add(f"{where}: {unit}, {v}", medians[v], "/s", note=note)
    base = medians["no hook"]
    for v, note in (
        ("no-op hook", "every event dispatched to a hook that does nothing"),
        ("OpenTelemetry", "SDK providers, no exporter"),
    ):
        section.add(
            f"{where}: {unit}, {v} / no hook",
            medians[v] / base,
            "ratio",
            note=note,
        )


async def run(ctx: Context) -> Section:
    """Steps per second with no hook, a no-op hook and OpenTelemetry, on PostgreSQL and in
    memory."""
    sizes = ctx.sizes
    section = Section("hooks", "9. Hooks on the hot path (same workload, interleaved rounds)")
    with ctx.server.database("hooks") as url:
        pg = await _compare(url, sizes.hook_rounds, sizes.hook_runs)
    memory = await _compare(None, sizes.hook_rounds, sizes.hook_memory_runs)
    # Wall-clock rates on PostgreSQL swing with other load on the machine (fsync contention);
    # the CPU the benchmark process spends per step is what the hooks add. No target: the
    # figures show the cost, and "no hook" is the engine's default path.
    _rows(section, "PostgreSQL", pg, 0)
    _rows(section, "PostgreSQL", pg, 1)
    _rows(section, "memory", memory, 1)
    section.raw = {"postgres": pg, "memory": memory}
    for where, rates, which in (("PostgreSQL", pg, 0), ("in memory, per CPU-s", memory, 1)):
        medians = ", ".join(
            f"{v} {statistics.median(r[which] for r in rates[v]):,.0f}" for v in VARIANTS
        )
        print(f"   hooks, {where}: steps/s {medians}", flush=True)
    return section
