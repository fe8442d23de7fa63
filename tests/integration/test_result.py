"""handle.result: NOTIFY as a latency hint, polling as the floor, codes preserved."""

from __future__ import annotations

import asyncio
from collections import Counter

import asyncpg
import pytest

from iterflow import Engine, FlowError
from iterflow.core.models import RunStatus
from iterflow.runtime.notify import TerminalListener
from iterflow.store.urls import libpq_url
from tests.integration.flows import OrderIn, sql
from tests.integration.test_flows import order_flow, wait_status


async def test_result_survives_terminating_the_listener_connection(
    engine: Engine, database_url: str
) -> None:
    handle = order_flow(engine, Counter())
    await engine.listen(concurrency=1)
    started = await handle.start(OrderIn(order_id="l-1", amount=2))
    await wait_status(engine, started.run_id, RunStatus.AWAITING_SIGNAL)

    waiter = asyncio.create_task(handle.result(started.run_id, timeout=30))
    assert engine._listener is not None
    pid = await engine._listener.backend_pid()
    killed = sql(database_url, "SELECT pg_terminate_backend(%s)", pid)
    assert killed == [(True,)]
    print(f"injected: pg_terminate_backend({pid}) on the LISTEN connection")

    await engine.signal(started.run_id, "approve", {"approved": True})
    receipt = await waiter
    assert receipt.charged == 200

    # The listener came back on a new connection and still delivers notifications.
    async def reconnected() -> bool:
        return engine._listener is not None and engine._listener.connected.is_set()

    from tests.integration.flows import eventually

    await eventually(reconnected, what="listener reconnect")
    new_pid = await engine._listener.backend_pid()
    assert new_pid != pid and engine._listener.reconnects >= 1
    print(f"verified: result returned; listener reconnected as pid {new_pid}")


async def test_result_timeout_has_a_code_and_leaves_the_run_alone(engine: Engine) -> None:
    handle = order_flow(engine, Counter())
    started = await handle.start(OrderIn(order_id="l-2", amount=1))
    with pytest.raises(FlowError) as info:
        await handle.result(started.run_id, timeout=0.2)
    assert info.value.error_code == "RESULT_TIMEOUT"
    assert (await engine.status(started.run_id)).run.status is RunStatus.PENDING


async def test_a_waiter_subscribed_before_listen_is_active_re_checks_once_it_is(
    database_url: str,
) -> None:
    """A NOTIFY sent between a waiter's subscription (which starts the listener) and the
    moment its LISTEN is active is not heard: the waiter is woken once it is, to re-check the
    database. (An attempt subscribed at its start missed a cancel sent meanwhile until its
    lease renewal was refused.)"""
    connecting = asyncio.Event()

    async def connect() -> asyncpg.Connection:
        await connecting.wait()
        return await asyncpg.connect(libpq_url(database_url))

    listener = TerminalListener(connect, "iterflow_test_terminal")
    try:
        woken = listener.subscribe("some-run")
        sql(database_url, "SELECT pg_notify('iterflow_test_terminal', 'some-run')")  # not heard
        assert not woken.is_set()
        connecting.set()
        await asyncio.wait_for(woken.wait(), 10)
        assert listener.connected.is_set() and listener.reconnects == 0
    finally:
        await listener.close()
