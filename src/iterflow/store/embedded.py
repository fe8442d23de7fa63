"""Embedded PostgreSQL (the ``pgserver`` wheel) for development, demos and tests."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

__all__ = ["EmbeddedPostgres"]

logger = logging.getLogger(__name__)


class EmbeddedPostgres:
    """A real PostgreSQL server in a local data directory; no Docker, no root needed."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self._server: Any = None

    def start(self) -> str:
        """Start (or attach to) the server and return a ``postgresql://`` URL."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            self._server = pgserver.get_server(  # type: ignore[attr-defined]
                self.data_dir, cleanup_mode="stop"
            )
        uri: str = self._server.get_uri()
        logger.info("embedded PostgreSQL at %s", self.data_dir)
        return uri

    def stop(self) -> None:
        """Release this process's handle; the server stops when no process uses it."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None
