"""``flowctl ui``: serve the dashboard (:mod:`iterflow.contrib.web`) for an application's engine.

Read-only unless ``--authorize module:function`` names the hook that decides every action
(``authorize(request, action) -> bool``). It binds 127.0.0.1 by default: the pages show the runs'
payloads (``--redact`` hides them), so expose it only behind your own authentication.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, cast

from iterflow.cli.common import Subparsers, load_app_engine
from iterflow.core.errors import ConfigInvalid

if TYPE_CHECKING:
    from iterflow.contrib.web.security import Authorize

__all__ = ["register"]

logger = logging.getLogger("iterflow")


def register(subparsers: Subparsers) -> None:
    """Add ``ui``."""
    ui = subparsers.add_parser(
        "ui",
        help="serve the web dashboard for the engine at module:attribute (needs iterflow[web])",
        description=(
            "Serve the dashboard: runs, a run's graph, timeline and steps, schedules, live "
            "updates. Read-only unless --authorize names a hook. The pages show payloads: bind "
            "a public address only behind your own authentication (or use --redact)."
        ),
    )
    ui.add_argument("engine", help="import path of an Engine, e.g. myapp.flows:engine")
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ui.add_argument("--port", type=int, default=8080, help="port to bind (default 8080)")
    ui.add_argument(
        "--root-path",
        default="",
        help="the path prefix a reverse proxy serves the dashboard under (e.g. /iterflow)",
    )
    access = ui.add_mutually_exclusive_group()
    access.add_argument(
        "--read-only",
        action="store_true",
        help="refuse every action (the default when no --authorize is given)",
    )
    access.add_argument(
        "--authorize",
        default=None,
        metavar="MODULE:FUNCTION",
        help="authorize(request, action) -> bool (sync or async) deciding every action",
    )
    ui.add_argument("--redact", action="store_true", help="hide every payload")
    ui.add_argument("--title", default="iterflow", help="the title shown on every page")
    ui.set_defaults(func=_ui)


def _authorize(target: str) -> Authorize:
    from iterflow.cli.common import _import_module

    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigInvalid(f"expected --authorize as module:function, got {target!r}")
    hook = getattr(_import_module(module_name), attr, None)
    if not callable(hook):
        raise ConfigInvalid(f"--authorize {target} is not a callable (request, action) -> bool")
    return cast("Authorize", hook)


async def _ui(args: argparse.Namespace) -> None:
    try:
        import uvicorn

        from iterflow.contrib.web import dashboard
    except ImportError as exc:
        raise ConfigInvalid(
            f"flowctl ui needs the web extra ({exc}): pip install 'iterflow[web]'"
        ) from exc
    if not 0 < args.port < 65536:
        raise ConfigInvalid(f"--port must be between 1 and 65535, got {args.port}")
    engine = load_app_engine(args)
    hook = None if args.read_only or args.authorize is None else _authorize(args.authorize)
    app = dashboard(engine, authorize=hook, redact=args.redact, title=args.title)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        root_path=args.root_path.rstrip("/"),
        proxy_headers=True,
        log_level="info",
        lifespan="off",
    )
    async with engine:
        mode = "read-only" if hook is None else f"actions decided by {args.authorize}"
        logger.info(
            "dashboard on http://%s:%d%s/ (%s%s)",
            args.host,
            args.port,
            args.root_path.rstrip("/"),
            mode,
            ", redacted" if args.redact else "",
        )
        await uvicorn.Server(config).serve()
