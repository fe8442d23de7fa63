"""``flowctl generate-schema``: iterflow's tables as a SQLAlchemy module or as SQL, for users who
manage the schema with their own alembic.

Everything is rendered by introspecting the table objects of :mod:`iterflow.store.schema`, the
single source of the schema, so the output always matches the installed iterflow version.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import sys
from collections.abc import Iterable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.schema import CreateIndex, CreateTable

from iterflow.store import schema as schema_module
from iterflow.store.outbox import TABLE_PREFIX
from iterflow.store.schema import VERSION_TABLE, validate_schema_name

__all__ = ["metadata_for", "render_module", "render_sql", "write_schema"]

_LINE = 99
_INDENT = "    "


def _str(value: str) -> str:
    """A Python string literal, double-quoted where possible (as ruff format writes it)."""
    literal = repr(value)
    if literal.startswith("'") and '"' not in value:
        return '"' + literal[1:-1].replace("\\'", "'") + '"'
    return literal


def metadata_for(schema: str = schema_module.DEFAULT_SCHEMA) -> sa.MetaData:
    """iterflow's tables placed in ``schema`` (a copy; the shared metadata for the default).

    Used where ``schema_translate_map`` does not reach: alembic's autogenerate compares against
    reflected tables by their real schema name, and generated code must name the real schema.
    """
    validate_schema_name(schema)
    source = schema_module.metadata
    if schema == schema_module.DEFAULT_SCHEMA:
        return source
    copy = sa.MetaData(schema=schema, naming_convention=source.naming_convention)
    for table in source.sorted_tables:
        table.to_metadata(copy, schema=schema)
    return copy


def _schema_flag(schema: str) -> str:
    return "" if schema == schema_module.DEFAULT_SCHEMA else f" --schema {schema}"


def _version() -> str:
    try:
        return importlib.metadata.version("iterflow")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - running from a copy
        return "unknown"


# --------------------------------------------------------------------------------------------
# Python module


def _call(func: str, args: Iterable[str], indent: str) -> str:
    """``func(a, b)`` on one line if it fits, else one argument per line (ruff's style)."""
    items = list(args)
    flat = f"{func}({', '.join(items)})"
    if len(indent) + len(flat) + 1 <= _LINE:
        return flat
    inner = indent + _INDENT
    body = "".join(f"{inner}{item},\n" for item in items)
    return f"{func}(\n{body}{indent})"


def _type_prefix(cls: type) -> str:
    if getattr(sa, cls.__name__, None) is cls:
        return "sa"
    if getattr(pg, cls.__name__, None) is cls:
        return "pg"
    raise TypeError(
        f"cannot render column type {cls.__module__}.{cls.__qualname__}: only types exported "
        "by sqlalchemy or sqlalchemy.dialects.postgresql are supported"
    )


def _render_value(value: object) -> str:
    if isinstance(value, sa.types.TypeEngine):
        return _render_type(value)
    if isinstance(value, sa.TextClause):
        return f"sa.text({_str(value.text)})"
    if isinstance(value, str):
        return _str(value)
    if value is None or isinstance(value, bool | int | float):
        return repr(value)
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return f"[{', '.join(_str(v) for v in value)}]"
    raise TypeError(f"cannot render {value!r} ({type(value).__name__}) as Python source")


def _render_type(type_: sa.types.TypeEngine[object]) -> str:
    """``sa.DateTime(timezone=True)``: the constructor call with its non-default arguments."""
    cls = type(type_)
    try:
        pristine: object = cls()
    except TypeError:
        pristine = None
    args: list[str] = []
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    for param in params:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD) or not hasattr(
            type_, param.name
        ):
            continue
        value = getattr(type_, param.name)
        if param.default is not param.empty:
            if repr(value) == repr(param.default):
                continue
            if pristine is not None and repr(value) == repr(getattr(pristine, param.name, None)):
                continue
            args.append(f"{param.name}={_render_value(value)}")
        else:
            args.append(_render_value(value))
    return f"{_type_prefix(cls)}.{cls.__name__}({', '.join(args)})"


def _render_identity(identity: sa.Identity) -> str:
    args: list[str] = []
    for name in inspect.signature(sa.Identity.__init__).parameters:
        if name in ("self", "dialect_kw"):
            continue
        value = getattr(identity, name, None)
        if value is not None and not (name == "always" and value is False):
            args.append(f"{name}={value!r}")
    return f"sa.Identity({', '.join(args)})"


def _render_column(column: sa.Column[object], indent: str) -> str:
    args = [_str(column.name), _render_type(column.type)]
    if column.identity is not None:
        args.append(_render_identity(column.identity))
    if column.computed is not None:
        raise TypeError(f"cannot render computed column {column.name!r}")
    args.append(f"nullable={column.nullable!r}")
    default = column.server_default
    if default is not None and column.identity is None:
        if not isinstance(default, sa.DefaultClause):
            raise TypeError(f"cannot render server default {default!r} of {column.name!r}")
        args.append(f"server_default={_render_value(default.arg)}")
    if column.comment:
        args.append(f"comment={_str(column.comment)}")
    return _call("sa.Column", args, indent)


def _column_names(columns: Iterable[sa.Column[object]]) -> list[str]:
    return [_str(column.name) for column in columns]


def _render_constraint(constraint: sa.Constraint, table: sa.Table, indent: str) -> str:
    name = [f"name={_str(str(constraint.name))}"] if constraint.name else []
    if isinstance(constraint, sa.PrimaryKeyConstraint):
        return _call("sa.PrimaryKeyConstraint", _column_names(constraint.columns) + name, indent)
    if isinstance(constraint, sa.UniqueConstraint):
        return _call("sa.UniqueConstraint", _column_names(constraint.columns) + name, indent)
    if isinstance(constraint, sa.CheckConstraint):
        return _call("sa.CheckConstraint", [_str(str(constraint.sqltext)), *name], indent)
    if isinstance(constraint, sa.ForeignKeyConstraint):
        targets = []
        for element in constraint.elements:
            referred = element.column.table
            prefix = "" if referred.schema == table.schema else f"{referred.schema}."
            targets.append(_str(f"{prefix}{referred.name}.{element.column.name}"))
        args = [
            f"[{', '.join(_column_names(constraint.columns))}]",
            f"[{', '.join(targets)}]",
            *name,
        ]
        for option in ("ondelete", "onupdate", "deferrable", "initially", "match"):
            value = getattr(constraint, option)
            if value is not None:
                args.append(f"{option}={_render_value(value)}")
        return _call("sa.ForeignKeyConstraint", args, indent)
    raise TypeError(f"cannot render constraint {constraint!r} of table {table.name!r}")


def _render_index(index: sa.Index, indent: str) -> str:
    args = [_str(str(index.name))]
    for expression in index.expressions:
        if isinstance(expression, sa.Column):
            args.append(_str(expression.name))
        else:
            args.append(_render_value(sa.text(str(expression))))
    if index.unique:
        args.append("unique=True")
    for key, value in sorted(index.dialect_kwargs.items()):
        args.append(f"{key}={_render_value(value)}")
    return _call("sa.Index", args, indent)


def _constraint_order(constraint: sa.Constraint) -> tuple[int, str]:
    kinds = (sa.PrimaryKeyConstraint, sa.ForeignKeyConstraint, sa.UniqueConstraint)
    rank = next((i for i, kind in enumerate(kinds) if isinstance(constraint, kind)), len(kinds))
    return rank, str(constraint.name or "")


def _render_table(table: sa.Table) -> str:
    items = [_str(table.name), "metadata"]
    items += [_render_column(column, _INDENT) for column in table.columns]
    for constraint in sorted(table.constraints, key=_constraint_order):
        if isinstance(constraint, sa.PrimaryKeyConstraint) and not constraint.columns:
            continue  # a table without a primary key still has an empty one
        items.append(_render_constraint(constraint, table, _INDENT))
    items += [_render_index(index, _INDENT) for index in sorted(table.indexes, key=_index_name)]
    if table.comment:
        items.append(f"comment={_str(table.comment)}")
    body = "".join(f"{_INDENT}{item},\n" for item in items)
    return f"{table.name} = sa.Table(\n{body})\n"


def _index_name(index: sa.Index) -> str:
    return str(index.name)


def render_module(schema: str = schema_module.DEFAULT_SCHEMA) -> str:
    """Python source of a standalone SQLAlchemy module with iterflow's tables in ``schema``.

    The module defines ``metadata = sa.MetaData(schema=SCHEMA)`` and one ``sa.Table`` per
    iterflow table, with every column, constraint and index and their final names. Add its
    ``metadata`` to your alembic ``target_metadata``.
    """
    metadata = metadata_for(schema)
    tables = metadata.sorted_tables
    names = [table.name for table in tables]
    version = _version()
    header = f'''\
# Generated by `flowctl generate-schema` from iterflow {version}. Do not edit by hand:
# regenerate it after upgrading iterflow (and review the diff your alembic autogenerate shows).
#
# These are iterflow's tables for your own alembic `target_metadata`, e.g.
#     target_metadata = [myapp.models.metadata, iterflow_schema.metadata]
# so that autogenerate neither drops nor re-creates them and your revisions can create them
# (with include_schemas=True; add `op.execute("CREATE SCHEMA IF NOT EXISTS {schema}")` before
# them, autogenerate does not create schemas). Give alembic an `include_object` that skips names
# starting with "{TABLE_PREFIX}" and iterflow's own version table "{VERSION_TABLE}".
#
# Not included: procrastinate's job-queue tables, functions and types. Once your migrations
# have created these tables, run `flowctl migrate --stamp{_schema_flag(schema)}`: it checks them
# against this iterflow version, installs procrastinate's schema if it is missing and records
# them as installed, so `flowctl migrate` and `engine.migrate()` are then no-ops.
"""iterflow's tables (schema {schema!r}), generated by ``flowctl generate-schema``."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

__all__ = [{", ".join(_str(n) for n in ["SCHEMA", *sorted(["metadata", *names])])}]

SCHEMA = {_str(schema)}

metadata = sa.MetaData(schema=SCHEMA)
'''
    rendered = [_render_table(table) for table in tables]
    if not any("pg." in text for text in rendered):
        header = header.replace("from sqlalchemy.dialects import postgresql as pg\n", "")
    return header + "".join(f"\n\n{text}" for text in rendered)


# --------------------------------------------------------------------------------------------
# SQL


def render_sql(schema: str = schema_module.DEFAULT_SCHEMA) -> str:
    """The PostgreSQL DDL that creates iterflow's tables and indexes in ``schema``."""
    metadata = metadata_for(schema)
    # "named" so that % in literals is not doubled (pyformat would, for psycopg's sake).
    dialect = pg.dialect(paramstyle="named")  # type: ignore[no-untyped-call]
    statements = [f"CREATE SCHEMA IF NOT EXISTS {dialect.identifier_preparer.quote_schema(schema)}"]
    for table in metadata.sorted_tables:
        statements.append(str(CreateTable(table).compile(dialect=dialect)).strip())
        for index in sorted(table.indexes, key=_index_name):
            statements.append(str(CreateIndex(index).compile(dialect=dialect)).strip())
    header = (
        f"-- Generated by `flowctl generate-schema --sql` from iterflow {_version()}.\n"
        f"-- iterflow's tables in schema {schema!r}. Not included: procrastinate's job-queue\n"
        "-- schema. After applying this, run `flowctl migrate --stamp"
        f"{_schema_flag(schema)}`: it checks\n"
        "-- the tables, installs procrastinate's schema if it is missing and records the tables\n"
        "-- as installed, so `flowctl migrate` is then a no-op.\n\n"
    )
    return header + "".join(f"{statement};\n\n" for statement in statements).rstrip("\n") + "\n"


def write_schema(out: Path | None, *, schema: str, sql: bool, force: bool) -> Path | None:
    """Write :func:`render_module` (or :func:`render_sql` with ``sql``) to ``out``.

    ``out`` defaults to ``./iterflow_schema.py`` (``.sql``); a directory receives that file name;
    ``Path("-")`` writes to stdout and returns None. An existing file is only replaced with
    ``force``; otherwise ``FileExistsError`` is raised. Returns the path written.
    """
    text = render_sql(schema) if sql else render_module(schema)
    default_name = "iterflow_schema.sql" if sql else "iterflow_schema.py"
    if out is not None and str(out) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return None
    path = Path(default_name) if out is None else out
    if path.is_dir():
        path = path / default_name
    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists; pass --force to overwrite it")
    path.write_text(text, encoding="utf-8")
    return path
