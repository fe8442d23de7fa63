"""The kit's tests use its own pytest fixtures (iterflow.pytest_plugin), on the session's server
(``iterflow_database_url`` in tests/conftest.py).

The plugin is loaded by its ``pytest11`` entry point once iterflow is installed with this
pyproject; importing the fixtures here makes them available either way (a conftest fixture
overrides the plugin's own, which is the same function).
"""

from __future__ import annotations

from iterflow.pytest_plugin import iterflow_any_engine, iterflow_engine, iterflow_pg_engine

__all__ = ["iterflow_any_engine", "iterflow_engine", "iterflow_pg_engine"]
