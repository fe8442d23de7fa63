"""The runs-list filter as it lives in the URL: the query parameters, and their reading into
the keywords of ``engine.list_runs`` / ``engine.count_runs`` (shared by the runs list and the
bulk actions, whose forms carry the same filter)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import ImmutableMultiDict
from starlette.requests import Request

__all__ = ["FILTER_PARAMS", "FilterError", "filters_from", "list_filters"]

_TIME_PARAMS = ("created_after", "created_before", "finished_after", "finished_before")
#: The runs-list query parameters that filter (kept by pagination, sorting and the bulk form).
FILTER_PARAMS = (
    "flow",
    "version",
    "status",
    "tag",
    *_TIME_PARAMS,
    "parent",
    "schedule",
    "q",
    "key",
)


class FilterError(ValueError):
    """A runs-list query parameter that cannot be read (shown on the page, status 422)."""


def _time(name: str, text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        raise FilterError(
            f"{name} must be an ISO 8601 time, e.g. 2026-01-31T09:00 (UTC) or "
            f"2026-01-31T09:00+02:00; got {text[:60]!r}"
        ) from None
    return value if value.utcoffset() is not None else value.replace(tzinfo=UTC)


def list_filters(request: Request) -> dict[str, Any]:
    """The ``engine.list_runs`` / ``engine.count_runs`` keywords the runs-list query string
    asks for (flow, version, status..., tag..., time windows, parent, schedule, ``q`` as a run id
    prefix, ``key`` as an idempotency key). Raises :class:`FilterError` for an unreadable value;
    the engine checks the rest (``INPUT_INVALID``)."""
    return filters_from(request.query_params)


def filters_from(q: ImmutableMultiDict[str, str]) -> dict[str, Any]:
    """:func:`list_filters` of parameters given as a multi-dict (a query string, or the form of
    a bulk action carrying the filter)."""
    out: dict[str, Any] = {}

    def text(param: str) -> str | None:
        value = q.get(param, "").strip()
        return value or None

    if (flow := text("flow")) is not None:
        out["name"] = flow
    if (version := text("version")) is not None:
        if not version.lstrip("-").isdigit() or len(version) > 11:
            raise FilterError(f"version must be an integer, got {version[:60]!r}")
        out["version"] = int(version)
    statuses = [s for s in q.getlist("status") if s.strip()]
    if statuses:
        out["status"] = statuses
    tags = [t for t in q.getlist("tag") if t.strip()]
    if tags:
        out["tags"] = tags
    for param in _TIME_PARAMS:
        if (value := text(param)) is not None:
            out[param] = _time(param, value)
    for param, keyword in (
        ("parent", "parent"),
        ("schedule", "schedule"),
        ("q", "id_prefix"),
        ("key", "idempotency_key"),
    ):
        if (value := text(param)) is not None:
            out[keyword] = value
    return out
