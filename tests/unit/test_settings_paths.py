"""Settings change only through validating paths, and a schema name reaches SQL only quoted."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from iterflow import Engine
from iterflow.core.errors import ConfigInvalid
from iterflow.core.settings import CONNECTION_SETTINGS, Settings
from iterflow.store.queries import Statements
from iterflow.store.schema import quote_identifier
from iterflow.store.urls import resolve_database_url, resolve_database_url_source

HOSTILE = 'x"; DROP TABLE runs; --'
TABLES = ("runs", "steps", "signals", "timers", "events")


# --- Settings.model_copy ------------------------------------------------------------------------


def test_model_copy_validates_the_update() -> None:
    settings = Settings(lease_seconds=7)

    with pytest.raises(ConfigInvalid, match="db_schema") as caught:
        settings.model_copy(update={"db_schema": HOSTILE})
    assert caught.value.error_code == "CONFIG_INVALID"
    assert "lowercase SQL identifier" in caught.value.message
    with pytest.raises(ConfigInvalid, match="lease_seconds"):
        settings.model_copy(update={"lease_seconds": -1})
    with pytest.raises(ConfigInvalid, match="no_such_setting"):
        settings.model_copy(update={"no_such_setting": 1})


def test_model_copy_keeps_other_fields_and_stays_a_settings_object() -> None:
    settings = Settings(lease_seconds=7, db_schema="acme")

    copy = settings.model_copy(update={"pool_size": "3"})  # coerced, as Settings(...) would

    assert isinstance(copy, Settings)
    assert (copy.pool_size, copy.lease_seconds, copy.db_schema) == (3, 7.0, "acme")
    assert settings.pool_size == 10  # frozen: the original is unchanged
    assert settings.model_copy() == settings
    assert settings.model_copy(update={}) == settings


# --- Engine.configure ---------------------------------------------------------------------------


def test_configure_validates_and_applies() -> None:
    engine = Engine("postgresql://u@h/db")

    engine.configure(database_url="postgresql://u@other/db", lease_seconds=9)
    assert engine.settings.database_url == "postgresql://u@other/db"
    assert engine.settings.lease_seconds == 9

    before = engine.settings
    with pytest.raises(ConfigInvalid, match="db_schema"):
        engine.configure(db_schema=HOSTILE, lease_seconds=1)
    with pytest.raises(ConfigInvalid, match="nope: Extra inputs are not permitted"):
        engine.configure(nope=1)
    assert engine.settings is before  # nothing applied on a refusal


async def test_configure_refuses_changes_once_open() -> None:
    engine = Engine.in_memory()
    engine.configure(lease_seconds=5)  # before opening: fine
    async with engine:
        for name, value in (("db_schema", "acme"), ("pool_size", 2)):
            with pytest.raises(ConfigInvalid) as caught:
                engine.configure(**{name: value})
            message = caught.value.message
            assert f"cannot change {name} while the engine is open" in message
            assert "connection-level" in message and "before" in message
        with pytest.raises(ConfigInvalid, match="read settings when the engine opens"):
            engine.configure(lease_seconds=6)
        engine.configure(lease_seconds=5)  # no change: accepted
        with pytest.raises(ConfigInvalid, match="db_schema"):
            engine.configure(db_schema=HOSTILE)  # invalid is reported as invalid
    assert engine.settings.lease_seconds == 5
    engine.configure(lease_seconds=6)  # closed again: fine
    assert engine.settings.lease_seconds == 6
    assert {"database_url", "db_schema", "pool_size", "data_dir"} <= CONNECTION_SETTINGS


def test_in_memory_engine_has_no_url_to_change() -> None:
    with pytest.raises(ConfigInvalid, match="in-memory"):
        Engine.in_memory().configure(database_url="postgresql://u@h/db")


# --- quoting ------------------------------------------------------------------------------------


def test_quote_identifier() -> None:
    assert quote_identifier("iterflow") == '"iterflow"'
    assert quote_identifier('a"b') == '"a""b"'
    with pytest.raises(ConfigInvalid):
        quote_identifier("a\x00b")


def _texts(value: object) -> list[str]:
    if isinstance(value, sa.TextClause):
        return [value.text]
    if isinstance(value, list | tuple):
        return [text for item in value for text in _texts(item)]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _texts(item)]
    return []


@pytest.mark.parametrize("schema", ["iterflow", 'we"ird', HOSTILE, "Mixed Case"])
def test_every_statement_quotes_the_schema(schema: str) -> None:
    statements = Statements(schema)
    texts = [text for value in vars(statements).values() for text in _texts(value)]
    assert len(texts) >= 30
    quoted = quote_identifier(schema)
    sentinel = "\x01SCHEMA\x01"
    references = 0
    for text in texts:
        neutral = text.replace(quoted, sentinel)
        # Every reference to one of iterflow's tables is qualified by the quoted schema.
        for prefix in re.findall(r"(\S*)\.(?:" + "|".join(TABLES) + r")\b", neutral):
            assert prefix.endswith(sentinel), (prefix, text)
            references += 1
        if schema != "iterflow":  # ("iterflow" also names the task and the NOTIFY channel)
            assert schema not in neutral, text  # the raw name never appears unquoted
    assert references >= 50


# --- one database URL rule ----------------------------------------------------------------------


def test_resolve_database_url_precedence() -> None:
    both = {"ITERFLOW_DATABASE_URL": "postgresql://a/x", "DATABASE_URL": "postgresql://b/y"}
    assert resolve_database_url("postgresql://c/z", both) == "postgresql://c/z"
    assert resolve_database_url(None, both) == "postgresql://a/x"
    assert resolve_database_url(None, {"DATABASE_URL": "postgresql://b/y"}) == "postgresql://b/y"
    assert resolve_database_url(None, {}) is None
    # empty values count as unset
    assert resolve_database_url("", {"ITERFLOW_DATABASE_URL": "", "DATABASE_URL": "u"}) == "u"
    assert resolve_database_url_source(None, both) == ("postgresql://a/x", "$ITERFLOW_DATABASE_URL")
    assert resolve_database_url_source("postgresql://c/z", both)[1] == "argument"
    assert resolve_database_url_source(None, {}) == (None, "embedded")


def test_resolve_database_url_reads_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ITERFLOW_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://env/db")
    assert resolve_database_url(None) == "postgresql://env/db"
    monkeypatch.setenv("ITERFLOW_DATABASE_URL", "postgresql://iterflow/db")
    assert resolve_database_url(None) == "postgresql://iterflow/db"
    assert resolve_database_url("postgresql://explicit/db") == "postgresql://explicit/db"


def test_engine_settings_cannot_be_assigned_around_configure() -> None:
    engine = Engine("postgresql://u@h/db")
    with pytest.raises(ConfigInvalid, match=r"engine\.configure"):
        engine.settings = engine.settings.model_copy(update={"lease_seconds": 5})
    assert engine.settings.lease_seconds == 20.0
