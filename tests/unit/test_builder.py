"""The flow builder: immutability, build-time errors, the static graph, and execution through
the same ctx calls as raw bodies (on the in-memory engine)."""

from __future__ import annotations

import re
import threading
from collections import Counter

import pytest
from pydantic import BaseModel

from iterflow import Engine, FlowError, StepContext, flow
from iterflow.core.builder import FlowBuilder
from iterflow.core.errors import ConfigInvalid, FlowDefinitionError
from iterflow.core.graph import GraphEdge
from iterflow.core.models import RunStatus
from iterflow.testing import FakeClock


class N(BaseModel):
    n: int


class Go(BaseModel):
    add: int


def inc(v: N) -> N:
    return N(n=v.n + 1)


def double(v: N) -> N:
    return N(n=v.n * 2)


def halve(v: N) -> N:
    return N(n=v.n // 2)


def add(v: N, go: Go) -> N:
    return N(n=v.n + go.add)


async def run_to_end(built: object, value: object, *signals: tuple[str, object]) -> object:
    clock = FakeClock()
    engine = Engine.in_memory(clock=clock)
    handle = engine.register(built)  # type: ignore[arg-type]
    async with engine:
        run = await handle.start(value)
        await engine.drain()
        for name, payload in signals:
            await engine.signal(run.run_id, name, payload)
            await engine.drain()
        for _ in range(20):
            if (await engine.status(run.run_id)).run.is_terminal:
                break
            clock.advance("1h")
            await engine.drain()
        detail = await engine.status(run.run_id)
        return await handle.result(run.run_id, timeout=1), [s.cursor_key for s in detail.steps]


def test_every_call_returns_a_new_builder() -> None:
    base = flow("imm").input(N)
    one = base.step("a", inc)
    two = base.step("b", double)
    assert isinstance(one, FlowBuilder) and one is not base
    assert [n.id for n in base.build().graph.nodes] == ["output"]
    assert [n.id for n in one.build().graph.nodes] == ["a", "output"]
    assert [n.id for n in two.build().graph.nodes] == ["b", "output"]
    assert base.version(2).build().version == 2 and base.build().version == 1


def test_build_declares_types_signals_policy_and_a_static_graph() -> None:
    built = (
        flow("shape")
        .version(3)
        .input(N)
        .drift_policy("park")
        .step("a", inc, retries=2, timeout="5s")
        .sleep("1m", label="wait")
        .loop(until=lambda v: v.n > 10, body=lambda b: b.step("grow", double).sleep("1s"))
        .branch(
            on=lambda v: "big" if v.n > 100 else "small",
            cases={"big": lambda b: b.step("shrink", inc), "small": lambda b: b},
            label="size",
        )
        .signal("go", Go, merge=add)
        .build()
    )
    assert (built.name, built.version, built.drift_policy) == ("shape", 3, "park")
    assert built.input_type is N and built.output_type is N
    assert dict(built.signals) == {"go": Go}
    graph = built.graph
    assert [(n.id, n.kind) for n in graph.nodes] == [
        ("a", "step"),
        ("sleep:wait", "sleep"),
        ("loop", "loop"),
        ("grow", "step"),
        ("sleep", "sleep"),
        ("branch:size", "branch"),
        ("shrink", "step"),
        ("signal:go", "signal"),
        ("output", "output"),
    ]
    assert set(graph.edges) == {
        GraphEdge("a", "sleep:wait"),
        GraphEdge("sleep:wait", "loop"),
        GraphEdge("loop", "grow", "repeat"),
        GraphEdge("grow", "sleep"),
        GraphEdge("sleep", "loop"),
        GraphEdge("loop", "branch:size", "done"),
        GraphEdge("branch:size", "shrink", "big"),
        GraphEdge("branch:size", "signal:go", "small"),
        GraphEdge("branch:size", "signal:go", "default"),
        GraphEdge("shrink", "signal:go"),
        GraphEdge("signal:go", "output"),
    }
    assert graph.node("a").detail == "retries=2, timeout=5s"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: flow("d").input(N).step("a", inc).step("a", inc), "duplicate step label 'a'"),
        (
            lambda: (
                flow("d")
                .input(N)
                .step("a", inc)
                .loop(until=lambda v: True, body=lambda b: b.step("a", inc))
            ),
            "duplicate step label 'a'",
        ),
        (
            lambda: (
                flow("d")
                .input(N)
                .branch(
                    on=lambda v: "x",
                    cases={"x": lambda b: b.step("s", inc), "y": lambda b: b.step("s", inc)},
                )
            ),
            "duplicate step label 's'",
        ),
        (
            lambda: flow("d").input(N).sleep("1s", label="w").sleep("2s", label="w"),
            "duplicate sleep 'sleep:w'",
        ),
        (
            lambda: flow("d").input(N).signal("go", Go).signal("go", N),
            "signal 'go' is declared with Go and with N",
        ),
        (
            lambda: (
                flow("d")
                .input(N)
                .signal("go", Go)
                .loop(until=lambda v: True, body=lambda b: b.signal("go", N))
            ),
            "signal 'go' is declared with Go and with N",
        ),
        (lambda: flow("d").version(0), "version must be a positive integer, got 0"),
        (lambda: flow("d").version(-2), "version must be a positive integer, got -2"),
        (lambda: flow("d").version(True), "version must be a positive integer, got True"),
        (lambda: flow("d").version("2"), "version must be a positive integer, got '2'"),  # type: ignore[arg-type]
        (lambda: flow("d").input(N).step("a", inc).input(N), "must come before the first step"),
        (lambda: flow("d").input(N).step("", inc), "non-empty string label"),
        (lambda: flow("d").input(N).step("a#1", inc), "may not contain '#'"),
        (
            lambda: flow("d").input(N).step("a\x00b", inc),
            "flow 'd': step label contains a NUL character, which PostgreSQL refuses: 'a\\x00b'",
        ),
        (
            lambda: flow("d").input(N).step("a\ud800", inc),
            "step label contains a lone surrogate (invalid Unicode text): 'a\\ud800'",
        ),
        (lambda: flow("d").input(N).sleep("1s", label="\udfff"), "sleep label contains a lone"),
        (
            lambda: flow("d").input(N).map("m\x00", inc, over=lambda v: [v]),
            "map label contains a NUL",
        ),
        (
            lambda: flow("d").input(N).loop(until=lambda v: True, body=lambda b: b, label="\x00"),
            "loop label contains a NUL",
        ),
        (
            lambda: flow("d").input(N).branch(on=lambda v: 1, cases={}, label="b\ud800"),
            "branch label contains a lone surrogate",
        ),
        (lambda: flow("d").input(N).sleep("soon"), "sleep"),
        (lambda: flow("d").input(N).step("a", inc, retries=-1), "step 'a'"),
        (
            lambda: flow("d").input(N).loop(until=lambda v: True, body=lambda b: b),
            "loop body must contain at least one node",
        ),
        (
            lambda: flow("d").input(N).loop(until=lambda v: True, body=lambda b: None),  # type: ignore[arg-type, return-value]
            "must return the builder it was given",
        ),
        (
            lambda: flow("d").input(N).loop(until=lambda v: True, body=lambda b: b.version(2)),
            "applies to the whole flow",
        ),
        (lambda: flow("bad name!"), "invalid flow name"),
        (lambda: flow("d").drift_policy("ignore"), "drift_policy must be"),  # type: ignore[arg-type]
    ],
)
def test_definition_mistakes_fail_at_build_time(make: object, message: str) -> None:
    with pytest.raises(FlowDefinitionError, match=re.escape(message)) as info:
        make()  # type: ignore[operator]
    assert info.value.error_code == "FLOW_DEFINITION_INVALID"


def test_a_label_over_the_engines_max_label_chars_fails_at_registration() -> None:
    """The builder does not know the engine's ``max_label_chars``: ``register`` checks every
    label its runs would pass to ``ctx`` (nested ones included), never the first run."""
    long = "L" * 201
    builds = {
        "step": flow("d").input(N).step(long, inc).build(),
        "sleep": flow("d").input(N).sleep("1s", label=long).build(),
        "map": flow("d").input(N).map(long, inc, over=lambda v: [v]).build(),
        "step in a loop": (
            flow("d").input(N).loop(until=lambda v: True, body=lambda b: b.step(long, inc)).build()
        ),
        "step in a branch": (
            flow("d")
            .input(N)
            .branch(on=lambda v: 1, cases={1: lambda b: b}, default=lambda b: b.step(long, inc))
            .build()
        ),
    }
    for where, built in builds.items():
        engine = Engine.in_memory()
        with pytest.raises(FlowDefinitionError) as info:
            engine.register(built)
        kind = where.split()[0]
        assert info.value.message.startswith(
            f"flow 'd': {kind} label is 201 characters, over the limit of 200: 'LLL"
        ), where
        assert info.value.message.endswith("(the engine's max_label_chars)")
        assert engine.registry.all() == []
        Engine.in_memory(max_label_chars=201).register(built)


async def test_a_label_within_a_raised_max_label_chars_runs() -> None:
    built = flow("long").input(N).step("L" * 300, inc).build()
    clock = FakeClock()
    engine = Engine.in_memory(clock=clock, max_label_chars=300)
    handle = engine.register(built)
    async with engine:
        run = await handle.start(N(n=1))
        await engine.drain()
        assert await handle.result(run.run_id, timeout=1) == N(n=2)


def test_lowering_max_label_chars_below_a_registered_flows_label_is_refused() -> None:
    """Registration checked the label against the limit of that time; lowering the limit
    afterwards would make every run of the flow fail, so ``configure`` refuses it."""
    engine = Engine.in_memory(max_label_chars=300)
    engine.register(flow("long").input(N).step("L" * 250, inc).build())
    with pytest.raises(ConfigInvalid) as info:
        engine.configure(max_label_chars=200)
    assert info.value.message.startswith(
        "max_label_chars=200 is too small for a flow already registered: flow 'long': step "
        "label is 250 characters, over the limit of 200"
    )
    assert engine.settings.max_label_chars == 300
    engine.configure(max_label_chars=250)
    assert engine.settings.max_label_chars == 250


def test_the_same_signal_model_twice_and_unlabelled_repeats_are_allowed() -> None:
    built = flow("ok").input(N).signal("go", Go).signal("go", Go).sleep("1s").sleep("2s").build()
    assert [n.id for n in built.graph.nodes] == [
        "signal:go",
        "signal:go#1",
        "sleep",
        "sleep#1",
        "output",
    ]


async def test_value_channel_loop_branch_signal_merge_and_output() -> None:
    built = (
        flow("channel")
        .input(N)
        .step("start", inc)
        .loop(until=lambda v: v.n >= 8, body=lambda b: b.step("grow", double).sleep("1m"))
        .branch(
            on=lambda v: "even" if v.n % 2 == 0 else "odd",
            cases={"even": lambda b: b.step("halve", halve)},
        )
        .signal("go", Go, merge=lambda v, g: N(n=v.n + g.add))
        .output(lambda v: v.n, model=int)
        .build()
    )
    result, keys = await run_to_end(built, N(n=1), ("go", {"add": 100}))
    # start: 1 → 2; the loop doubles to 4 then 8 (two iterations); halved to 4; plus 100.
    assert result == 104
    assert keys == ["start", "grow", "sleep", "grow#1", "sleep#1", "halve", "signal:go"]


async def test_loop_until_is_checked_before_the_first_iteration() -> None:
    built = (
        flow("zero")
        .input(N)
        .loop(until=lambda v: v.n > 0, body=lambda b: b.step("never", inc))
        .branch(on=lambda v: "none", cases={"x": lambda b: b.step("no", inc)})
        .build()
    )
    result, keys = await run_to_end(built, N(n=5))
    assert result == N(n=5) and keys == []  # zero iterations; no case: value passes through


async def test_branch_default_and_signal_replacing_the_value() -> None:
    built = (
        flow("switch")
        .input(N)
        .branch(
            on=lambda v: v.n,
            cases={1: lambda b: b.step("one", inc)},
            default=lambda b: b.step("other", double),
        )
        .signal("go", Go)
        .build()
    )
    assert built.output_type is Go
    result, keys = await run_to_end(built, N(n=7), ("go", {"add": 3}))
    assert result == Go(add=3) and keys == ["other", "signal:go"]


async def test_step_context_carries_input_attempt_run_id_and_cancellation() -> None:
    seen: list[tuple[int, int, bool]] = []
    calls: Counter[str] = Counter()

    def flaky(v: N, step: StepContext[N]) -> N:
        calls["flaky"] += 1
        seen.append((step.input.n, step.attempt, step.is_cancelled()))
        assert step.label == "flaky" and step.flow == "ctxflow" and step.run_id
        assert threading.current_thread() is not threading.main_thread()  # sync: a thread
        if step.attempt < 3:
            raise RuntimeError("transient")
        return N(n=v.n + step.attempt)

    built = flow("ctxflow").input(N).step("flaky", flaky, retries=3, backoff="1ms").build()
    result, _ = await run_to_end(built, N(n=10))
    assert result == N(n=13)
    assert seen == [(10, 1, False), (10, 2, False), (10, 3, False)]


async def test_a_failing_step_fails_the_run_with_its_code() -> None:
    def refuse(v: N) -> N:
        raise FlowError("no", code="REFUSED")

    built = flow("refuse").input(N).step("refuse", refuse).build()
    engine = Engine.in_memory(clock=FakeClock())
    handle = engine.register(built)
    async with engine:
        run = await handle.start(N(n=1))
        await engine.drain()
        assert (await engine.status(run.run_id)).run.status is RunStatus.FAILED
        with pytest.raises(FlowError) as info:
            await handle.result(run.run_id, timeout=1)
        assert info.value.error_code == "REFUSED"


def square(v: N) -> N:
    return N(n=v.n * v.n)


async def test_invoke_runs_the_child_on_the_value() -> None:
    child = flow("child").input(N).step("sq", square).build()
    engine = Engine.in_memory(clock=FakeClock())
    child_handle = engine.register(child)
    parent = flow("parent").input(N).step("inc", inc).invoke(child_handle).build()
    assert [n.id for n in parent.graph.nodes] == ["inc", "invoke:child@1", "output"]
    handle = engine.register(parent)
    async with engine:
        run = await handle.start(N(n=2))
        await engine.drain()
        assert await handle.result(run.run_id, timeout=1) == N(n=9)
        detail = await engine.status(run.run_id)
        assert [s.cursor_key for s in detail.steps] == ["inc", "invoke:child@1"]
