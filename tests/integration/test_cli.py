"""flowctl: the operator's surface, run in-process through its entry point."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest

from iterflow import Engine
from iterflow.cli import main
from tests.integration.flows import OrderIn, sql
from tests.integration.test_flows import order_flow


def test_generate_schema_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tables.py"
    assert main(["generate-schema", "--out", str(out)]) == 0
    first = out.read_text()
    assert "iterflow" in first and "sa.Table(" in first
    assert main(["generate-schema", "--out", str(out), "--schema", "acme"]) == 1
    assert "--force" in capsys.readouterr().err
    assert out.read_text() == first
    assert main(["generate-schema", "--out", str(out), "--schema", "acme", "--force"]) == 0
    assert 'schema="acme"' in out.read_text() or "'acme'" in out.read_text()
    sql_out = tmp_path / "tables.sql"
    assert main(["generate-schema", "--sql", "--out", str(sql_out)]) == 0
    assert "CREATE TABLE" in sql_out.read_text()


def test_migrate_installs_the_tables(empty_database_url: str) -> None:
    assert main(["--database-url", empty_database_url, "migrate"]) == 0
    tables = sql(
        empty_database_url,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'iterflow' "
        "ORDER BY 1",
    )
    assert [t for (t,) in tables] == [
        "events",
        "iterflow_alembic_version",
        "runs",
        "signals",
        "steps",
        "timers",
    ]


def test_list_show_cancel_retry_and_signal(
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def start() -> str:
        async with Engine(database_url) as engine:
            handle = order_flow(engine, Counter())
            run = await handle.start(OrderIn(order_id="cli", amount=1), tags=["cli"])
            return str(run.run_id)

    run_id = asyncio.run(start())
    url = ["--database-url", database_url]
    assert main([*url, "list", "--tag", "cli"]) == 0
    assert run_id in capsys.readouterr().out
    assert main([*url, "show", run_id]) == 0
    shown = capsys.readouterr().out
    assert "status=pending" in shown and "event  started" in shown

    app = tmp_path / "cli_app.py"
    app.write_text(
        "from collections import Counter\n"
        "from iterflow import Engine\n"
        "from tests.integration.test_flows import order_flow\n"
        "engine = Engine()\n"
        "order_flow(engine, Counter())\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    payload = json.dumps({"approved": True})
    assert main([*url, "signal", "cli_app:engine", run_id, "approve", payload]) == 0
    assert capsys.readouterr().out.strip() == "buffered"
    assert main([*url, "signal", "cli_app:engine", run_id, "approve", "{}"]) == 2
    assert "SIGNAL_PAYLOAD_INVALID" in capsys.readouterr().err

    assert main([*url, "retry", run_id]) == 0
    assert capsys.readouterr().out.strip() == "not_failed"
    assert main([*url, "cancel", run_id, "--reason", "ops"]) == 0
    assert capsys.readouterr().out.strip() == "canceled"
    assert main([*url, "list", "--status", "canceled"]) == 0
    assert run_id in capsys.readouterr().out
    assert main([*url, "list", "--status", "nope"]) == 2
    assert "INPUT_INVALID" in capsys.readouterr().err
