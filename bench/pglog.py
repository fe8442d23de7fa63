"""PostgreSQL's CPU per statement, read from its log with ``log_statement_stats``.

With ``log_statement_stats = on`` (a superuser setting; the profile section sets it on its own
database), the server writes the CPU (user + system) each protocol message used (a line
``LOG:  EXECUTE MESSAGE STATISTICS``, then ``DETAIL:`` lines, one of them
``!<TAB>0.000039 s user, 0.000006 s system, ...``), followed by a ``STATEMENT:`` line with the
statement it belonged to.

:func:`statement_cpu` parses that and :func:`label` names the engine's statements. The commit at
the end of each transaction (for an extended-protocol statement it runs at ``Sync``, after the
statistics are taken), the protocol and the background processes are not in these figures.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

__all__ = ["LABELS", "StatementCpu", "label", "statement_cpu"]

_STAMP = re.compile(r"^\d{4}-\d\d-\d\d ")
_STATS = re.compile(r"LOG:  (.*?)\s*STATISTICS")
_USAGE = re.compile(r"!\t([\d.]+) s user, ([\d.]+) s system")

#: Fragments that name the engine's hot statements (the first that matches wins).
LABELS: tuple[tuple[str, str], ...] = (
    ("levels(queue, priority) AS", "the wake-up fetch"),
    ("procrastinate_fetch_job", "procrastinate's fetch (every queue)"),
    ("WITH claimed AS", "claim"),
    ("AS b(run_id, token, position", "checkpoints of several runs (group commit)"),
    ("FOR SHARE", "checkpoint (memo under the share-lock fence)"),
    ("WITH lease AS", "checkpoint (renewing the lease)"),
    ("own_job", "finish / suspend / park (ends its own job)"),
    ('INSERT INTO "iterflow".runs (id, name', "start"),
    ("procrastinate_", "procrastinate (other)"),
)


@dataclass(frozen=True)
class StatementCpu:
    """CPU of one statement label across the log: calls (execute messages) and seconds (every
    message of the statement: parse, bind, execute)."""

    label: str
    calls: int
    seconds: float


def label(statement: str) -> str:
    """The name of ``statement`` in :data:`LABELS`, else its first 60 characters."""
    for fragment, name in LABELS:
        if fragment in statement:
            return name
    return " ".join(statement.split())[:60]


def statement_cpu(log: str) -> list[StatementCpu]:
    """Every statement's CPU in ``log`` (server log text), largest first."""
    lines = log.splitlines()
    calls: dict[str, int] = defaultdict(int)
    seconds: dict[str, float] = defaultdict(float)
    i = 0
    while i < len(lines):
        stats = _STATS.search(lines[i])
        if stats is None:
            i += 1
            continue
        kind = stats.group(1) or "QUERY"
        cpu = 0.0
        i += 1
        while i < len(lines) and (not _STAMP.match(lines[i]) or "DETAIL:" in lines[i]):
            usage = _USAGE.search(lines[i])
            if usage is not None:
                cpu = float(usage.group(1)) + float(usage.group(2))
            i += 1
        if i < len(lines) and "STATEMENT:" in lines[i]:
            text = [lines[i].split("STATEMENT:", 1)[1]]
            i += 1
            while i < len(lines) and not _STAMP.match(lines[i]):
                text.append(lines[i])
                i += 1
            name = label(" ".join(part.strip() for part in text))
        else:
            name = "(no statement)"
        seconds[name] += cpu
        if kind in ("EXECUTE MESSAGE", "QUERY"):
            calls[name] += 1
    rows = [StatementCpu(name, calls[name], seconds[name]) for name in seconds]
    return sorted(rows, key=lambda r: -r.seconds)
