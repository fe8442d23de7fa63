"""One database-URL rule for the library and flowctl: explicit, $ITERFLOW_DATABASE_URL,
$DATABASE_URL, else embedded (logged with its data directory)."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path

import pytest

from iterflow import Engine
from iterflow.cli import main
from iterflow.core.errors import ConfigInvalid
from tests.integration.flows import OrderIn
from tests.integration.test_flows import order_flow

NOWHERE = "postgresql://nobody:secret@127.0.0.1:1/nowhere"


@pytest.fixture
def no_url_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("ITERFLOW_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    return monkeypatch


async def _run_count(engine: Engine) -> int:
    page = await engine.list_runs(limit=100)
    return len(page.runs)


@pytest.mark.parametrize("variable", ["ITERFLOW_DATABASE_URL", "DATABASE_URL"])
async def test_engine_without_url_opens_on_the_environment(
    database_url: str, no_url_env: pytest.MonkeyPatch, variable: str
) -> None:
    no_url_env.setenv(variable, database_url)

    async with Engine() as engine:
        assert engine.database_url == database_url
        assert await _run_count(engine) == 0  # the migrated per-test database answers


async def test_precedence_explicit_then_iterflow_then_database_url(
    database_url: str, no_url_env: pytest.MonkeyPatch
) -> None:
    no_url_env.setenv("DATABASE_URL", NOWHERE)
    no_url_env.setenv("ITERFLOW_DATABASE_URL", database_url)
    async with Engine() as engine:  # $ITERFLOW_DATABASE_URL wins over $DATABASE_URL
        assert engine.database_url == database_url

    no_url_env.setenv("ITERFLOW_DATABASE_URL", NOWHERE)
    async with Engine(database_url) as engine:  # an explicit URL wins over both
        assert engine.database_url == database_url
    engine = Engine()
    engine.configure(database_url=database_url)  # so does one set by configure
    async with engine:
        assert engine.database_url == database_url


async def test_a_non_postgres_url_from_the_environment_names_its_variable(
    no_url_env: pytest.MonkeyPatch,
) -> None:
    no_url_env.setenv("DATABASE_URL", "mysql://app@db/app")

    with pytest.raises(ConfigInvalid, match=r"\$DATABASE_URL") as caught:
        async with Engine():
            pass
    assert "needs PostgreSQL" in caught.value.message
    assert "set $ITERFLOW_DATABASE_URL, which takes precedence" in caught.value.message


async def test_a_bad_url_in_the_variable_that_takes_precedence_is_not_fixed_by_setting_it(
    no_url_env: pytest.MonkeyPatch,
) -> None:
    no_url_env.setenv("ITERFLOW_DATABASE_URL", "sqlite:///app.db")

    with pytest.raises(ConfigInvalid) as caught:
        async with Engine():
            pass
    message = caught.value.message
    assert "(the URL in $ITERFLOW_DATABASE_URL); fix or unset $ITERFLOW_DATABASE_URL" in message
    assert "takes precedence" not in message  # that advice would name the broken variable


async def test_embedded_fallback_logs_its_data_directory(
    database_url: str,
    no_url_env: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from iterflow.store.embedded import EmbeddedPostgres

    started: list[Path] = []

    def fake_start(self: EmbeddedPostgres) -> str:  # the real one runs initdb: not under test
        started.append(self.data_dir)
        return database_url

    no_url_env.setattr(EmbeddedPostgres, "start", fake_start)
    no_url_env.setattr(EmbeddedPostgres, "stop", lambda self: None)
    caplog.set_level(logging.INFO, logger="iterflow")

    async with Engine(data_dir=tmp_path / "state") as engine:
        assert engine.database_url == database_url

    expected = (tmp_path / "state" / "pgdata").resolve()
    assert started == [expected]
    records = [r for r in caplog.records if r.name.startswith("iterflow") and "embedded" in r.msg]
    assert records, caplog.text
    assert str(expected) in records[0].getMessage()
    assert "$ITERFLOW_DATABASE_URL" in records[0].getMessage()


def test_flowctl_and_engine_agree(
    database_url: str,
    no_url_env: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An app's ``Engine()`` and its flowctl, both configured only by the environment, see the
    same runs; flowctl's ``--database-url`` overrides a URL written in the app's code."""
    no_url_env.setenv("DATABASE_URL", database_url)

    async def start() -> str:
        async with Engine() as engine:  # as an application would
            handle = order_flow(engine, Counter())
            return str((await handle.start(OrderIn(order_id="env", amount=1))).run_id)

    run_id = asyncio.run(start())
    assert main(["list"]) == 0
    assert run_id in capsys.readouterr().out
    assert main(["show", run_id]) == 0
    assert "status=pending" in capsys.readouterr().out

    for name in ("url_app", "url_app_pinned"):
        (tmp_path / f"{name}.py").write_text(
            "from collections import Counter\n"
            "from iterflow import Engine\n"
            "from tests.integration.test_flows import order_flow\n"
            f"engine = Engine({NOWHERE!r})\n"
            "order_flow(engine, Counter())\n"
        )
    no_url_env.syspath_prepend(str(tmp_path))
    signal = ["signal", run_id, "approve", '{"approved": true}']
    flag = ["--database-url", database_url]
    assert main([*flag, signal[0], "url_app:engine", *signal[1:]]) == 0
    assert capsys.readouterr().out.strip() == "buffered"
    # Without the flag the app's own explicit URL is used, as Engine() would: unreachable.
    assert main([signal[0], "url_app_pinned:engine", *signal[1:]]) == 3
    assert "flowctl: error [DATABASE_UNAVAILABLE]" in capsys.readouterr().err
