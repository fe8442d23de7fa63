"""The builder's ``.map``, pure parts: its graph node (static graph, Mermaid, JSON, run overlays),
the value type it leaves, definition mistakes refused at build time, and the items ``over``
returns, refused like a step result that cannot be stored."""

from __future__ import annotations

import math
from typing import Any

import pytest
from pydantic import BaseModel

from iterflow import flow
from iterflow.core.builder import DEFAULT_MAP_CONCURRENCY
from iterflow.core.describe import describe, graph_of
from iterflow.core.errors import FlowDefinitionError, MapItemsInvalid, PayloadInvalid
from iterflow.core.graph import GraphEdge, map_call, render, to_json
from iterflow.core.models import RunDetail, RunStatus, StepKind, StepStatus
from iterflow.core.nodes import MapNode, map_items
from iterflow.core.progress import graph_from_history, overlay
from tests.unit.test_graph import memo, run_record, suspended_at


class Basket(BaseModel):
    skus: list[str]


async def price(sku: str) -> int:
    return len(sku)


def label(cents: list[int]) -> str:
    return ",".join(map(str, cents))


ship = flow("ship").input(int).step("book", price).build()

basket = (
    flow("basket")
    .input(Basket)
    .step("load", lambda b: b)
    .map("price", price, over=lambda b: b.skus, concurrency=3, retries=2, timeout="5s")
    .map(ship, over=lambda cents: cents)
    .step("label", label)
    .build()
)


def test_a_map_is_one_graph_node_between_its_neighbours() -> None:
    graph = basket.graph
    assert [(n.id, n.kind, n.label) for n in graph.nodes] == [
        ("load", "step", "load"),
        ("price", "map", "price"),
        ("invoke:ship@1", "map", "ship@1"),
        ("label", "step", "label"),
        ("output", "output", ""),
    ]
    assert graph.node("price").detail == "concurrency=3, retries=2, timeout=5s"
    assert graph.node("invoke:ship@1").detail == f"concurrency={DEFAULT_MAP_CONCURRENCY}"
    assert graph.edges == (
        GraphEdge("load", "price"),
        GraphEdge("price", "invoke:ship@1"),
        GraphEdge("invoke:ship@1", "label"),
        GraphEdge("label", "output"),
    )
    # the calls each item makes: a step labelled like the map, or an invoke of the child flow
    assert map_call(graph.node("price")) == ("step", "price")
    assert map_call(graph.node("invoke:ship@1")) == ("invoke", "ship@1")


def test_renderings_show_the_map() -> None:
    mermaid = render(basket.graph)
    assert 'n1[/"map price<br/>concurrency=3, retries=2, timeout=5s"\\]' in mermaid
    assert 'n2[/"map ship@1<br/>concurrency=10"\\]' in mermaid
    nodes = to_json(basket.graph)["nodes"]
    assert {"id": "price", "kind": "map", "label": "price", "detail": nodes[1]["detail"]} in nodes


async def test_graph_of_and_a_dry_run_see_the_map() -> None:
    assert await graph_of(basket) is basket.graph
    direct = flow("direct").input(Basket).map("price", price, over=lambda b: b.skus)
    built = direct.map(ship, over=lambda cents: cents).build()
    described = await describe(built, {"skus": ["a", "bb"]})
    # a dry run makes one call per item, folded into one node (samples: each price is 0)
    assert [n.id for n in described.nodes] == ["price", "invoke:ship@1", "output"]
    assert GraphEdge("price", "price") in described.edges
    assert GraphEdge("invoke:ship@1", "invoke:ship@1") in described.edges


def test_the_value_after_a_map_is_a_list_of_the_results() -> None:
    assert basket.output_type is str
    ends_with_map = flow("m").input(Basket).map("price", price, over=lambda b: b.skus).build()
    assert ends_with_map.output_type == list[int]
    over_flow = flow("n").input(Basket).map(ship, over=lambda b: [1, 2]).build()
    assert over_flow.output_type == list[int]


def _map_run(status: RunStatus, *steps: Any, waiting_on: str | None = None) -> RunDetail:
    events = (suspended_at(waiting_on),) if waiting_on else ()
    return RunDetail(run=run_record(status, name="basket"), steps=steps, events=events)


def test_overlay_puts_every_item_on_the_map_node() -> None:
    load = memo(0, StepKind.STEP, "load", "load")
    items = [
        memo(1 + i, StepKind.STEP, "price", "price" if i == 0 else f"price#{i}") for i in range(3)
    ]
    running = _map_run(RunStatus.RETRYING, load, *items, waiting_on="price#3")
    ov = overlay(basket.graph, running)
    assert ov.states == {"load": "done", "price": "waiting"}  # one item still retrying
    assert ov.counts == {"load": 1, "price": 3}

    retrying = memo(2, StepKind.STEP, "price", "price#1", StepStatus.RETRYING)
    ov = overlay(basket.graph, _map_run(RunStatus.RETRYING, load, items[0], retrying, items[2]))
    assert ov.states["price"] == "waiting"  # an item before the last one waits
    assert ov.counts["price"] == 2  # the items that finished, wherever the waiting one is

    failed_item = memo(4, StepKind.STEP, "price", "price#3", StepStatus.FAILED)
    children = [
        memo(5 + i, StepKind.INVOKE, "ship@1", "invoke:ship@1" + (f"#{i}" if i else ""))
        for i in range(2)
    ]
    failed = _map_run(RunStatus.FAILED, load, items[0], failed_item, *items[1:], *children)
    ov = overlay(basket.graph, failed)
    assert ov.states["price"] == "failed"  # failed wins over done, whatever the order
    assert ov.counts["price"] == 4
    assert ov.states["invoke:ship@1"] == "done" and ov.counts["invoke:ship@1"] == 2
    assert "label" not in ov.states

    empty = _map_run(RunStatus.DONE, load, memo(1, StepKind.STEP, "label", "label"))
    ov = overlay(basket.graph, empty)  # zero items: the map is passed without a call
    assert ov.states == {"load": "done", "label": "done", "output": "done"}

    history = graph_from_history(running)
    assert [n.id for n in history.nodes] == ["load", "price"]


def test_map_definition_mistakes_fail_at_build_time() -> None:
    start = flow("bad").input(Basket).step("price", price)
    cases: list[tuple[Any, str]] = [
        (lambda: start.map("p", price, over=lambda b: b.skus, concurrency=0), "positive"),
        (lambda: start.map("p", price, over=lambda b: b.skus, concurrency=True), "positive"),
        (lambda: start.map("p", price, over=["a"]), "over=<callable>"),
        (lambda: start.map("price", price, over=lambda b: b.skus), "duplicate map label"),
        (lambda: start.map("p#1", price, over=lambda b: b.skus), "may not contain '#'"),
        (lambda: start.map("p", over=lambda b: b.skus), "give the step function"),
        (lambda: start.map("p", "price", over=lambda b: b.skus), "fn must be callable"),
        (lambda: start.map("p", price, over=lambda b: b.skus, retries=-1), "retries"),
        (lambda: start.map("p", price, over=lambda b: b.skus, timeout="soon"), "map 'p'"),
        (lambda: start.map(ship, over=lambda b: [1], retries=2), "step options"),
        (lambda: start.map(42, over=lambda b: [1]), "a label and a step function, or a flow"),
    ]
    for make, message in cases:
        with pytest.raises(FlowDefinitionError) as info:
            make()
        assert message in info.value.message, info.value.message


def _node(over: Any) -> MapNode:
    return MapNode("price", over, 2, None, ship)


@pytest.mark.parametrize(
    "items",
    [["a", "b\x00c"], [{"note": "\ud800"}], [1.0, math.nan], [object()], [[[[]]] * 2, math.inf]],
    ids=["nul", "lone-surrogate", "nan", "object", "infinity"],
)
def test_hostile_items_are_refused_like_a_step_result(items: list[Any]) -> None:
    with pytest.raises(PayloadInvalid) as info:
        map_items(_node(lambda value: items), None)
    assert info.value.error_code == "PAYLOAD_INVALID"
    assert "of map 'price'" in info.value.message


def test_deeply_nested_items_are_refused() -> None:
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(PayloadInvalid):
        map_items(_node(lambda value: [deep]), None)


@pytest.mark.parametrize(
    "returned", ["abc", b"abc", {"a": 1}, {"a", "b"}, frozenset({1}), 42, None]
)
def test_items_must_be_an_ordered_collection(returned: Any) -> None:
    with pytest.raises(MapItemsInvalid) as info:
        map_items(_node(lambda value: returned), None)
    assert info.value.error_code == "MAP_ITEMS_INVALID"
    assert "return a list" in info.value.message


def test_lists_tuples_and_generators_are_items() -> None:
    assert map_items(_node(lambda value: (1, 2)), None) == [1, 2]
    assert map_items(_node(lambda value: (i * 2 for i in range(3))), None) == [0, 2, 4]
    assert map_items(_node(lambda value: value.skus), Basket(skus=["x"])) == ["x"]
    assert map_items(_node(lambda value: [Basket(skus=[])]), None) == [Basket(skus=[])]
