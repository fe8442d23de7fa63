"""Benchmark results: rows with a value, an optional target and the margin; table and JSON."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["Report", "Row", "Section", "Target", "percentiles", "spread"]

Op = Literal["<=", ">="]


@dataclass(frozen=True)
class Target:
    """``value <op> threshold``."""

    op: Op
    threshold: float
    text: str

    def check(self, value: float) -> tuple[bool, str]:
        """Whether ``value`` meets the target, and the margin in words."""
        ok = value <= self.threshold if self.op == "<=" else value >= self.threshold
        diff = value - self.threshold
        rel = diff / self.threshold * 100 if self.threshold else math.inf
        if ok:
            spare = -diff if self.op == "<=" else diff
            if spare == 0:
                return True, "met exactly"
            pct = f" ({abs(rel):.0f}%)" if math.isfinite(rel) else ""
            return True, f"{_num(spare)} to spare{pct}"
        short = diff if self.op == "<=" else -diff
        return False, f"by {_num(short)} ({abs(rel):.0f}% {'over' if self.op == '<=' else 'under'})"


@dataclass
class Row:
    """One figure of the report."""

    metric: str
    value: float | None
    unit: str = ""
    target: Target | None = None
    note: str = ""
    status: str = field(init=False, default="")
    margin: str = field(init=False, default="")

    def __post_init__(self) -> None:
        if self.target is None or self.value is None:
            self.status = "info" if self.value is not None else "n/a"
            return
        ok, margin = self.target.check(self.value)
        self.status = "PASS" if ok else "MISS"
        self.margin = margin

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        out = asdict(self)
        out["target"] = self.target.text if self.target else None
        return out


@dataclass
class Section:
    """One benchmark section: its rows and any raw data worth keeping."""

    key: str
    title: str
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def add(
        self,
        metric: str,
        value: float | None,
        unit: str = "",
        target: Target | None = None,
        note: str = "",
    ) -> Row:
        """Append a row and return it."""
        row = Row(metric, value, unit, target, note)
        self.rows.append(row)
        return row


@dataclass
class Report:
    """All sections of one benchmark run."""

    meta: dict[str, Any]
    sections: list[Section] = field(default_factory=list)

    def misses(self) -> list[tuple[Section, Row]]:
        """Every row that missed its target."""
        return [(s, r) for s in self.sections for r in s.rows if r.status == "MISS"]

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "meta": self.meta,
            "sections": [
                {
                    "key": s.key,
                    "title": s.title,
                    "seconds": round(s.seconds, 1),
                    "rows": [r.as_dict() for r in s.rows],
                    "raw": s.raw,
                }
                for s in self.sections
            ],
        }

    def write_json(self, path: Path) -> None:
        """Write the JSON form to ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=2, default=str) + "\n")

    def render(self) -> str:
        """The table printed at the end of a run."""
        out: list[str] = []
        settings = self.meta.get("server_settings", {})
        out.append("iterflow benchmark")
        out.append(
            f"  server: {self.meta.get('server')}; PostgreSQL {settings.get('server_version')}, "
            f"fsync={settings.get('fsync')}, synchronous_commit="
            f"{settings.get('synchronous_commit')}, wal_sync_method="
            f"{settings.get('wal_sync_method')}, full_page_writes="
            f"{settings.get('full_page_writes')}, shared_buffers={settings.get('shared_buffers')}"
        )
        out.append(
            f"  mode: {self.meta.get('mode')}; {self.meta.get('cpus')} CPUs; load average at "
            f"start {self.meta.get('load_average_at_start')}, at end "
            f"{self.meta.get('load_average_at_end')}; engine settings "
            f"{self.meta.get('engine_settings')}"
        )
        widths = (58, 12, 8, 22, 6)
        for section in self.sections:
            out.append("")
            out.append(f"== {section.title} ({section.seconds:.0f} s)")
            header = ("metric", "value", "unit", "target", "status")
            out.append(_line(header, widths) + "  margin / note")
            for row in section.rows:
                cells = (
                    row.metric,
                    _num(row.value) if row.value is not None else "-",
                    row.unit,
                    row.target.text if row.target else "",
                    row.status,
                )
                tail = "; ".join(x for x in (row.margin, row.note) if x)
                out.append(_line(cells, widths) + ("  " + tail if tail else ""))
        misses = self.misses()
        out.append("")
        if misses:
            out.append(f"{len(misses)} target(s) missed:")
            for section, row in misses:
                out.append(f"  - [{section.key}] {row.metric}: {row.margin}")
            out.append("see docs/performance.md for why and what would fix each.")
        else:
            out.append("all targets met.")
        return "\n".join(out)


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    parts = []
    for i, (cell, width) in enumerate(zip(cells, widths, strict=True)):
        parts.append(cell.rjust(width) if i == 1 else cell.ljust(width))
    return " ".join(parts)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or (abs(value) >= 100 and float(value).is_integer()):
        return f"{int(value):,}"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / p99 / max (nearest-rank), plus the sample count."""
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)

    def rank(p: float) -> float:
        index = max(math.ceil(p / 100 * len(ordered)) - 1, 0)
        return ordered[index]

    return {
        "n": len(ordered),
        "p50": rank(50),
        "p95": rank(95),
        "p99": rank(99),
        "min": ordered[0],
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
    }


def spread(samples: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements."""
    return {
        "median": statistics.median(samples),
        "min": min(samples),
        "max": max(samples),
        "n": len(samples),
    }
