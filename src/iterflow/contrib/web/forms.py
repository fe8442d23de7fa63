"""The dashboard's forms: generated from the pydantic models a flow declares (its input, its
signals), the payload a submitted form describes, the POST form carrying the CSRF token, and
the answer to a refused or failed one.

One input per field: text for ``str`` (and for types pydantic reads from text: dates, UUIDs,
decimals), a number for ``int``/``float``, a checkbox for ``bool``, a select for an ``Enum`` or a
``Literal``; ``Optional`` fields may be left empty (``None``). Anything else (nested models,
lists, dicts, unions) is a JSON textarea. A flow without a model (or a type that is not a
pydantic model) gets one JSON textarea named ``payload_json``. Every value is escaped; the
engine validates the payload again before anything is stored.
"""

from __future__ import annotations

import enum
import json
import math
import types
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from starlette.requests import Request
from starlette.responses import Response

from iterflow.contrib.starlette import status_for
from iterflow.contrib.web.html import esc, href, page
from iterflow.contrib.web.security import Denied, csrf_token
from iterflow.core.errors import FlowError, InputInvalid

__all__ = [
    "PAYLOAD_FIELD",
    "error_page",
    "field_errors",
    "form_model",
    "model_form",
    "parse_form",
    "post_form",
]

#: The JSON textarea of a model-less payload.
PAYLOAD_FIELD = "payload_json"

_TEXT_TYPES = (str, date, datetime, time, timedelta, uuid.UUID, Decimal)
Kind = Literal["text", "int", "float", "bool", "choice", "json"]


@dataclass(frozen=True)
class _Field:
    name: str  # the input's name (without the prefix)
    key: str  # the payload's key (the field's alias, if any)
    kind: Kind
    optional: bool
    required: bool
    choices: tuple[Any, ...]
    default: Any
    description: str | None


def form_model(tp: Any) -> type[BaseModel] | None:
    """``tp`` when it is a pydantic model class (a form field per model field), else None (one
    JSON textarea)."""
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The annotation without ``None`` (``X | None`` -> ``X``) and whether ``None`` was there."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) < len(get_args(annotation)):
            return (args[0] if len(args) == 1 else Union[tuple(args)]), True  # noqa: UP007
    return annotation, False


def _kind(tp: Any) -> tuple[Kind, tuple[Any, ...]]:
    if get_origin(tp) is Literal:
        return "choice", get_args(tp)
    if isinstance(tp, type):
        if issubclass(tp, enum.Enum):
            return "choice", tuple(member.value for member in tp)
        if issubclass(tp, bool):
            return "bool", ()
        if issubclass(tp, int):
            return "int", ()
        if issubclass(tp, float):
            return "float", ()
        if issubclass(tp, _TEXT_TYPES):
            return "text", ()
    return "json", ()


def _fields(model: type[BaseModel]) -> list[_Field]:
    out = []
    for name, info in model.model_fields.items():
        tp, optional = _unwrap(info.annotation)
        kind, choices = _kind(tp)
        alias = info.validation_alias if isinstance(info.validation_alias, str) else info.alias
        out.append(
            _Field(
                name=name,
                key=alias or name,
                kind=kind,
                optional=optional,
                required=info.is_required(),
                choices=choices,
                default=_default(info),
                description=info.description,
            )
        )
    return out


def _default(info: FieldInfo) -> Any:
    if info.default is PydanticUndefined or info.default_factory is not None:
        return None
    return info.default


def _shown(field: _Field, value: Any) -> str:
    """A field's value as the text of its input."""
    if value is None:
        return ""
    if field.kind == "json":
        try:
            return json.dumps(value, ensure_ascii=False, indent=2, default=str)
        except (TypeError, ValueError):
            return ""
    if isinstance(value, enum.Enum):
        value = value.value
    return str(value)


def _input(field: _Field, name: str, text: str, checked: bool) -> str:
    required = " required" if field.required and field.kind != "bool" else ""
    attrs = f'name="{esc(name)}"{required}'
    if field.kind == "bool" and field.optional:  # three states: empty is None
        states = "".join(
            f'<option value="{v}"{" selected" if v == text else ""}>{v}</option>'
            for v in ("", "true", "false")
        )
        return f"<select {attrs}>{states}</select>"
    if field.kind == "bool":
        return f'<input type="checkbox" {attrs} value="true"{" checked" if checked else ""}>'
    if field.kind == "choice":
        options = ['<option value=""></option>'] if field.optional or not field.required else []
        for choice in field.choices:
            label = str(choice)
            selected = " selected" if label == text else ""
            options.append(f'<option value="{esc(label)}"{selected}>{esc(label)}</option>')
        return f"<select {attrs}>{''.join(options)}</select>"
    if field.kind == "json":
        return f'<textarea {attrs} rows="4" data-json="true">{esc(text)}</textarea>'
    if field.kind == "int":
        return f'<input type="number" step="1" {attrs} value="{esc(text)}">'
    if field.kind == "float":
        return f'<input type="number" step="any" {attrs} value="{esc(text)}">'
    return f'<input type="text" {attrs} value="{esc(text)}">'


def _error(name: str, errors: Mapping[str, str] | None, key: str | None = None) -> str:
    found = errors or {}
    message = found.get(name, found.get(key or name))
    if message is None:
        return ""
    return f'<div class="field-error" data-field-error="{esc(name)}">{esc(message)}</div>'


def model_form(
    model: type[BaseModel] | None,
    *,
    name_prefix: str = "",
    values: Mapping[str, str] | None = None,
    errors: Mapping[str, str] | None = None,
) -> str:
    """HTML inputs (each inside its ``<label>``) for ``model``'s fields, named
    ``name_prefix + field name``; a ``None`` model gets one JSON textarea ``payload_json``.

    ``values`` refills the inputs with what was submitted (the raw form, by input name) and
    ``errors`` shows a message under a field (``div[data-field-error="<field>"]``); without
    ``values`` the fields show their defaults.
    """
    if model is None:
        text = (values or {}).get(name_prefix + PAYLOAD_FIELD, "")
        return (
            '<div class="field" data-field="payload_json"><label>payload (JSON)'
            f'<textarea name="{esc(name_prefix + PAYLOAD_FIELD)}" rows="4" data-json="true">'
            f"{esc(text)}</textarea></label>{_error(PAYLOAD_FIELD, errors)}</div>"
        )
    parts = []
    for field in _fields(model):
        name = name_prefix + field.name
        if values is None:
            text = _shown(field, field.default)
            checked = field.default is True
            if field.kind == "bool" and field.default is not None:
                text = "true" if field.default else "false"
        else:
            text = values.get(name, "")
            checked = text in ("true", "on")
        note = "" if field.required else " (optional)"
        help_text = (
            f'<small class="help">{esc(field.description)}</small>' if field.description else ""
        )
        parts.append(
            f'<div class="field" data-field="{esc(field.name)}"><label>'
            f'<span class="field-name">{esc(field.name)}{note}</span> '
            f"{_input(field, name, text, checked)}</label>{help_text}"
            f"{_error(field.name, errors, field.key)}</div>"
        )
    return "\n".join(parts)


def _strict_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text, parse_constant=_strict_constant)
    except (ValueError, RecursionError) as exc:
        raise InputInvalid(
            f"{where} is not valid JSON: {str(exc)[:200]}",
            details={"errors": [{"loc": [where], "msg": f"not valid JSON: {str(exc)[:200]}"}]},
        ) from None


def _value(field: _Field, raw: str) -> Any:
    if field.kind == "int":
        try:
            return int(raw.strip())
        except ValueError:
            return raw  # pydantic names the error
    if field.kind == "float":
        try:
            number = float(raw.strip())
        except ValueError:
            return raw
        return number if math.isfinite(number) else raw
    if field.kind == "choice":
        return next((c for c in field.choices if str(c) == raw), raw)
    if field.kind == "json":
        return _json(raw, field.name)
    return raw


def parse_form(model: type[BaseModel] | None, form: Mapping[str, Any], *, prefix: str = "") -> Any:
    """The payload a form of :func:`model_form` describes: a dict keyed by the model's field
    names (or aliases), for the model to validate. An empty optional field is ``None``; an
    empty field with a default is left out (the default applies); an empty required field is
    left out (the model reports it missing); an unchecked checkbox is ``False``. A ``None``
    model: the ``payload_json`` text parsed (empty: ``None``). Invalid JSON raises
    ``INPUT_INVALID`` naming the field."""
    if model is None:
        text = str(form.get(prefix + PAYLOAD_FIELD) or "")
        return _json(text, PAYLOAD_FIELD) if text.strip() else None
    payload: dict[str, Any] = {}
    for field in _fields(model):
        raw = form.get(prefix + field.name)
        if field.kind == "bool":
            if raw in ("true", "on"):
                payload[field.key] = True
            elif raw == "false" or not field.optional:
                payload[field.key] = False
            else:
                payload[field.key] = None
            continue
        text = raw if isinstance(raw, str) else ""
        if (text if field.kind == "text" else text.strip()) == "":
            if field.optional:
                payload[field.key] = None
            continue  # the default applies, or the model reports the field missing
        payload[field.key] = _value(field, text)
    return payload


def field_errors(error: ValidationError | FlowError) -> dict[str, str]:
    """Messages by top-level field name from a pydantic error, or from a FlowError carrying
    one (its ``details["errors"]`` or its cause); ``"payload_json"`` for a root-level error."""
    if isinstance(error, FlowError):
        listed = error.details.get("errors")
        if isinstance(listed, list):
            return _by_field(listed)
        cause = error.__cause__
        return field_errors(cause) if isinstance(cause, ValidationError) else {}
    return _by_field(error.errors(include_url=False, include_context=False))


def _by_field(errors: list[Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for err in errors:
        if not isinstance(err, Mapping):
            continue
        loc = [str(part) for part in err.get("loc") or ()]
        field = loc[0] if loc else PAYLOAD_FIELD
        inner = ".".join(loc[1:])
        message = str(err.get("msg", "invalid"))
        out.setdefault(field, f"{inner}: {message}" if inner else message)
    return out


# -- posting and answering ------------------------------------------------------------------------


def post_form(request: Request, path: str, inner: str, **attrs: str) -> str:
    """A ``<form method="post">`` to dashboard ``path`` with the hidden ``csrf_token`` field;
    ``attrs`` become attributes (``data_action="cancel"`` -> ``data-action="cancel"``)."""
    extra = "".join(f' {name.replace("_", "-")}="{esc(value)}"' for name, value in attrs.items())
    token = f'<input type="hidden" name="csrf_token" value="{esc(csrf_token(request))}">'
    return f'<form method="post" action="{esc(href(request, path))}"{extra}>{token}{inner}</form>'


def error_page(request: Request, error: Denied | FlowError, *, extra: str = "") -> Response:
    """The answer to a refused action (:class:`Denied`: its status) or a failed one (a
    FlowError: the status of ``STATUS_BY_CODE``): ``[data-testid=action-error]`` with the code
    and the message, then ``extra`` (e.g. the form again, with its field errors)."""
    if isinstance(error, Denied):
        status, code = error.status_code, error.code
    else:
        status, code = status_for(error), error.error_code
    alert = (
        f'<div class="error" role="alert" data-testid="action-error" data-code="{esc(code)}">'
        f"<code>{esc(code)}</code> {esc(error.message)}</div>"
    )
    body = f"<h1>Action refused</h1>{alert}{extra}"
    return page(request, title="Action refused", body=body, status_code=status)
