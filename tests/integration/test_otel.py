"""iterflow.contrib.otel over real PostgreSQL runs made by a worker, asserted from the SDK's
in-memory span exporter and metric reader: the span tree of attempts and steps, one trace per run
across suspensions (parent and links), the caller's context restored, child runs in their
parent's trace, semantic-convention attributes, and every metric."""

from __future__ import annotations

import importlib.util
import re
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel

from iterflow import Engine, FlowContext
from iterflow.contrib.otel import instrument, run_context
from iterflow.core.decisions import AttemptOutcome
from iterflow.core.hooks import TRACE_META_KEY, AttemptInfo, Hook, PurgeInfo, StartInfo
from iterflow.core.models import RunRecord, RunStatus
from iterflow.testing import FakeClock
from tests.integration.flows import eventually


class Num(BaseModel):
    n: int


class Go(BaseModel):
    by: str


@dataclass
class Telemetry:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        spans = list(self.spans.get_finished_spans())
        return [s for s in spans if name is None or s.name == name]

    def points(self, metric: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        found: list[Any] = []
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for m in scope.metrics:
                    if m.name == metric:
                        found.extend(m.data.data_points)
        return found

    def total(self, metric: str, **attrs: Any) -> float:
        return float(
            sum(
                p.value
                for p in self.points(metric)
                if all(p.attributes.get(k.replace("_", ".")) == v for k, v in attrs.items())
            )
        )


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Telemetry(exporter, reader, tracer_provider, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


async def _engine(url: str, telemetry: Telemetry) -> Engine:
    engine = Engine(url, pool_size=4)
    instrument(
        engine,
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
    )
    await engine.open()
    return engine


def _attr(span: ReadableSpan, key: str) -> Any:
    assert span.attributes is not None
    return span.attributes.get(key)


def _of_run(spans: Sequence[ReadableSpan], run_id: uuid.UUID) -> list[ReadableSpan]:
    return sorted(
        (s for s in spans if _attr(s, "iterflow.run_id") == str(run_id)),
        key=lambda s: s.start_time or 0,
    )


async def test_a_run_that_sleeps_is_one_trace_of_two_attempts_under_the_callers_span(
    database_url: str, telemetry: Telemetry
) -> None:
    calls = {"a": 0, "b": 0}

    def step_a() -> int:
        calls["a"] += 1
        return 1

    def step_b() -> int:
        calls["b"] += 1
        return 2

    engine = await _engine(database_url, telemetry)
    try:

        @engine.flow("sleepy", input=Num, output=int)
        async def sleepy(ctx: FlowContext, x: Num) -> int:
            a = await ctx.step("a", step_a)
            await ctx.sleep("300ms", label="nap")
            b = await ctx.step("b", step_b)
            return a + b + x.n

        await engine.listen(concurrency=2)
        tracer = telemetry.tracer_provider.get_tracer("caller")
        with tracer.start_as_current_span("checkout") as caller:
            started = await sleepy.start(Num(n=0))
        assert await sleepy.result(started.run_id, timeout=20) == 3

        async def exported() -> bool:
            return len(telemetry.finished("process sleepy")) == 2

        await eventually(exported, what="both attempt spans")
    finally:
        await engine.close()

    caller_ctx = caller.get_span_context()
    attempts = telemetry.finished("process sleepy")
    attempts.sort(key=lambda s: _attr(s, "iterflow.attempt"))
    assert [_attr(s, "iterflow.attempt") for s in attempts] == [1, 2]
    for span in attempts:
        # One trace: the caller's. Each attempt is a child of the caller's span and links to it.
        assert span.context is not None and span.context.trace_id == caller_ctx.trace_id
        assert span.parent is not None and span.parent.span_id == caller_ctx.span_id
        assert [link.context.span_id for link in span.links] == [caller_ctx.span_id]
        assert span.kind is SpanKind.CONSUMER
        assert _attr(span, "messaging.system") == "iterflow"
        assert _attr(span, "messaging.operation.type") == "process"
        assert _attr(span, "messaging.destination.name") == "sleepy"
        assert _attr(span, "messaging.message.id") == str(started.run_id)
        assert _attr(span, "iterflow.run_id") == str(started.run_id)
        assert str(started.run_id) not in span.name
    assert [_attr(s, "iterflow.outcome") for s in attempts] == ["suspended", "done"]
    [suspend] = [e for e in attempts[0].events if e.name == "iterflow.suspend"]
    assert suspend.attributes is not None and suspend.attributes["iterflow.wait.reason"] == "sleep"
    assert _attr(attempts[1], "iterflow.resumed_from") == "timer:sleep:nap"
    assert _attr(attempts[1], "iterflow.run.status") == "done"

    # Steps: one span per executed step, under the attempt that ran it; "a" is not re-traced
    # when attempt 2 replays it.
    steps = {s.name: s for s in telemetry.finished() if s.name.startswith("step ")}
    assert sorted(steps) == ["step a", "step b"] and calls == {"a": 1, "b": 1}
    for name, attempt in (("step a", attempts[0]), ("step b", attempts[1])):
        span = steps[name]
        assert attempt.context is not None and span.parent is not None
        assert span.parent.span_id == attempt.context.span_id
        assert _attr(span, "iterflow.step.status") == "ok"
        assert _attr(span, "iterflow.step.attempt") == 1
        assert str(_attr(span, "code.function.name")).endswith("step_" + name[-1])

    # Metrics.
    assert telemetry.total("iterflow.runs.started", iterflow_flow="sleepy") == 1
    assert (
        telemetry.total("iterflow.runs.finished", iterflow_flow="sleepy") == 1
        and telemetry.points("iterflow.runs.finished")[0].attributes["iterflow.run.status"]
        == "done"
    )
    outcomes = {
        p.attributes["iterflow.outcome"]: p.value for p in telemetry.points("iterflow.attempts")
    }
    assert outcomes == {"suspended": 1, "done": 1}
    durations = telemetry.points("iterflow.step.duration")
    assert sum(p.count for p in durations) == 2
    lags = telemetry.points("iterflow.queue.lag")
    assert sum(p.count for p in lags) == 2 and all(p.min >= 0 for p in lags)
    # +1 at the sleep, -1 when the run was claimed again.
    waiting = telemetry.points("iterflow.runs.waiting")
    assert [(p.attributes["iterflow.wait.reason"], p.value) for p in waiting] == [("sleep", 0)]


async def test_a_child_run_is_traced_under_the_parent_attempt_that_started_it(
    database_url: str, telemetry: Telemetry
) -> None:
    engine = await _engine(database_url, telemetry)
    try:

        @engine.flow("kid", input=Num, output=int)
        async def kid(ctx: FlowContext, x: Num) -> int:
            return await ctx.step("double", lambda: x.n * 2)

        @engine.flow("elder", input=Num, output=int)
        async def elder(ctx: FlowContext, x: Num) -> int:
            return await ctx.invoke(kid, x)

        await engine.listen(concurrency=2)
        started = await elder.start(Num(n=4))
        assert await elder.result(started.run_id, timeout=20) == 8

        async def exported() -> bool:
            elder_spans = telemetry.finished("process elder")
            return len(elder_spans) == 2 and len(telemetry.finished("process kid")) == 1

        await eventually(exported, what="the parent's two attempt spans and the child's")
    finally:
        await engine.close()

    parents = sorted(
        telemetry.finished("process elder"), key=lambda s: _attr(s, "iterflow.attempt")
    )
    [child] = telemetry.finished("process kid")
    # Started outside any trace: the run's trace id is its run id.
    assert parents[0].context is not None
    assert parents[0].context.trace_id == started.run_id.int
    origin = run_context(started.run_id, {})
    for attempt in parents:
        assert attempt.parent is not None and attempt.parent.span_id == origin.span_id
    assert child.context is not None and child.context.trace_id == started.run_id.int
    assert child.parent is not None and child.parent.span_id == parents[0].context.span_id
    assert [link.context.span_id for link in child.links] == [parents[0].context.span_id]
    assert _attr(child, "iterflow.parent_run_id") == str(started.run_id)
    [step] = telemetry.finished("step double")
    assert step.parent is not None and step.parent.span_id == child.context.span_id
    assert telemetry.total("iterflow.runs.started", iterflow_flow="kid") == 1
    # +1 / -1 for the parent's wait on its child.
    waiting = {
        (p.attributes["iterflow.flow"], p.attributes["iterflow.wait.reason"]): p.value
        for p in telemetry.points("iterflow.runs.waiting")
    }
    assert waiting == {("elder", "child"): 0}


async def test_a_failed_step_records_the_exception_with_its_traceback(
    database_url: str, telemetry: Telemetry
) -> None:
    def explode() -> int:
        raise RuntimeError("kaboom")

    engine = await _engine(database_url, telemetry)
    try:

        @engine.flow("fragile", input=Num, output=int)
        async def fragile(ctx: FlowContext, x: Num) -> int:
            return await ctx.step("explode", explode, retries=1, backoff="10ms")

        started = await fragile.start(Num(n=1))
        await engine.worker.advance(started.run_id)
    finally:
        await engine.close()

    steps = sorted(
        telemetry.finished("step explode"), key=lambda s: _attr(s, "iterflow.step.attempt")
    )
    assert [_attr(s, "iterflow.step.status") for s in steps] == ["retrying", "failed"]
    assert steps[0].status.status_code is StatusCode.UNSET  # retried: not final yet
    assert steps[1].status.status_code is StatusCode.ERROR
    assert _attr(steps[1], "error.type") == "STEP_FAILED"
    [exc] = [e for e in steps[1].events if e.name == "exception"]
    assert exc.attributes is not None
    assert exc.attributes["exception.type"] == "STEP_FAILED"
    assert "kaboom" in str(exc.attributes["exception.message"])
    assert "in explode" in str(exc.attributes["exception.stacktrace"])
    [attempt] = telemetry.finished("process fragile")
    assert attempt.status.status_code is StatusCode.ERROR
    assert _attr(attempt, "iterflow.run.status") == "failed"
    statuses = {
        p.attributes["iterflow.step.status"]: p.count
        for p in telemetry.points("iterflow.step.duration")
    }
    assert statuses == {"retrying": 1, "failed": 1}
    assert telemetry.total("iterflow.runs.finished", iterflow_flow="fragile") == 1


async def test_a_signal_is_a_producer_span_in_the_senders_trace_linked_to_the_run(
    database_url: str, telemetry: Telemetry
) -> None:
    engine = await _engine(database_url, telemetry)
    try:

        @engine.flow("gate", input=Num, output=str, signals={"go": Go})
        async def gate(ctx: FlowContext, x: Num) -> str:
            return (await ctx.signal("go", Go)).by

        await engine.listen(concurrency=2)
        tracer = telemetry.tracer_provider.get_tracer("caller")
        with tracer.start_as_current_span("open-gate") as starter:
            started = await gate.start(Num(n=1))

        async def waiting() -> bool:
            return (await engine.status(started.run_id)).run.status is RunStatus.AWAITING_SIGNAL

        await eventually(waiting, what="the run to wait for its signal")
        with tracer.start_as_current_span("webhook") as sender:
            assert (await engine.signal(started.run_id, "go", Go(by="ops"))).kind == "delivered"
        assert await gate.result(started.run_id, timeout=20) == "ops"
    finally:
        await engine.close()

    [send] = telemetry.finished("send gate")
    assert send.kind is SpanKind.PRODUCER
    assert send.parent is not None and send.parent.span_id == sender.get_span_context().span_id
    assert _attr(send, "messaging.operation.type") == "send"
    assert _attr(send, "iterflow.signal.name") == "go"
    assert _attr(send, "iterflow.signal.result") == "delivered"
    assert _attr(send, "messaging.message.id") is not None
    [link] = send.links
    assert link.context.span_id == starter.get_span_context().span_id
    assert link.context.trace_id == starter.get_span_context().trace_id


async def test_recoveries_and_retention_deletions_are_counted(
    database_url: str, telemetry: Telemetry
) -> None:
    engine = await _engine(database_url, telemetry)
    try:

        @engine.flow("lost", input=Num, output=int)
        async def lost(ctx: FlowContext, x: Num) -> int:
            return x.n

        started = await lost.start(Num(n=1))
        assert await engine.store.claim(started.run_id, "dead-worker", 0.001) is not None

        async def recovered() -> bool:
            return (await engine.reconcile()).expired_leases == 1

        await eventually(recovered, what="the expired lease to be recovered")
        hooks = engine.hooks
        assert hooks is not None
        hooks.purge(PurgeInfo(count=5, flow="lost"))  # what retention calls after a purge
    finally:
        await engine.close()
    assert (
        telemetry.total("iterflow.reconciler.recoveries", iterflow_recovery_kind="expired_lease")
        == 1
    )
    assert telemetry.total("iterflow.retention.deletions", iterflow_flow="lost") == 5


def test_the_documented_names_are_the_public_ones() -> None:
    import iterflow
    from iterflow.contrib import otel
    from iterflow.core import hooks

    text = (Path(__file__).resolve().parents[2] / "docs/observability.md").read_text()
    metrics = re.findall(r"^\| `(iterflow\.[a-z._]+)` \| `([A-Z_]+)` \|", text, re.M)
    assert [name for name, _ in metrics] == list(otel.METRICS)
    assert all(getattr(otel, constant) == name for name, constant in metrics)
    events = re.findall(r"^\| `(inject|on_\w+)(?:\(\))?` \| (?:`(\w+)`|\S+) \|", text, re.M)
    assert {event for event, _ in events} == {
        name for name in vars(hooks.Hook) if name == "inject" or name.startswith("on_")
    }
    for _, record in events:  # each event's record (inject() has none), from iterflow
        assert not record or getattr(iterflow, record) is getattr(hooks, record)
    assert iterflow.AttemptOutcome is AttemptOutcome


def test_observability_doc_block_is_the_example() -> None:
    root = Path(__file__).resolve().parents[2]
    blocks = re.findall(r"```python\n(.*?)```", (root / "docs/observability.md").read_text(), re.S)
    assert (root / "docs/examples/observability.py").read_text() in blocks


async def test_observability_example_runs(database_url: str) -> None:
    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location(
        "observability_example", root / "docs/examples/observability.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert await module.main(database_url) == ["step charge", "step ship"]


# -- the signal sender's context, and queue lag for every wake-up reason (both stores) --------


class Attempts(Hook):
    """Records each attempt's :class:`AttemptInfo` and each run a run started."""

    def __init__(self) -> None:
        self.begins: list[AttemptInfo] = []
        self.children: dict[uuid.UUID, uuid.UUID] = {}

    def on_attempt_begin(self, info: AttemptInfo) -> None:
        self.begins.append(info)

    def on_start(self, info: StartInfo) -> None:
        if info.parent_run_id is not None:
            self.children[info.parent_run_id] = info.run_id


@dataclass
class Stage:
    """An instrumented engine on one store, driven attempt by attempt (``engine.worker``),
    with time moved past a due time: a fake clock on the in-memory store, the wall clock
    (the embedded PostgreSQL's host) waited for on PostgreSQL."""

    engine: Engine
    clock: FakeClock | None

    async def past(self, when: datetime | None) -> None:
        assert when is not None
        if self.clock is not None:
            self.clock.advance_to(when)
            self.clock.advance("2s")
            return

        async def passed() -> bool:
            return datetime.now(UTC) > when + timedelta(milliseconds=20)

        await eventually(passed, what=f"the time to pass {when}")

    async def run(self, run_id: uuid.UUID) -> RunRecord:
        return (await self.engine.status(run_id)).run


@pytest.fixture(params=["postgres", "memory"])
async def stage(request: pytest.FixtureRequest, telemetry: Telemetry) -> AsyncIterator[Stage]:
    clock: FakeClock | None = None
    if request.param == "memory":
        clock = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
        engine = Engine.in_memory(clock=clock, inline_retry_max_seconds=0)
    else:
        url = request.getfixturevalue("database_url")
        engine = Engine(url, pool_size=4, inline_retry_max_seconds=0)
    instrument(
        engine,
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
    )
    async with engine:
        yield Stage(engine, clock)


async def test_the_attempt_a_signal_wakes_links_to_the_senders_span(
    stage: Stage, telemetry: Telemetry
) -> None:
    engine = stage.engine

    @engine.flow("door", input=Num, output=str, signals={"go": Go})
    async def door(ctx: FlowContext, x: Num) -> str:
        first = await ctx.signal("go", Go)
        second = await ctx.signal("go", Go)
        return first.by + second.by

    tracer = telemetry.tracer_provider.get_tracer("caller")
    with tracer.start_as_current_span("open-door") as starter:
        started = await door.start(Num(n=1))
    rid = started.run_id
    assert await engine.worker.advance(rid) is AttemptOutcome.SUSPENDED
    with tracer.start_as_current_span("webhook") as sender:
        sent = await engine.signal(rid, "go", Go(by="a"))
    assert sent.kind == "delivered" and sent.signal_id is not None
    assert await engine.worker.advance(rid) is AttemptOutcome.SUSPENDED
    # Sent outside any trace: nothing stored, no link.
    assert (await engine.signal(rid, "go", Go(by="b"))).kind == "delivered"
    assert await engine.worker.advance(rid) is AttemptOutcome.DONE
    assert (await stage.run(rid)).output == "ab"

    # The sender's context is stored with its signal (signals.meta), and only there.
    detail = await engine.status(rid)
    traced, untraced = detail.signals
    sender_ctx = sender.get_span_context()
    parent = traced.meta[TRACE_META_KEY]["traceparent"]
    assert parent.split("-")[1:3] == [f"{sender_ctx.trace_id:032x}", f"{sender_ctx.span_id:016x}"]
    assert untraced.meta == {}

    attempts = sorted(
        telemetry.finished("process door"), key=lambda s: _attr(s, "iterflow.attempt")
    )
    assert [_attr(s, "iterflow.resumed_from") for s in attempts] == [None, "signal:go", "signal:go"]
    origin = starter.get_span_context()
    for span in attempts:  # every attempt stays in the run's (the starter's) trace
        assert span.context is not None and span.context.trace_id == origin.trace_id
        assert span.parent is not None and span.parent.span_id == origin.span_id
        assert span.links[0].context.span_id == origin.span_id
        assert dict(span.links[0].attributes or {}) == {"iterflow.link": "run"}
    assert [len(s.links) for s in attempts] == [1, 2, 1]
    link = attempts[1].links[1]
    assert link.context.trace_id == sender_ctx.trace_id
    assert link.context.span_id == sender_ctx.span_id
    assert dict(link.attributes or {}) == {
        "iterflow.link": "signal_sender",
        "messaging.message.id": str(sent.signal_id),
    }
    # The PRODUCER span the sender recorded is a child of the sender's span: the link leads
    # from the consuming attempt to the trace that holds it.
    send = [s for s in telemetry.finished("send door") if s.parent is not None]
    assert any(s.parent is not None and s.parent.span_id == sender_ctx.span_id for s in send)


async def test_queue_lag_is_measured_for_every_wake_up_reason(
    stage: Stage, telemetry: Telemetry
) -> None:
    engine = stage.engine
    seen = Attempts()
    engine.add_hook(seen)
    tries = {"flaky": 0, "boom": 0}

    def flaky() -> int:
        tries["flaky"] += 1
        if tries["flaky"] == 1:
            raise RuntimeError("first try fails")
        return 7

    def boom() -> int:
        tries["boom"] += 1
        if tries["boom"] == 1:
            raise RuntimeError("fails until retried")
        return 1

    @engine.flow("kid", input=Num, output=int, signals={"go": Go})
    async def kid(ctx: FlowContext, x: Num) -> int:
        await ctx.signal("go", Go)
        return await ctx.step("flaky", flaky, retries=1, backoff="200ms")

    @engine.flow("elder", input=Num, output=int)
    async def elder(ctx: FlowContext, x: Num) -> int:
        n = await ctx.invoke(kid, x)
        await ctx.sleep("200ms", label="nap")
        return n

    @engine.flow("once", input=Num, output=int)
    async def once(ctx: FlowContext, x: Num) -> int:
        return await ctx.step("boom", boom)

    @engine.flow("plain", input=Num, output=int)
    async def plain(ctx: FlowContext, x: Num) -> int:
        return x.n

    advance = engine.worker.advance
    dues: list[datetime | None] = []  # what each attempt's lag must be measured from

    # First attempt: due at the start.
    p = (await elder.start(Num(n=1))).run_id
    dues.append((await stage.run(p)).created_at)
    await stage.past(dues[-1])
    assert await advance(p) is AttemptOutcome.SUSPENDED  # waits for its child
    k = seen.children[p]
    dues.append((await stage.run(k)).created_at)
    await stage.past(dues[-1])
    assert await advance(k) is AttemptOutcome.SUSPENDED  # waits for "go"
    # Woken by a signal: due when it came.
    await engine.signal(k, "go", Go(by="ops"))
    [signal] = (await engine.status(k)).signals
    dues.append(signal.received_at)
    await stage.past(dues[-1])
    assert await advance(k) is AttemptOutcome.SUSPENDED  # "flaky" failed: retry backoff
    # Woken by a step's retry: due at the backoff's end.
    dues.append((await stage.run(k)).wake_at)
    await stage.past(dues[-1])
    assert await advance(k) is AttemptOutcome.DONE
    # Woken by its child's end: due when the child finished.
    dues.append((await stage.run(k)).finished_at)
    await stage.past(dues[-1])
    assert await advance(p) is AttemptOutcome.SUSPENDED  # sleeps
    # Woken by a sleep's end.
    dues.append((await stage.run(p)).wake_at)
    await stage.past(dues[-1])
    assert await advance(p) is AttemptOutcome.DONE

    # Woken by an operator's retry: due when it was retried.
    f = (await once.start(Num(n=1))).run_id
    dues.append((await stage.run(f)).created_at)
    await stage.past(dues[-1])
    assert await advance(f) is AttemptOutcome.FAILED
    assert (await engine.retry(f)).kind == "queued"
    dues.append((await stage.run(f)).updated_at)
    await stage.past(dues[-1])
    assert await advance(f) is AttemptOutcome.DONE

    # Woken by the reconciler after a dead worker's lease expired: due at the recovery.
    r = (await plain.start(Num(n=1))).run_id
    dead = await engine.store.claim(r, "dead-worker", 0.05)
    assert dead is not None
    await stage.past((await stage.run(r)).lease_expires_at)
    assert (await engine.reconcile()).expired_leases == 1
    dues.append((await stage.run(r)).updated_at)
    await stage.past(dues[-1])
    assert await advance(r) is AttemptOutcome.DONE

    # Claimed straight after a dead worker's lease expired: due at the expiry.
    e = (await plain.start(Num(n=1))).run_id
    assert await engine.store.claim(e, "dead-worker", 0.05) is not None
    dues.append((await stage.run(e)).lease_expires_at)
    await stage.past(dues[-1])
    assert await advance(e) is AttemptOutcome.DONE

    begins = seen.begins
    assert [(b.flow, b.resumed_reason) for b in begins] == [
        ("elder", None),
        ("kid", None),
        ("kid", "signal"),
        ("kid", "retry"),
        ("elder", "child"),
        ("elder", "sleep"),
        ("once", None),
        ("once", None),
        ("plain", None),
        ("plain", None),
    ]
    # both take the run from a lost attempt: the reconciler's recovery, or the claim itself
    assert [b.resumed_from for b in begins][-2:] == ["recovery", "recovery"]
    lags = [b.queue_lag for b in begins]
    assert all(lag is not None for lag in lags), lags
    for begin, due in zip(begins, dues, strict=True):
        assert due is not None and begin.queue_lag == begin.claimed_at - due, (begin, due)
    if stage.clock is not None:  # each claim came 2s (fake) after its due time
        assert lags == [timedelta(seconds=2)] * len(begins)
    # The histogram got one point per attempt.
    points = telemetry.points("iterflow.queue.lag")
    assert sum(p.count for p in points) == len(begins)
    assert sum(p.sum for p in points) == pytest.approx(
        sum(lag.total_seconds() for lag in lags if lag is not None)
    )
