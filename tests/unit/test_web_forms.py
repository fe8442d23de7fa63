"""iterflow.contrib.web.forms: HTML inputs generated from pydantic models, the payload parsed
back from a submitted form, and field errors from validation failures."""

from __future__ import annotations

import enum
import html
import re
from datetime import datetime
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field, ValidationError
from starlette.datastructures import FormData

from iterflow.contrib.web.forms import field_errors, form_model, model_form, parse_form
from iterflow.core.errors import InputInvalid


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Address(BaseModel):
    city: str


class Everything(BaseModel):
    name: str
    count: int
    ratio: float = 0.5
    urgent: bool = False
    maybe: bool | None = None
    color: Color
    level: Level = Level.LOW
    mode: Literal["fast", "slow"] = "fast"
    note: str | None = None
    when: datetime | None = None
    address: Address | None = None
    items: list[int] = Field(default_factory=list)
    aliased: str = Field(default="x", alias="other-name")


def inputs_of(markup: str) -> dict[str, str]:
    """``name -> tag`` of every input, select and textarea."""
    found = re.findall(r'<(input|select|textarea)[^>]*name="([^"]+)"', markup)
    return {name: tag for tag, name in found}


def test_each_field_type_gets_its_input() -> None:
    markup = model_form(Everything)
    tags = inputs_of(markup)
    assert tags == {
        "name": "input",
        "count": "input",
        "ratio": "input",
        "urgent": "input",
        "maybe": "select",
        "color": "select",
        "level": "select",
        "mode": "select",
        "note": "input",
        "when": "input",
        "address": "textarea",
        "items": "textarea",
        "aliased": "input",
    }
    assert re.search(r'<input type="text" name="name" required', markup)
    assert re.search(r'<input type="number" step="1" name="count" required', markup)
    assert re.search(r'<input type="number" step="any" name="ratio" value="0.5"', markup)
    assert re.search(r'<input type="checkbox" name="urgent" value="true">', markup)
    assert '<option value="red">red</option>' in markup
    assert '<option value="fast" selected>fast</option>' in markup
    assert '<option value="1" selected>1</option>' in markup  # the IntEnum default
    assert "(optional)" in markup  # fields with defaults say so


def test_a_model_less_payload_is_one_json_textarea() -> None:
    markup = model_form(None)
    assert inputs_of(markup) == {"payload_json": "textarea"}
    assert form_model(dict) is None and form_model(int) is None
    assert form_model(Address) is Address


def test_parse_form_builds_a_payload_the_model_accepts() -> None:
    form = FormData(
        [
            ("name", "widget"),
            ("count", "3"),
            ("ratio", "0.25"),
            ("urgent", "true"),
            ("maybe", ""),
            ("color", "blue"),
            ("level", "2"),
            ("mode", "slow"),
            ("note", ""),
            ("when", "2026-01-02T03:04:05+00:00"),
            ("address", '{"city": "Lyon"}'),
            ("items", "[1, 2]"),
            ("aliased", "y"),
        ]
    )
    payload = parse_form(Everything, form)
    assert payload == {
        "name": "widget",
        "count": 3,
        "ratio": 0.25,
        "urgent": True,
        "maybe": None,
        "color": "blue",
        "level": 2,
        "mode": "slow",
        "note": None,
        "when": "2026-01-02T03:04:05+00:00",
        "address": {"city": "Lyon"},
        "items": [1, 2],
        "other-name": "y",
    }
    value = Everything.model_validate(payload)
    assert value.color is Color.BLUE and value.level is Level.HIGH and value.aliased == "y"


def test_empty_fields_take_their_default_or_are_reported_missing() -> None:
    payload = parse_form(Everything, FormData([("name", "w"), ("count", ""), ("color", "red")]))
    optional = dict.fromkeys(("maybe", "note", "when", "address"))
    assert payload == {"name": "w", "urgent": False, "color": "red", **optional}
    with pytest.raises(ValidationError) as caught:
        Everything.model_validate(payload)
    assert field_errors(caught.value) == {"count": "Field required"}


def test_bad_values_are_left_for_the_model_to_name() -> None:
    form = FormData([("name", "w"), ("count", "three"), ("color", "green"), ("ratio", "nan")])
    payload = parse_form(Everything, form)
    assert payload["count"] == "three" and payload["color"] == "green"
    assert payload["ratio"] == "nan"  # never a float NaN (not JSON)
    with pytest.raises(ValidationError) as caught:
        Everything.model_validate(payload)
    errors = field_errors(caught.value)
    assert set(errors) >= {"count", "color"}


def test_invalid_json_is_input_invalid_naming_the_field() -> None:
    with pytest.raises(InputInvalid) as caught:
        parse_form(Everything, FormData([("address", "{not json")]))
    assert field_errors(caught.value).keys() == {"address"}
    with pytest.raises(InputInvalid):
        parse_form(None, FormData([("payload_json", "NaN")]))  # not JSON
    assert parse_form(None, FormData([("payload_json", '{"a": [1]}')])) == {"a": [1]}
    assert parse_form(None, FormData([("payload_json", "  ")])) is None


def test_nested_errors_keep_their_path_under_the_top_level_field() -> None:
    with pytest.raises(ValidationError) as caught:
        Everything.model_validate({"name": "n", "count": 1, "color": "red", "address": {"city": 5}})
    assert field_errors(caught.value) == {"address": "city: Input should be a valid string"}


def test_submitted_values_and_errors_are_shown_escaped() -> None:
    hostile = '"><script>alert(1)</script>'
    markup = model_form(
        Everything,
        values={"name": hostile, "address": hostile, "color": hostile},
        errors={"name": f"bad {hostile}", "other-name": "by alias"},
    )
    assert "<script>" not in markup
    assert f'value="{html.escape(hostile, quote=True)}"' in markup
    assert re.search(r'data-field-error="name">bad &quot;&gt;&lt;script&gt;', markup)
    assert 'data-field-error="aliased">by alias' in markup  # pydantic reports aliases


def test_model_form_escapes_hostile_defaults_and_descriptions() -> None:
    class Hostile(BaseModel):
        text: str = Field(default="</textarea><b>x</b>", description="<i>help</i>")
        data: dict[str, Any] = Field(default_factory=lambda: {"k": "</textarea>"})

    markup = model_form(Hostile)
    assert "<b>" not in markup and "<i>" not in markup
    assert "&lt;/textarea&gt;&lt;b&gt;x&lt;/b&gt;" in markup
