"""Every statement of the store's catalogue that touches a per-run table is keyed by run id, or
is a cross-run statement listed in docs/performance.md ("Scaling past one machine").

The catalogue is every SQL statement attribute of the ``*Statements`` classes of
``iterflow.store`` (found by walking the package, so a new class is covered without editing this
test). The per-run tables are ``runs`` and every table with a foreign key to ``runs.id``.

"Keyed" is judged on PostgreSQL's own generic plan (``EXPLAIN (GENERIC_PLAN)``, the plan for
any parameter values), not on the SQL text: every scan of a per-run table must have, among the
top-level ``AND`` terms of its conditions (index condition, recheck condition, filter) or of the
join right above it, an equality of its run-id column (``runs.id``; ``run_id`` elsewhere) with a
run-id parameter or with a run id taken from another row. Rows a statement inserts are keyed by
the run id they carry. So a statement passes only if every row it reads or writes is reached
through a run id: a table distributed by run id would route it to one shard per run id.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg
from sqlalchemy.sql.compiler import SQLCompiler

import iterflow.store
from iterflow.store import schema as tables
from iterflow.store.urls import libpq_url

DOC = Path(__file__).resolve().parents[2] / "docs" / "performance.md"
SECTION = "## Scaling past one machine"
#: Parameters that carry a run id (the run's own, a parent's, a fork's new run).
RUN_ID_PARAMS = frozenset({"run_id", "id", "parent", "new_id", "run_ids"})
#: The column holding the run id, per per-run table.
KEY_COLUMN = {"runs": "id"} | {
    t.name: "run_id"
    for t in tables.metadata.sorted_tables
    if any(fk.column is tables.runs.c.id for fk in t.foreign_keys)
}
JOIN_CONDITIONS = ("Join Filter", "Hash Cond", "Merge Cond")
SCAN_CONDITIONS = ("Index Cond", "Recheck Cond", "Filter")


def catalogue() -> dict[str, sa.TextClause]:
    """``Class.attribute`` -> statement, for every ``*Statements`` class of ``iterflow.store``."""
    found: dict[str, sa.TextClause] = {}
    for module_info in pkgutil.iter_modules(iterflow.store.__path__, "iterflow.store."):
        module = importlib.import_module(module_info.name)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or not name.endswith("Statements"):
                continue
            for attr, value in vars(cls(tables.DEFAULT_SCHEMA)).items():
                if isinstance(value, sa.TextClause):
                    found[f"{name}.{attr}"] = value
    return found


def documented() -> set[str]:
    """The statements named (``Class.attribute``) in the first column of the section's tables."""
    text = DOC.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    body = text[start : end if end != -1 else len(text)]
    cells = re.findall(r"^\| ([^|]+) \|", body, flags=re.MULTILINE)
    return {name for cell in cells for name in re.findall(r"`(\w*Statements\.\w+)`", cell)}


def conjuncts(condition: str) -> Iterator[str]:
    """The top-level ``AND`` terms of a plan condition, without their outer parentheses."""
    text = condition.strip()
    while text.startswith("(") and _closing(text, 0) == len(text) - 1:
        text = text[1:-1].strip()
    depth, last = 0, 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and text.startswith(" AND ", i):
            yield from conjuncts(text[last:i])
            last = i + len(" AND ")
    if last:
        yield from conjuncts(text[last:])
    else:
        yield text


def _closing(text: str, i: int) -> int:
    depth = 0
    for j in range(i, len(text)):
        depth += {"(": 1, ")": -1}.get(text[j], 0)
        if depth == 0:
            return j
    return -1


def _keyed(scan: dict[str, Any], join: dict[str, Any] | None, run_params: set[str]) -> bool:
    """Whether one of ``scan``'s conditions (or its join's) equates its run-id column with a
    run-id parameter or another row's run id."""
    column = rf"(?:{re.escape(scan['Alias'])}\.)?{KEY_COLUMN[scan['Relation Name']]}"
    param = "|".join(re.escape(p) for p in run_params) or "(?!)"
    other = r"\w+\.\w*id"
    patterns = (
        rf"{column} = (?:{param}|ANY \((?:{param})\)|{other})",
        rf"(?:{param}|{other}) = {column}",
    )
    conditions = [scan[k] for k in SCAN_CONDITIONS if k in scan]
    conditions += [join[k] for k in JOIN_CONDITIONS if join is not None and k in join]
    return any(re.fullmatch(p, term) for c in conditions for term in conjuncts(c) for p in patterns)


def unkeyed_scans(plan: dict[str, Any], run_params: set[str]) -> list[str]:
    """``table alias`` of every scan of a per-run table in ``plan`` that is not keyed."""
    out: list[str] = []

    def walk(node: dict[str, Any], join: dict[str, Any] | None) -> None:
        relation = node.get("Relation Name")
        scan = relation in KEY_COLUMN and node["Node Type"] != "ModifyTable"  # inserts: keyed
        if scan and not _keyed(node, join, run_params):
            out.append(f"{relation} {node['Alias']}")
        is_join = any(k in node for k in JOIN_CONDITIONS)
        for child in node.get("Plans", ()):
            walk(child, node if is_join else join)

    walk(plan, None)
    return out


def explain(conn: psycopg.Connection[Any], stmt: sa.TextClause) -> tuple[dict[str, Any], set[str]]:
    """The generic plan of ``stmt`` and the ``$n`` placeholders that carry a run id."""
    compiled = stmt.compile(dialect=pg_asyncpg.dialect())
    assert isinstance(compiled, SQLCompiler)
    names = compiled.positiontup or []
    run_params = {f"${i + 1}" for i, n in enumerate(names) if n in RUN_ID_PARAMS}
    row = conn.execute(
        ("EXPLAIN (GENERIC_PLAN, FORMAT JSON) " + compiled.string).encode()
    ).fetchone()
    assert row is not None
    return row[0][0]["Plan"], run_params


def touches_per_run_tables(stmt: sa.TextClause) -> bool:
    names = "|".join(KEY_COLUMN)
    return re.search(rf'"{tables.DEFAULT_SCHEMA}"\.(?:{names})\b', str(stmt)) is not None


def test_every_per_run_statement_is_keyed_by_run_id_or_a_documented_sweep(
    database_url: str,
) -> None:
    statements = {k: v for k, v in catalogue().items() if touches_per_run_tables(v)}
    assert len(statements) > 40  # the walk found the catalogue
    cross_run: dict[str, list[str]] = {}
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        for name, stmt in statements.items():
            plan, run_params = explain(conn, stmt)
            if scans := unkeyed_scans(plan, run_params):
                cross_run[name] = scans
    listed = documented()
    undocumented = {k: v for k, v in cross_run.items() if k not in listed}
    assert not undocumented, f"cross-run statements missing from {DOC.name}: {undocumented}"
    assert listed <= statements.keys(), f"no such statement: {listed - statements.keys()}"
    keyed_but_listed = listed - cross_run.keys()
    assert not keyed_but_listed, f"keyed by run id, listed as cross-run: {keyed_but_listed}"


def test_the_keyed_rule_sees_through_conjunctions_and_joins() -> None:
    """The judge itself: an ``OR`` with the run id is not keyed, a join on it is."""
    scan = {"Relation Name": "runs", "Alias": "h", "Node Type": "Index Scan"}
    assert _keyed({**scan, "Index Cond": "(id = $3)"}, None, {"$3"})
    assert _keyed({**scan, "Filter": "((status = 'x'::text) AND (h.id = $3))"}, None, {"$3"})
    assert not _keyed({**scan, "Filter": "((id = $3) OR (NOT (hashed SubPlan 3)))"}, None, {"$3"})
    assert not _keyed({**scan, "Index Cond": "(id = $1)"}, None, {"$3"})  # not a run id
    assert not _keyed({**scan, "Index Cond": "(parent_run_id = $3)"}, None, {"$3"})
    child = {"Relation Name": "timers", "Alias": "timers", "Node Type": "Bitmap Heap Scan"}
    assert _keyed(child, {"Join Filter": "(lease_2.id = timers.run_id)"}, set())
    assert not _keyed({**child, "Filter": "(cursor_key = $14)"}, None, set())
    assert not _keyed(
        {"Relation Name": "signals", "Alias": "g", "Index Cond": "(id = $2)"}, None, {"$2"}
    )  # a signal's own id is not a run id
