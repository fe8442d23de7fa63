"""Payloads are pydantic-typed JSON, never pickle."""

from __future__ import annotations

import contextlib
import functools
import json
import typing
import weakref
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter, ValidationError

from .errors import PayloadTooLarge

__all__ = ["adapter", "check_size", "dump", "load", "return_type"]


@functools.lru_cache(maxsize=512)
def _cached_adapter(tp: Any) -> TypeAdapter[Any]:
    return TypeAdapter(tp)


def adapter(tp: Any) -> TypeAdapter[Any]:
    """A (cached where hashable) pydantic ``TypeAdapter`` for ``tp``."""
    try:
        return _cached_adapter(tp)
    except TypeError:  # unhashable annotation
        return TypeAdapter(tp)


def dump(value: Any, tp: Any = Any) -> Any:
    """Encode ``value`` into plain JSON data (dicts, lists, str, numbers, None)."""
    return adapter(tp).dump_python(value, mode="json")


def load(data: Any, tp: Any) -> Any:
    """Decode stored JSON data into ``tp`` (raises ``pydantic.ValidationError``)."""
    return adapter(tp).validate_python(data)


def check_size(data: Any, limit: int, what: str) -> int:
    """Raise :class:`PayloadTooLarge` when the JSON text of ``data`` exceeds ``limit`` bytes."""
    size = len(json.dumps(data, separators=(",", ":")).encode())
    if size > limit:
        raise PayloadTooLarge(
            f"{what} is {size} bytes, over the limit of {limit} bytes; store large data "
            "elsewhere and pass a reference, or raise Settings.max_payload_bytes",
            details={"size": size, "limit": limit},
        )
    return size


def validation_message(exc: ValidationError) -> str:
    """A compact one-line summary of a pydantic validation error."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "<root>"
        parts.append(f"{loc}: {err.get('msg')}")
    more = "" if exc.error_count() <= 5 else f" (+{exc.error_count() - 5} more)"
    return "; ".join(parts) + more


_RETURN_TYPES: weakref.WeakKeyDictionary[Callable[..., Any], Any] = weakref.WeakKeyDictionary()


def return_type(fn: Callable[..., Any]) -> Any:
    """The return annotation of ``fn`` (``Any`` if none), cached without keeping ``fn`` alive.

    Step functions are often closures created anew on every attempt; a strong cache keyed by
    them would pin each closure and everything it references (a ``FlowContext``, payloads).
    """
    try:
        return _RETURN_TYPES[fn]
    except (KeyError, TypeError):
        pass
    target = fn.func if isinstance(fn, functools.partial) else fn
    try:
        tp: Any = typing.get_type_hints(target).get("return", Any)
    except Exception:
        tp = Any
    with contextlib.suppress(TypeError):  # not weakly referenceable: just don't cache
        _RETURN_TYPES[fn] = tp
    return tp
