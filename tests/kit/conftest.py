"""The kit's tests use its own pytest fixtures (iterflow.pytest_plugin), on the session's server.

The plugin is loaded by its ``pytest11`` entry point once iterflow is installed with this
pyproject; importing the fixtures here makes them available either way (a conftest fixture
overrides the plugin's own, which is the same function).
"""

from __future__ import annotations

import pytest

from iterflow.pytest_plugin import iterflow_any_engine, iterflow_engine, iterflow_pg_engine

__all__ = ["iterflow_any_engine", "iterflow_engine", "iterflow_pg_engine"]


@pytest.fixture(scope="session")
def iterflow_database_url(server_url: str) -> str:
    """The plugin's PostgreSQL is the suite's server (embedded, or $DATABASE_URL)."""
    return server_url
