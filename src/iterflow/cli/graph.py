"""``flowctl graph``: a flow's step graph, or a run's progress over it."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from iterflow.cli.common import (
    Subparsers,
    echo,
    load_engine,
    open_engine,
    parse_json,
    schema_option,
    wants_json,
)
from iterflow.core.errors import ConfigInvalid, FlowUnknown, InputInvalid

if TYPE_CHECKING:
    from iterflow.core.definition import Registry

__all__ = ["register"]


def register(subparsers: Subparsers) -> None:
    """Add ``graph``."""
    graph = subparsers.add_parser(
        "graph",
        parents=[schema_option()],
        help="print a flow's step graph, or a run's progress on it",
    )
    graph.add_argument(
        "target", nargs="?", help="module:engine:flow_name (module:engine with --run)"
    )
    graph.add_argument("--version", type=int, default=None, help="flow version (default: newest)")
    graph.add_argument("--format", choices=["mermaid", "json"], default="mermaid")
    graph.add_argument("--input", default=None, help="sample input (JSON) for a raw body's dry run")
    graph.add_argument(
        "--run", default=None, help="overlay this run's progress (done/waiting/failed)"
    )
    graph.set_defaults(func=_graph)


async def _graph(args: argparse.Namespace) -> None:
    from iterflow.core.describe import graph_of
    from iterflow.core.graph import render
    from iterflow.core.progress import graph_from_history, overlay

    sample = parse_json(args.input, "--input", InputInvalid) if args.input else None
    fmt = _format(args)
    module, _, rest = (args.target or "").partition(":")
    attr, _, flow_name = rest.partition(":")
    # module:engine:flow_name loads the application's engine (its --database-url overriding the
    # URL set in code); with only --run, a bare engine on the resolved URL reads the run.
    if args.target:
        engine = load_engine(f"{module}:{attr}", args.database_url)
    else:
        engine = open_engine(args)
    if args.run is None:  # the flow's graph: static for built flows, else a dry run
        if not flow_name:
            raise ConfigInvalid("expected module:engine:flow_name, or --run RUN_ID")
        registry = engine.registry
        flow = (
            registry.latest(flow_name)
            if args.version is None
            else registry.get(flow_name, args.version)
        )
        if flow is None:
            raise _unknown(registry, flow_name, args.version)
        _print(render(await graph_of(flow, sample), fmt), fmt)
        return
    async with engine:  # a run's progress over its flow's graph (or the graph it walked)
        detail = await engine.status(args.run)
        flow = engine.registry.get(detail.run.name, detail.run.version)
        static = getattr(flow, "graph", None)
        graph = static if static is not None else graph_from_history(detail)
        _print(render(graph, fmt, overlay(graph, detail)), fmt)


def _format(args: argparse.Namespace) -> str:
    """``--format``, or ``json`` with ``--json``."""
    return "json" if wants_json(args) else str(args.format)


def _unknown(registry: Registry, name: str, version: int | None) -> FlowUnknown:
    """``FLOW_UNKNOWN`` for ``name`` (at ``version``), listing what is registered."""
    versions = sorted(f.version for f in registry.all() if f.name == name)
    if versions and version is not None:
        listed = ", ".join(str(v) for v in versions)
        return FlowUnknown(
            f"no version {version} of flow {name!r} is registered (its versions: {listed}); "
            "pass one of them to --version, or omit it for the newest"
        )
    known = ", ".join(f.key for f in registry.all()) or "none"
    return FlowUnknown(f"flow {name!r} is not registered (registered: {known})")


def _print(text: str, fmt: str) -> None:
    """A rendered graph: JSON (escaped by ``json``) as it is, Mermaid through :func:`echo`."""
    if fmt == "json":
        print(text, end="")
    else:
        echo(*text.rstrip("\n").split("\n"))
