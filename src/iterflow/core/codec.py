"""Payloads are pydantic-typed JSON, never pickle; one codec for every stored value.

Inputs, signal payloads, step results, child inputs, memoized values and outputs all go through
:func:`encode` **before** anything is written: pydantic encodes the value to JSON data, then the
data is checked against what PostgreSQL's ``jsonb`` stores. A value that cannot be stored raises
:class:`~iterflow.core.errors.PayloadInvalid` (NUL characters, lone surrogates, NaN/Infinity, a type
the codec cannot encode, nesting too deep, an integer too long) or
:class:`~iterflow.core.errors.PayloadTooLarge` (over the byte cap of its UTF-8 JSON text). NaN and
Infinity are refused, never turned into ``null``. Text columns (tags, keys, reasons, labels) are
checked by :func:`check_text`. Errors are repaired rather than refused
(:meth:`FlowError.to_dict`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import re
import typing
import weakref
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic_core import PydanticSerializationError

from iterflow.core.errors import InputInvalid, PayloadInvalid, PayloadTooLarge

__all__ = [
    "adapter",
    "check_data",
    "check_text",
    "digest",
    "dump",
    "encode",
    "has_return_annotation",
    "load",
    "not_json_native",
    "return_type",
    "shown",
]

#: Keep NaN/Infinity as floats when encoding (pydantic's JSON mode would silently write
#: ``null`` for ``Any``-typed floats), so :func:`check_data` can refuse them.
_KEEP_NAN = ConfigDict(ser_json_inf_nan="constants")
#: A JSON ``\u0000`` escape that is not itself an escaped backslash: PostgreSQL's jsonb refuses it.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_NAN = "NaN or Infinity (not JSON; use None or a string)"


@functools.lru_cache(maxsize=512)
def _cached_adapter(tp: Any) -> TypeAdapter[Any]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return TypeAdapter(tp)  # a model's own config governs it (pydantic refuses another)
    try:
        return TypeAdapter(tp, config=_KEEP_NAN)
    except Exception:  # e.g. a dataclass or TypedDict with its own config
        return TypeAdapter(tp)


def adapter(tp: Any) -> TypeAdapter[Any]:
    """A (cached where hashable) pydantic ``TypeAdapter`` for ``tp``."""
    try:
        return _cached_adapter(tp)
    except TypeError:  # unhashable annotation
        return TypeAdapter(tp)


def dump(value: Any, tp: Any = Any) -> Any:
    """Encode ``value`` into plain JSON data (dicts, lists, str, numbers, None), unchecked.

    Values that are written go through :func:`encode` instead.
    """
    return adapter(tp).dump_python(value, mode="json")


def encode(value: Any, tp: Any = Any, *, what: str, limit: int) -> Any:
    """Encode ``value`` (typed by ``tp``) to JSON data that PostgreSQL will store.

    Raises :class:`PayloadInvalid` naming ``what`` when it cannot be encoded or stored, and
    :class:`PayloadTooLarge` when its JSON text is over ``limit`` bytes (UTF-8).
    """
    try:
        data = adapter(tp).dump_python(value, mode="json")
    except (PydanticSerializationError, ValueError, TypeError, RecursionError) as exc:
        raise PayloadInvalid(
            f"{what} cannot be encoded as JSON: {_first_line(exc)}; return or pass pydantic "
            "models, dataclasses or JSON-compatible values",
            details={"where": what},
        ) from exc
    text, _ = _stored_text(data, what=what, limit=limit)
    if "null" in text and _non_finite(adapter(tp).dump_python(value, mode="python")):
        # a pydantic model's own config (``ser_json_inf_nan='null'``, its default) wrote null
        # for a NaN/Infinity in a field typed Any, dict or list: refused, as the plain one is
        raise PayloadInvalid(f"{what} cannot be stored: {_NAN}", details={"where": what})
    return data


def _non_finite(data: Any) -> bool:
    """Whether ``data`` (Python-mode pydantic output: containers, scalars) holds a float NaN
    or Infinity anywhere (iterative: the data may be nested thousands deep)."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
    return False


def digest(data: Any) -> str:
    """sha256 (hex) of ``data``'s canonical JSON (keys sorted, no spaces): equal for equal
    JSON values whatever their key order (a start's input hash, for idempotency conflicts)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def check_data(data: Any, *, what: str, limit: int) -> int:
    """Check plain JSON data against what ``jsonb`` stores and the byte cap; return its size.

    The single check behind :func:`encode`, also applied by both stores to whatever they write.
    """
    return _stored_text(data, what=what, limit=limit)[1]


def _stored_text(data: Any, *, what: str, limit: int) -> tuple[str, int]:
    """:func:`check_data`'s checks; ``data``'s compact JSON text and its size in bytes."""
    try:
        text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (ValueError, TypeError, RecursionError) as exc:
        if "Out of range float" in str(exc):
            problem = _NAN
        elif "integer string conversion" in str(exc):
            problem = "an integer of over 4300 digits (store it as a string)"
        else:
            problem = _first_line(exc)
        raise PayloadInvalid(
            f"{what} cannot be stored: {problem}", details={"where": what}
        ) from exc
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PayloadInvalid(
            f"{what} cannot be stored: it contains a lone surrogate (invalid Unicode text, "
            f"e.g. bytes decoded with 'surrogateescape') at character {exc.start}",
            details={"where": what},
        ) from None
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        raise PayloadInvalid(
            f"{what} cannot be stored: it contains a NUL character (\\u0000), which "
            "PostgreSQL text and jsonb refuse; strip it or encode the data (e.g. base64)",
            details={"where": what},
        )
    size = len(raw)
    if size > limit:
        raise PayloadTooLarge(
            f"{what} is {size} bytes, over the limit of {limit} bytes; store large data "
            "elsewhere and pass a reference, or raise Settings.max_payload_bytes",
            details={"size": size, "limit": limit, "where": what},
        )
    return text, size


def check_text(value: Any, *, what: str, max_chars: int, empty: bool = False) -> str:
    """Check a value stored in a text column (tag, key, reason): a ``str`` of at most
    ``max_chars`` characters, without NUL or lone surrogates. Raises :class:`InputInvalid`."""
    if not isinstance(value, str):
        raise InputInvalid(f"{what} must be a string, got {type(value).__name__}")
    if not value and not empty:
        raise InputInvalid(f"{what} must not be empty")
    if len(value) > max_chars:
        raise InputInvalid(f"{what} is {len(value)} characters, over the limit of {max_chars}")
    if "\x00" in value:
        raise InputInvalid(f"{what} contains a NUL character, which PostgreSQL refuses")
    if _LONE_SURROGATE.search(value):
        raise InputInvalid(f"{what} contains a lone surrogate (invalid Unicode text)")
    return value


def shown(value: object, limit: int = 100) -> str:
    """``repr(value)`` for an error message, at most about ``limit`` characters; never raises
    (the repr of ``10**5000``, of a 5,000-level dict or of a broken object would)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"an integer of {value.bit_length()} bits"
    try:
        text = repr(value)
    except Exception:  # includes RecursionError
        return f"<{type(value).__qualname__} object>"
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def load(data: Any, tp: Any) -> Any:
    """Decode stored JSON data into ``tp`` (raises ``pydantic.ValidationError``)."""
    return adapter(tp).validate_python(data)


def validation_message(exc: ValidationError) -> str:
    """A compact one-line summary of a pydantic validation error."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "<root>"
        if len(loc) > 200:  # e.g. a 5,000-level document: keep the message readable
            loc = f"{loc[:100]}…{loc[-100:]}"
        parts.append(f"{loc}: {err.get('msg')}")
    more = "" if exc.error_count() <= 5 else f" (+{exc.error_count() - 5} more)"
    return "; ".join(parts) + more


_RETURN_TYPES: weakref.WeakKeyDictionary[Callable[..., Any], tuple[Any, bool]] = (
    weakref.WeakKeyDictionary()
)


def _return_hint(fn: Callable[..., Any]) -> tuple[Any, bool]:
    """``fn``'s return annotation (``Any`` if none) and whether it has one, cached without
    keeping ``fn`` alive.

    Step functions are often closures created anew on every attempt; a strong cache keyed by
    them would pin each closure and everything it references (a ``FlowContext``, payloads).
    """
    try:
        return _RETURN_TYPES[fn]
    except (KeyError, TypeError):
        pass
    target: Any = fn.func if isinstance(fn, functools.partial) else fn
    hint: tuple[Any, bool]
    if isinstance(target, type):  # a class called as a step function returns an instance
        hint = (target, True)
    else:
        if not hasattr(target, "__code__"):  # a callable object: its __call__
            call = next(
                (vars(k)["__call__"] for k in type(target).__mro__ if "__call__" in vars(k)), None
            )
            if hasattr(call, "__code__"):
                target = call
        try:
            hints = typing.get_type_hints(target)
            hint = (hints["return"], True) if "return" in hints else (Any, False)
        except Exception:
            hint = (Any, False)
    with contextlib.suppress(TypeError):  # not weakly referenceable: just don't cache
        _RETURN_TYPES[fn] = hint
    return hint


def return_type(fn: Callable[..., Any]) -> Any:
    """The return annotation of ``fn`` (``Any`` if none)."""
    return _return_hint(fn)[0]


def has_return_annotation(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` (or the function of a ``functools.partial``) declares its return type."""
    return _return_hint(fn)[1]


_JSON_SCALARS = (str, int, float, bool, type(None))


def not_json_native(value: Any) -> str | None:
    """``None`` when ``value`` is made of JSON's own types only (``dict`` with ``str`` keys,
    ``list``, ``str``, ``int``, ``float``, ``bool``, ``None``), so that decoding its JSON without
    a type gives it back equal and of the same types; otherwise what is not, and where (e.g.
    ``"a Decimal value at ['total']"``)."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, where = stack.pop()
        kind = type(item)
        if kind in _JSON_SCALARS:
            continue
        if kind is list:
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
            continue
        if kind is dict:
            for k, v in item.items():
                if type(k) is not str:
                    return f"a dict key {shown(k, 40)} of type {type(k).__name__}" + (
                        f" at {where}" if where else ""
                    )
                stack.append((v, f"{where}[{k!r}]"))
            continue
        return f"a {kind.__name__} value" + (f" at {where}" if where else "")
    return None
