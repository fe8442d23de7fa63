import logging
from datetime import timedelta

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from iterflow import Engine, FlowContext, Hook, RunFinishedInfo, StepEndInfo
from iterflow.contrib.otel import instrument


class Order(BaseModel):
    order_id: str


class SlowSteps(Hook):
    """Warn about step attempts slower than ``limit``; keep the runs that failed."""

    def __init__(self, limit: timedelta) -> None:
        self.limit = limit
        self.failed: list[str] = []

    def on_step_end(self, info: StepEndInfo) -> None:
        if info.duration > self.limit:
            logging.getLogger("app").warning(
                "slow step %s of run %s: %s", info.step.label, info.step.run_id, info.duration
            )

    def on_run_finished(self, info: RunFinishedInfo) -> None:
        if info.error is not None:
            self.failed.append(str(info.run_id))


async def main(database_url: str) -> list[str]:
    # In production: a BatchSpanProcessor with an OTLP exporter, set as the global provider.
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    engine = Engine(database_url, hooks=[SlowSteps(timedelta(seconds=2))])
    instrument(engine, tracer_provider=provider)

    @engine.flow("checkout", input=Order, output=str)
    async def checkout(ctx: FlowContext, order: Order) -> str:
        charge = await ctx.step("charge", lambda: f"ch_{order.order_id}")
        await ctx.step("ship", lambda: None)
        return charge

    async with engine:
        await engine.listen()
        tracer = provider.get_tracer("shop")
        with tracer.start_as_current_span("POST /checkout") as request:
            started = await checkout.start(Order(order_id="A-1"))
        await checkout.result(started.run_id, timeout=30)

    # The steps ran in the worker, in the trace of the request that started the run.
    trace_id = request.get_span_context().trace_id
    return sorted(
        span.name
        for span in exporter.get_finished_spans()
        if span.name.startswith("step ") and span.context and span.context.trace_id == trace_id
    )
