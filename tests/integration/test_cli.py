"""flowctl: the operator's surface, run in-process through its entry point."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from iterflow import Engine
from iterflow.cli import EXIT_CODES, _parser, _TextLogFormatter, main
from iterflow.cli.common import echo, json_text
from iterflow.store.migrate import head_revision
from iterflow.store.schemagen import render_sql
from iterflow.store.urls import libpq_url
from tests.integration.flows import OrderIn, sql
from tests.integration.test_flows import order_flow

ROOT = Path(__file__).resolve().parents[2]
NOWHERE = "postgresql://nobody:s3cret@127.0.0.1:1/nowhere"
RUN_ID = "00000000-0000-4000-8000-000000000000"


def test_generate_schema_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tables.py"
    assert main(["generate-schema", "--out", str(out)]) == 0
    first = out.read_text()
    assert "iterflow" in first and "sa.Table(" in first
    assert main(["generate-schema", "--out", str(out), "--schema", "acme"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flowctl: error [CONFIG_INVALID]: ") and "--force" in err
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
        "rate_windows",
        "runs",
        "schedule_events",
        "schedules",
        "signals",
        "steps",
        "timers",
        "workers",
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
    assert main([*url, "show", run_id, "--events"]) == 0
    shown = capsys.readouterr().out
    assert "status=pending" in shown and "  started  " in shown

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

    assert main([*url, "retry", run_id]) == 5  # not_failed: nothing changed
    assert capsys.readouterr().out.strip() == "not_failed"
    assert main([*url, "cancel", run_id, "--reason", "ops"]) == 0
    assert capsys.readouterr().out.strip() == "canceled"
    assert main([*url, "cancel", run_id]) == 6
    assert capsys.readouterr().out.strip() == "already_terminal"
    assert main([*url, "list", "--status", "canceled"]) == 0
    assert run_id in capsys.readouterr().out
    assert main([*url, "list", "--status", "nope"]) == 2
    assert "INPUT_INVALID" in capsys.readouterr().err


# --- errors: one line, a stable exit status, never a traceback for bad input ---------------------


def _one_error_line(err: str, code: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("flowctl:")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"flowctl: error [{code}]: "), err
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["signal", "json:dumps", RUN_ID, "approve", "{bad"], "SIGNAL_PAYLOAD_INVALID", "JSON"),
        (["graph", "--input", "{bad", "json:x:flow"], "INPUT_INVALID", "--input is not valid JSON"),
        (["worker", "nosuch.mod:engine"], "CONFIG_INVALID", "no module named 'nosuch'"),
        (["signal", "nosuch:engine", RUN_ID, "approve", "{}"], "CONFIG_INVALID", "'nosuch'"),
        (["worker", "json:nope"], "CONFIG_INVALID", "module 'json' has no attribute 'nope'"),
        (["worker", "json:dumps"], "CONFIG_INVALID", "not an iterflow Engine"),
        (["worker", "json"], "CONFIG_INVALID", "module:attribute"),
        (["--database-url", "mysql://u@h/db", "list"], "CONFIG_INVALID", "needs PostgreSQL"),
        (["--database-url", NOWHERE, "show", "not-a-uuid"], "INPUT_INVALID", "not a UUID"),
        (["--schema", "Bad-Name", "--database-url", NOWHERE, "list"], "CONFIG_INVALID", "schema"),
    ],
)
def test_bad_input_is_one_line_with_exit_status_2(
    argv: list[str], code: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert needle in _one_error_line(captured.err, code)
    assert captured.out == ""


def test_unimportable_modules_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "broken_app.py").write_text("1 / 0\n")
    (tmp_path / "needs_dep_app.py").write_text("import iterflow_no_such_dependency\n")
    (tmp_path / "syntax_app.py").write_text("def (:\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    assert main(["worker", "broken_app:engine"]) == 2
    line = _one_error_line(capsys.readouterr().err, "CONFIG_INVALID")
    assert "cannot import module 'broken_app': it raised ZeroDivisionError" in line
    assert "-v" in line
    assert main(["worker", "needs_dep_app:engine"]) == 2
    line = _one_error_line(capsys.readouterr().err, "CONFIG_INVALID")
    assert "'iterflow_no_such_dependency', which is not installed" in line
    assert main(["worker", "syntax_app:engine"]) == 2
    assert "SyntaxError" in _one_error_line(capsys.readouterr().err, "CONFIG_INVALID")

    # -v: the same line, after the traceback that explains it
    assert main(["-v", "worker", "broken_app:engine"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err
    assert err.strip().splitlines()[-1].startswith("flowctl: error [CONFIG_INVALID]: ")


def test_bad_input_in_a_real_process_prints_no_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "iterflow.cli", "worker", "nosuch.mod:engine"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "flowctl: error [CONFIG_INVALID]: cannot import module 'nosuch.mod': no module named "
        "'nosuch' (is it installed, on PYTHONPATH, or in the current directory?)"
    ]


def test_database_errors_exit_3(
    empty_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--database-url", NOWHERE, "list"]) == 3
    line = _one_error_line(capsys.readouterr().err, "DATABASE_UNAVAILABLE")
    assert "s3cret" not in line

    assert main(["--database-url", empty_database_url, "list"]) == 3
    line = _one_error_line(capsys.readouterr().err, "SCHEMA_MISSING")
    assert "flowctl migrate" in line


def test_a_missing_run_exits_4_and_an_engine_error_exits_1(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--database-url", database_url, "show", RUN_ID]) == 4
    _one_error_line(capsys.readouterr().err, "RUN_NOT_FOUND")

    async def start() -> str:
        async with Engine(database_url) as engine:
            handle = order_flow(engine, Counter())
            return str((await handle.start(OrderIn(order_id="e1", amount=1))).run_id)

    run_id = asyncio.run(start())
    argv = ["--database-url", database_url, "fork", run_id, "--from-step", "nope"]
    assert main(argv) == 1
    _one_error_line(capsys.readouterr().err, "FORK_STEP_UNKNOWN")


def test_unexpected_exceptions_keep_their_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def bug(*args: object) -> None:
        raise RuntimeError("a bug in flowctl")

    monkeypatch.setattr("iterflow.cli.runs._list", bug)
    assert main(["--database-url", NOWHERE, "list"]) == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: a bug in flowctl" in err
    assert "internal error" in err


def test_exit_statuses_are_documented(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "exit status:" in help_text
    for code, meaning in EXIT_CODES.items():
        assert f"{code} {' '.join(meaning.split())}" in help_text
    assert "$ITERFLOW_DATABASE_URL, else $DATABASE_URL" in help_text
    operations = (ROOT / "docs" / "operations.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for code in EXIT_CODES:
        assert f"\n| {code} | " in operations
        assert f"\n| {code} | " in readme
    assert main(["migrate", "--help"]) == 0
    assert "--stamp" in capsys.readouterr().out
    assert main(["no-such-command"]) == 2  # argparse's usage error, as a return value
    assert "invalid choice" in capsys.readouterr().err


# --- migrate --stamp: tables made by the application's own migrations ---------------------------


def test_migrate_on_generated_tables_names_the_stamp_command(
    empty_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ["--database-url", empty_database_url]
    with psycopg.connect(libpq_url(empty_database_url)) as conn:
        conn.execute(render_sql("iterflow"))  # type: ignore[arg-type]  # as psql would

    assert main([*url, "migrate"]) == 3
    line = _one_error_line(capsys.readouterr().err, "SCHEMA_CONFLICT")
    assert "already exists" in line and "flowctl migrate --stamp" in line
    assert "DATABASE_UNAVAILABLE" not in line

    assert main([*url, "migrate", "--stamp"]) == 0
    out = capsys.readouterr().out
    assert "stamped schema 'iterflow'" in out and f"at revision {head_revision()} (was none)" in out
    assert "installed procrastinate's schema" in out
    assert main([*url, "migrate"]) == 0  # now a no-op
    assert main([*url, "migrate", "--stamp"]) == 0  # and stamping again is too
    assert f"(was {head_revision()}); tables verified\n" in capsys.readouterr().out
    assert main([*url, "list"]) == 0


def test_stamp_refuses_tables_that_differ(
    empty_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = ["--database-url", empty_database_url, "--schema", "acme"]
    assert main([*url, "migrate", "--stamp"]) == 3
    assert "nothing to stamp" in _one_error_line(capsys.readouterr().err, "SCHEMA_MISSING")

    with psycopg.connect(libpq_url(empty_database_url)) as conn:
        conn.execute(render_sql("acme"))  # type: ignore[arg-type]
        conn.execute("ALTER TABLE acme.runs DROP COLUMN meta")

    assert main([*url, "migrate", "--stamp"]) == 3
    line = _one_error_line(capsys.readouterr().err, "SCHEMA_CONFLICT")
    assert "column runs.meta is missing" in line and "generate-schema" in line
    assert sql(empty_database_url, "SELECT to_regclass('acme.iterflow_alembic_version')") == [
        (None,)
    ]
    assert sql(empty_database_url, "SELECT to_regclass('procrastinate_jobs')") == [(None,)]


def test_schedules_commands(database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio
    import json
    from datetime import UTC, datetime

    from iterflow import Engine

    async def create() -> None:
        async with Engine(database_url) as engine:
            from iterflow import FlowContext, Tick

            @engine.flow("nightly", input=Tick, output=Tick)
            async def nightly(ctx: FlowContext, tick: Tick) -> Tick:
                return tick

            await engine.schedule(
                nightly,
                cron="0 2 * * *",
                tz="Europe/Paris",
                id="nightly",
                start_at=datetime(2040, 1, 1, tzinfo=UTC),
            )

    asyncio.run(create())
    url = ["--database-url", database_url]
    assert main([*url, "schedules", "list"]) == 0
    out = capsys.readouterr().out
    assert "nightly" in out and "2040-01-01 02:00 CET (2040-01-01 01:00 UTC)" in out
    assert main([*url, "schedules", "show", "nightly", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["next_tick"] == "2040-01-01T01:00:00+00:00"
    assert shown["next_tick_local"] == "2040-01-01T02:00:00+01:00"
    assert [e["type"] for e in shown["events"]] == ["created"]
    assert main([*url, "schedules", "pause", "nightly", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["paused"] is True
    assert main([*url, "schedules", "resume", "nightly"]) == 0
    assert capsys.readouterr().out == "resumed nightly\n"
    assert main([*url, "schedules", "delete", "nightly"]) == 0
    assert main([*url, "schedules", "show", "nightly"]) != 0
    assert "SCHEDULE_NOT_FOUND" in capsys.readouterr().err


# --- --json after every command's name ---------------------------------------------------------


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every runnable (sub)command of ``parser``, nested groups (``schedules``) walked."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))
            return
    yield path, parser


def _required_arguments(parser: argparse.ArgumentParser) -> list[str]:
    """Placeholder values for a command's required positionals and options (parsing only)."""
    argv: list[str] = []
    for action in parser._actions:
        if not action.option_strings and action.nargs not in ("?", "*"):
            argv.append("x")
        elif action.option_strings and action.required:
            argv += [action.option_strings[0], "1d"]
    return argv


def test_every_command_takes_json_after_its_name() -> None:
    commands = list(_commands(_parser()))
    names = {" ".join(path) for path, _ in commands}
    assert {"migrate", "generate-schema", "export", "graph", "worker", "ui", "demo"} <= names
    assert {"list", "show", "signal", "schedules list", "schedules backfill"} <= names
    for path, sub in commands:
        args = _parser().parse_args([*path, *_required_arguments(sub), "--json"])
        assert args.json is True, path
        assert _parser().parse_args(["--json", *path, *_required_arguments(sub)]).json is True
        assert _parser().parse_args([*path, *_required_arguments(sub)]).json is False, path


# --- a URL from the environment that is not PostgreSQL names its variable ----------------------


def test_a_bad_url_from_the_environment_names_its_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("ITERFLOW_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", "sqlite:///app.db")
    assert main(["list"]) == 2
    line = _one_error_line(capsys.readouterr().err, "CONFIG_INVALID")
    assert "needs PostgreSQL, got 'sqlite' (the URL in $DATABASE_URL)" in line
    assert "fix or unset $DATABASE_URL, or pass --database-url" in line
    assert "set $ITERFLOW_DATABASE_URL, which takes precedence over $DATABASE_URL" in line

    monkeypatch.setenv("ITERFLOW_DATABASE_URL", "mysql://u@h/db")
    monkeypatch.setenv("DATABASE_URL", NOWHERE)
    assert main(["show", RUN_ID, "--json"]) == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err, "CONFIG_INVALID")
    assert "got 'mysql' (the URL in $ITERFLOW_DATABASE_URL)" in line
    assert "fix or unset $ITERFLOW_DATABASE_URL, or pass --database-url" in line
    assert "precedence" not in line and "$DATABASE_URL" not in line
    assert json.loads(captured.out)["error"]["code"] == "CONFIG_INVALID"

    # an explicit --database-url is used as given; the environment is not read
    assert main(["--database-url", "mysql://u@h/db", "list"]) == 2
    line = _one_error_line(capsys.readouterr().err, "CONFIG_INVALID")
    assert line.endswith("iterflow needs PostgreSQL, got 'mysql'")


# --- graph: a missing version of a registered flow ----------------------------------------------


def test_graph_names_the_missing_version_and_the_registered_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "cli_versions_app.py").write_text(
        "from iterflow import Engine, FlowContext\n"
        "engine = Engine()\n"
        "for version in (1, 2):\n"
        "    @engine.flow('echo', version=version, input=str, output=str)\n"
        "    async def echo(ctx: FlowContext, text: str) -> str:\n"
        "        return await ctx.step('say', lambda: text)\n"
        "@engine.flow('other', input=str, output=str)\n"
        "async def other(ctx: FlowContext, text: str) -> str:\n"
        "    return text\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    app = "cli_versions_app:engine"
    assert main(["graph", f"{app}:echo", "--version", "7"]) == 2
    line = _one_error_line(capsys.readouterr().err, "FLOW_UNKNOWN")
    assert "no version 7 of flow 'echo' is registered (its versions: 1, 2)" in line
    assert "--version" in line
    assert main(["graph", f"{app}:nope", "--version", "1"]) == 2
    line = _one_error_line(capsys.readouterr().err, "FLOW_UNKNOWN")
    assert "flow 'nope' is not registered (registered: echo@1, echo@2, other@1)" in line
    assert main(["graph", f"{app}:echo", "--version", "1", "--input", '"hi"']) == 0
    assert "flowchart" in capsys.readouterr().out


# --- control characters: escaped in text output, error lines and logs ---------------------------


def test_text_output_error_lines_and_logs_escape_control_characters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    echo("tag\x1b[2J\rx", "key\n  error: FORGED\x9b\x7f\t\x00")
    assert capsys.readouterr().out == "tag\\x1b[2J\\rx\nkey\\n  error: FORGED\\x9b\\x7f\\t\\x00\n"

    value = {"tag": "a\x1b[31m\x9b\x85\n"}
    text = json_text(value)
    assert re.findall("[\x00-\x09\x0b-\x1f\x7f-\x9f]", text) == []
    assert json.loads(text) == value

    (tmp_path / "ctl_chars_app.py").write_text(
        "from iterflow.core.errors import ConfigInvalid\n"
        "raise ConfigInvalid('bad \\x1b]0;title\\x07 name')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["worker", "ctl_chars_app:engine", "--json"]) == 2
    captured = capsys.readouterr()
    assert _one_error_line(captured.err, "CONFIG_INVALID").endswith("bad \\x1b]0;title\\x07 name")
    assert json.loads(captured.out)["error"]["message"] == "bad \x1b]0;title\x07 name"

    record = logging.LogRecord(
        "iterflow",
        logging.ERROR,
        __file__,
        1,
        "run %s failed: %s",
        ("r1", "x\n  FORGED\x1b[0m"),
        None,
    )
    line = _TextLogFormatter("%(levelname)s %(message)s").format(record)
    assert line == "ERROR run r1 failed: x\\n  FORGED\\x1b[0m"


def test_a_traceback_in_a_text_log_line_cannot_drive_the_terminal() -> None:
    try:
        raise ValueError("step said \x1b[2J\x1b]0;owned\x07\x9b31m")
    except ValueError:
        record = logging.LogRecord(
            "iterflow", logging.ERROR, __file__, 1, "attempt failed", (), sys.exc_info()
        )
    text = _TextLogFormatter("%(levelname)s %(message)s").format(record)
    lines = text.split("\n")
    assert lines[0] == "ERROR attempt failed" and lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ValueError: step said \\x1b[2J\\x1b]0;owned\\x07\\x9b31m"
    assert not any(ch in text for ch in "\x1b\x07\x9b")
