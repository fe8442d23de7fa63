"""OpenTelemetry spans and metrics from the engine's hooks (``pip install iterflow[otel]``).

``instrument(engine)`` installs one :class:`OtelHook` on the engine (:meth:`Engine.add_hook`) and
returns it. It uses the global tracer and meter providers unless given others.

**Traces.** One span per attempt (``process <flow>``, kind CONSUMER), with a child span per step
function executed in it (``step <label>``); steps replayed from history are not traced again,
so a run's steps appear once, in the attempt that ran them. The caller's trace context is
captured at ``start()`` (a W3C ``traceparent`` stored in the run's ``meta``) and restored in the
worker as the parent of every attempt of the run, which also carries a link to it: a run that
slept three days between two attempts is one trace. A run started outside any trace gets a
trace of its own whose id is the run id. ``ctx.invoke`` captures the parent's attempt span the
same way, so a child run's attempts are children of the parent attempt that started it.
``engine.signal()`` records a short PRODUCER span (``send <flow>``) in the caller's trace,
linked to the run's trace, and stores the caller's context with the signal (``signals.meta``):
the attempt the signal wakes carries a second link, to the sender's span
(``iterflow.link = "signal_sender"``, ``messaging.message.id`` = the signal id). A link, not
the parent, as the messaging conventions prescribe for a message whose consumer already has a
parent of its own: the attempt stays in the run's trace. The attempt span is the current span
while the body runs and each step span while its function runs, so spans made by the code a
step calls (HTTP clients, database drivers) nest under it.

Span names carry only the flow name and the step label (both fixed by your code); the run id,
cursor key and attempt numbers are attributes. Attributes follow the OpenTelemetry semantic
conventions where they exist (``messaging.system = "iterflow"``, ``messaging.operation.*``,
``messaging.destination.name`` = the flow, ``messaging.message.id`` = the run id,
``code.function.name``, ``error.type``) and are otherwise prefixed ``iterflow.``.

**Metrics** (meter ``iterflow``): the instruments named by the constants below (all in
:data:`METRICS`: runs started and finished, attempts and their duration, step duration, queue
lag, runs waiting, reconciler recoveries, retention deletions).

``iterflow.runs.waiting`` counts +1 when a run suspends and -1 when it is claimed again (or
canceled while it waits), in whichever process does it: sum it over every process of the
deployment. Runs already waiting when instrumentation started are not in it.
"""

from __future__ import annotations

import contextvars
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from iterflow.core.decisions import AttemptOutcome
from iterflow.core.hooks import (
    AttemptEndInfo,
    AttemptInfo,
    Hook,
    PurgeInfo,
    RecoveryInfo,
    RunFinishedInfo,
    SignalInfo,
    StartInfo,
    StepEndInfo,
    StepInfo,
    SuspendInfo,
)
from iterflow.core.states import StepStatus

__all__ = [
    "ATTEMPTS",
    "ATTEMPT_DURATION",
    "METRICS",
    "QUEUE_LAG",
    "RECONCILER_RECOVERIES",
    "RETENTION_DELETIONS",
    "RUNS_FINISHED",
    "RUNS_STARTED",
    "RUNS_WAITING",
    "SCOPE",
    "STEP_DURATION",
    "OtelHook",
    "instrument",
    "run_context",
]

#: The instrumentation scope of the tracer and the meter.
SCOPE = "iterflow"

# The instruments' names (meter SCOPE), for dashboards and alerts that refer to them.
#: Counter of runs started, by ``iterflow.flow``.
RUNS_STARTED = "iterflow.runs.started"
#: Counter of runs that reached a final status, by flow and ``iterflow.run.status``.
RUNS_FINISHED = "iterflow.runs.finished"
#: Counter of attempts, by flow and ``iterflow.outcome``.
ATTEMPTS = "iterflow.attempts"
#: Histogram (s) of attempt durations, by flow and outcome.
ATTEMPT_DURATION = "iterflow.attempt.duration"
#: Histogram (s) of step attempt durations, by flow, ``iterflow.step.label`` and status.
STEP_DURATION = "iterflow.step.duration"
#: Histogram (s): a wake-up's due time → its claim, by flow (:attr:`AttemptInfo.queue_lag`).
QUEUE_LAG = "iterflow.queue.lag"
#: Up/down counter of runs waiting, by flow and ``iterflow.wait.reason``.
RUNS_WAITING = "iterflow.runs.waiting"
#: Counter of runs and jobs the reconciler repaired, by ``iterflow.recovery.kind``.
RECONCILER_RECOVERIES = "iterflow.reconciler.recoveries"
#: Counter of runs purged by retention, by ``iterflow.flow`` when it purged one flow.
RETENTION_DELETIONS = "iterflow.retention.deletions"
#: Every instrument's name.
METRICS = (
    RUNS_STARTED,
    RUNS_FINISHED,
    ATTEMPTS,
    ATTEMPT_DURATION,
    STEP_DURATION,
    QUEUE_LAG,
    RUNS_WAITING,
    RECONCILER_RECOVERIES,
    RETENTION_DELETIONS,
)

_PROPAGATOR = TraceContextTextMapPropagator()
_FAILED = frozenset({AttemptOutcome.FAILED})


class _Hookable(Protocol):
    def add_hook(self, hook: Hook) -> None: ...


def instrument(
    engine: _Hookable,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
) -> OtelHook:
    """Trace and measure ``engine`` (an :class:`iterflow.Engine`): install an
    :class:`OtelHook` on it and return it. Call it in every process that starts runs, signals
    them or runs workers."""
    hook = OtelHook(tracer_provider=tracer_provider, meter_provider=meter_provider)
    engine.add_hook(hook)
    return hook


def run_context(run_id: uuid.UUID, carrier: Mapping[str, str]) -> SpanContext:
    """The span context a run's attempts are parented to: the one captured when it started
    (``carrier``), else a fixed one in the trace whose id is the run id."""
    parent = trace.get_current_span(_PROPAGATOR.extract(dict(carrier))).get_span_context()
    if parent.is_valid:
        return parent
    return SpanContext(
        trace_id=run_id.int,
        span_id=(run_id.int & 0xFFFF_FFFF_FFFF_FFFF) or 1,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )


@dataclass(slots=True)
class _Open:
    span: trace.Span
    token: contextvars.Token[otel_context.Context]


class OtelHook(Hook):
    """The engine hook behind :func:`instrument`: spans per attempt and step, and metrics."""

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.tracer = trace.get_tracer(SCOPE, tracer_provider=tracer_provider)
        meter = metrics.get_meter(SCOPE, meter_provider=meter_provider)
        self._started = meter.create_counter(RUNS_STARTED, unit="{run}", description="Runs started")
        self._finished = meter.create_counter(
            RUNS_FINISHED, unit="{run}", description="Runs that reached a final status"
        )
        self._attempts = meter.create_counter(
            ATTEMPTS, unit="{attempt}", description="Attempts made on runs, by outcome"
        )
        self._attempt_duration = meter.create_histogram(
            ATTEMPT_DURATION, unit="s", description="Duration of attempts"
        )
        self._step_duration = meter.create_histogram(
            STEP_DURATION, unit="s", description="Duration of step attempts"
        )
        self._lag = meter.create_histogram(
            QUEUE_LAG, unit="s", description="Wake-up due time to claim"
        )
        self._waiting = meter.create_up_down_counter(
            RUNS_WAITING, unit="{run}", description="Runs waiting, by reason"
        )
        self._recoveries = meter.create_counter(
            RECONCILER_RECOVERIES,
            unit="{item}",
            description="Runs and jobs repaired by the reconciler",
        )
        self._deletions = meter.create_counter(
            RETENTION_DELETIONS, unit="{run}", description="Runs purged by retention"
        )
        # One attempt per run at a time (the lease); steps by run and cursor key.
        self._lock = threading.Lock()
        self._runs: dict[uuid.UUID, _Open] = {}
        self._steps: dict[tuple[uuid.UUID, str], _Open] = {}

    # -- the caller's side --------------------------------------------------------------------

    def inject(self) -> Mapping[str, str] | None:
        """The current trace context as a W3C ``traceparent`` carrier (none outside a trace)."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        return carrier or None

    def on_start(self, info: StartInfo) -> None:
        """Count the run started."""
        if info.created:
            self._started.add(1, {"iterflow.flow": info.flow})

    def on_signal(self, info: SignalInfo) -> None:
        """A PRODUCER span in the caller's trace, linked to the run's trace."""
        link = Link(run_context(info.run_id, info.carrier), {"iterflow.link": "run"})
        attributes: dict[str, Any] = {
            "messaging.system": "iterflow",
            "messaging.operation.type": "send",
            "messaging.operation.name": "signal",
            "messaging.destination.name": info.flow,
            "iterflow.run_id": str(info.run_id),
            "iterflow.flow": info.flow,
            "iterflow.signal.name": info.name,
            "iterflow.signal.result": info.result,
        }
        if info.signal_id is not None:
            attributes["messaging.message.id"] = str(info.signal_id)
        span = self.tracer.start_span(
            f"send {info.flow}", kind=SpanKind.PRODUCER, links=[link], attributes=attributes
        )
        span.end()

    def on_run_finished(self, info: RunFinishedInfo) -> None:
        """Count the run finished; mark the attempt span that finished it."""
        self._finished.add(
            1, {"iterflow.flow": info.flow, "iterflow.run.status": info.status.value}
        )
        if info.waited_reason is not None:
            self._waiting.add(
                -1, {"iterflow.flow": info.flow, "iterflow.wait.reason": info.waited_reason}
            )
        opened = self._runs.get(info.run_id)
        if opened is not None:
            opened.span.set_attribute("iterflow.run.status", info.status.value)
            if info.error is not None:
                _record_error(opened.span, info.error)

    # -- the worker's side --------------------------------------------------------------------

    def on_attempt_begin(self, info: AttemptInfo) -> None:
        """Open the attempt span under the run's context and make it current."""
        origin = run_context(info.run_id, info.carrier)
        attributes: dict[str, Any] = {
            "messaging.system": "iterflow",
            "messaging.operation.type": "process",
            "messaging.operation.name": "advance",
            "messaging.destination.name": info.flow,
            "messaging.message.id": str(info.run_id),
            "iterflow.run_id": str(info.run_id),
            "iterflow.flow": info.flow,
            "iterflow.flow.version": info.version,
            "iterflow.attempt": info.attempt,
            "iterflow.worker": info.worker,
        }
        if info.parent_run_id is not None:
            attributes["iterflow.parent_run_id"] = str(info.parent_run_id)
        if info.resumed_from is not None:
            attributes["iterflow.resumed_from"] = info.resumed_from
        if info.queue_lag is not None:
            lag = info.queue_lag.total_seconds()
            attributes["iterflow.queue.lag_s"] = lag
            self._lag.record(lag, {"iterflow.flow": info.flow})
        if info.resumed_reason is not None:
            self._waiting.add(
                -1, {"iterflow.flow": info.flow, "iterflow.wait.reason": info.resumed_reason}
            )
        links = [Link(origin, {"iterflow.link": "run"})]
        sender = _sender_context(info)
        if sender is not None:
            links.append(sender)
        span = self.tracer.start_span(
            f"process {info.flow}",
            context=trace.set_span_in_context(trace.NonRecordingSpan(origin)),
            kind=SpanKind.CONSUMER,
            links=links,
            attributes=attributes,
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        with self._lock:
            self._runs[info.run_id] = _Open(span, token)

    def on_attempt_end(self, info: AttemptEndInfo) -> None:
        """Close the attempt span; count the attempt."""
        attempt = info.attempt
        outcome = info.outcome.value
        labels = {"iterflow.flow": attempt.flow, "iterflow.outcome": outcome}
        self._attempts.add(1, labels)
        self._attempt_duration.record(info.duration.total_seconds(), labels)
        with self._lock:
            opened = self._runs.pop(attempt.run_id, None)
        if opened is None:
            return
        opened.span.set_attribute("iterflow.outcome", outcome)
        if info.outcome in _FAILED:
            opened.span.set_status(Status(StatusCode.ERROR, f"attempt {outcome}"))
        _detach(opened.token)
        opened.span.end()

    def on_step_begin(self, info: StepInfo) -> None:
        """Open a step span under the current (attempt) span and make it current."""
        attributes: dict[str, Any] = {
            "iterflow.run_id": str(info.run_id),
            "iterflow.flow": info.flow,
            "iterflow.step.key": info.cursor_key,
            "iterflow.step.label": info.label,
            "iterflow.step.position": info.position,
            "iterflow.step.attempt": info.attempt,
            "iterflow.attempt": info.run_attempt,
        }
        if info.function:
            attributes["code.function.name"] = info.function
        span = self.tracer.start_span(f"step {info.label}", attributes=attributes)
        token = otel_context.attach(trace.set_span_in_context(span))
        with self._lock:
            self._steps[(info.run_id, info.cursor_key)] = _Open(span, token)

    def on_step_end(self, info: StepEndInfo) -> None:
        """Close the step span; record its duration."""
        step = info.step
        self._step_duration.record(
            info.duration.total_seconds(),
            {
                "iterflow.flow": step.flow,
                "iterflow.step.label": step.label,
                "iterflow.step.status": info.status.value,
            },
        )
        with self._lock:
            opened = self._steps.pop((step.run_id, step.cursor_key), None)
        if opened is None:
            return
        span = opened.span
        span.set_attribute("iterflow.step.status", info.status.value)
        if info.retry_in is not None:
            span.set_attribute("iterflow.step.retry_in_s", info.retry_in.total_seconds())
        if info.error is not None:
            _record_error(span, info.error, final=info.status is StepStatus.FAILED)
        _detach(opened.token)
        span.end()

    def on_suspend(self, info: SuspendInfo) -> None:
        """Note the suspension on the attempt span; count the run as waiting."""
        self._waiting.add(1, {"iterflow.flow": info.flow, "iterflow.wait.reason": info.reason})
        opened = self._runs.get(info.run_id)
        if opened is None:
            return
        attributes: dict[str, Any] = {
            "iterflow.wait.reason": info.reason,
            "iterflow.step.key": info.cursor_key,
        }
        if info.wake_at is not None:
            attributes["iterflow.wake_at"] = info.wake_at.isoformat()
        if info.waiting_for is not None:
            attributes["iterflow.waiting_for"] = info.waiting_for
        opened.span.add_event("iterflow.suspend", attributes)

    def on_recover(self, info: RecoveryInfo) -> None:
        """Count what the reconciler repaired."""
        for kind, n in (
            ("expired_lease", info.expired_leases),
            ("orphaned_job", info.orphaned_jobs),
            ("rewoken", info.rewoken),
        ):
            if n:
                self._recoveries.add(n, {"iterflow.recovery.kind": kind})

    def on_purge(self, info: PurgeInfo) -> None:
        """Count the runs retention deleted."""
        if info.count:
            labels = {} if info.flow is None else {"iterflow.flow": info.flow}
            self._deletions.add(info.count, labels)


def _sender_context(info: AttemptInfo) -> Link | None:
    """A link to where the signal that woke the run was sent, if that was in a trace."""
    if not info.signal_carrier:
        return None
    sent = trace.get_current_span(_PROPAGATOR.extract(dict(info.signal_carrier)))
    context = sent.get_span_context()
    if not context.is_valid:
        return None
    attributes: dict[str, Any] = {"iterflow.link": "signal_sender"}
    if info.signal_id is not None:
        attributes["messaging.message.id"] = str(info.signal_id)
    return Link(context, attributes)


def _record_error(span: trace.Span, error: Mapping[str, Any], *, final: bool = True) -> None:
    """An error dict (``FlowError.to_dict``) as OpenTelemetry's exception event and status."""
    code = str(error.get("code", "FLOW_ERROR"))
    message = str(error.get("message", ""))
    attributes: dict[str, Any] = {"exception.type": code, "exception.message": message}
    trace_text = error.get("traceback")
    if isinstance(trace_text, str):
        attributes["exception.stacktrace"] = trace_text
    span.add_event("exception", attributes)
    span.set_attribute("error.type", code)
    if final:
        span.set_status(Status(StatusCode.ERROR, f"[{code}] {message}"))


def _detach(token: contextvars.Token[otel_context.Context]) -> None:
    otel_context.detach(token)  # logs (never raises) when called in another context
