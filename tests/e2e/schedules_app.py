"""Worker app for the schedule tests, at the **default** settings
(``flowctl worker schedules_app:engine``).

``Engine()`` with nothing overridden: the schedule sweep is procrastinate's periodic task every
second, the reconciler every ``reconcile_every_seconds=5``, ``lease_seconds=20``. One flow,
``minutely``, declared with ``schedule="* * * * *"`` (the finest a 5-field cron allows); the tests
also give it API schedules. Its one step appends ``<run id> <schedule id>@<tick> <pid> <ns>``
(the tick spelled as in the idempotency key) to the file named by
``$ITERFLOW_E2E_SCHEDULE_COUNTER`` (when set): executions are counted outside the workers.
"""

from __future__ import annotations

import os

from pydantic import BaseModel

from iterflow import Engine, FlowContext, Tick
from iterflow.core.schedule import tick_idempotency_key
from tests.e2e.chaos_app import record

COUNTER_ENV = "ITERFLOW_E2E_SCHEDULE_COUNTER"

engine = Engine()


class Ran(BaseModel):
    pid: int


@engine.flow("minutely", input=Tick, output=Ran, schedule="* * * * *")
async def minutely(ctx: FlowContext, tick: Tick) -> Ran:
    async def body() -> int:
        path = os.environ.get(COUNTER_ENV)
        if path:
            key = tick_idempotency_key(tick.schedule_id, tick.scheduled_at)
            record(path, str(ctx.run_id), key.removeprefix("schedule:"))
        return os.getpid()

    return Ran(pid=await ctx.step("run", body))
