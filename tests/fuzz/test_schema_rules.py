"""The OpenAPI document states the rules the server enforces, exactly: for generated text, the
schema's pattern (read by a JSON Schema validator) accepts what the server's validators accept
and nothing else; and the document has the shape tools rely on."""

from __future__ import annotations

import json
import re
import unicodedata
from datetime import UTC, date, datetime
from typing import Any

import httpx
import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from taskapi.app import create_app
from taskapi.auth.schemas import EMAIL_PATTERN, Email, FullName
from taskapi.kit.formats import IsoDate, IsoDateTimeUtcDefault
from taskapi.tasks.schemas import TAG_FORBIDDEN, TAG_PATTERN, TITLE_PATTERN, Title, normalize_tag
from tests.conftest import UserHandle, make_settings
from tests.task_helpers import TASKS, assert_problem

# Characters the rules are about, drawn often; any other character, drawn sometimes.
INTERESTING = (
    " \t\n\x0b\x0c\r\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u200a\u2028\u2029\u202f\u205f\u3000"
    "\ufeff\u200b\u00ad\x00\x01\x7f,aZé\u0130\U0001f600\ue000\U000e0001\U000c56e8"
)
TEXT = st.text(
    alphabet=st.one_of(st.sampled_from(INTERESTING), st.characters(exclude_categories=["Cs"])),
    max_size=260,
)
EXAMPLES = settings(max_examples=400, deadline=None)


def matches(pattern: str, value: str) -> bool:
    return bool(jsonschema_rs.validator_for({"type": "string", "pattern": pattern}).is_valid(value))


def accepted(adapter: TypeAdapter[Any], value: Any) -> bool:
    try:
        adapter.validate_python(value)
    except ValidationError:
        return False
    return True


def long_padded(core: str) -> str:
    return " \t" * 10 + core + "\u3000\n" * 10


def test_tag_forbidden_is_unicode_controls_and_format_characters() -> None:
    # Checked with Python's engine for every code point (the server's), with the schema's for a
    # sample of each range's ends (the same class, read as ECMA-262).
    forbidden = re.compile(f"[{TAG_FORBIDDEN}]")
    code_points = [chr(cp) for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF]
    controls = {ch for ch in code_points if unicodedata.category(ch) in {"Cc", "Cf"}}
    assert {ch for ch in code_points if forbidden.match(ch)} == {",", *controls}
    for ch in ",\x00\x1f\x7f\x9f\u00ad\u200b\ufeff\U000e0001\U000e007f":
        assert not matches(f"^[^{TAG_FORBIDDEN}]$", ch), repr(ch)
    for ch in " a\u00e9\u0130\U0001f600\U000c56e8\ue000\U0010fffd":
        assert matches(f"^[^{TAG_FORBIDDEN}]$", ch), repr(ch)


@EXAMPLES
@given(TEXT)
def test_the_title_pattern_is_the_title_rule(value: str) -> None:
    assert matches(TITLE_PATTERN, value) == accepted(TypeAdapter(Title), value), repr(value)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("x", True),
        ("   ", False),
        (long_padded("t" * 200), True),
        ("t" * 201, False),
        ("a\0", False),
    ],
)
def test_the_title_pattern_at_its_edges(value: str, ok: bool) -> None:
    assert matches(TITLE_PATTERN, value) is ok
    assert accepted(TypeAdapter(Title), value) is ok


def _tag_ok(value: str) -> bool:
    try:
        normalize_tag(value)
    except ValueError:
        return False
    return True


@EXAMPLES
@given(TEXT)
def test_the_tag_pattern_is_the_tag_rule(value: str) -> None:
    assert matches(TAG_PATTERN, value) == _tag_ok(value), repr(value)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (" Work ", True),
        ("a,b", False),
        ("\u0130" * 50, True),  # lower-cases to 100 characters: measured before
        (long_padded("t" * 50), True),
        ("t" * 51, False),
        ("new\U000c56e8emoji", True),  # unassigned here, maybe assigned by a newer Unicode
        ("zero\u200bwidth", False),
        ("\x1cpadded\x1f", True),  # str.strip() takes the separators off the ends...
        ("in\x1cside", False),  # ...but not from inside
    ],
)
def test_the_tag_pattern_at_its_edges(value: str, ok: bool) -> None:
    assert matches(TAG_PATTERN, value) is ok
    assert _tag_ok(value) is ok


@EXAMPLES
@given(st.one_of(TEXT, st.none()))
def test_the_full_name_schema_is_the_full_name_rule(value: str | None) -> None:
    schema = _document()["components"]["schemas"]["UserUpdate"]["properties"]["full_name"]
    valid = jsonschema_rs.validator_for(schema).is_valid(value)
    assert valid == accepted(TypeAdapter(FullName | None), value), repr(value)


ASCII_EMAILS = st.one_of(
    st.emails(),
    st.from_regex(EMAIL_PATTERN, fullmatch=True),
    st.text(alphabet="ab0-._+@" + "TESTtestARPA", max_size=30),
)


@settings(EXAMPLES, max_examples=100)  # st.emails() is slow to draw
@given(ASCII_EMAILS)
def test_the_email_pattern_is_the_email_rule_for_ascii_addresses(value: str) -> None:
    assert matches(EMAIL_PATTERN, value) == accepted(TypeAdapter(Email), value), repr(value)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("user@example.com", True),
        ("w@y", False),
        ("user@host.test", False),
        ("user@sub.LOCALHOST", False),
        ("user@example.c0m", True),
        ("user@example.42", False),
        (f"{'u' * 100}@example.com", True),  # no limit of its own before the @...
        (f"{'u' * 200}@{'d' * 50}.com", False),  # ...but 254 characters in all
    ],
)
def test_the_email_pattern_at_its_edges(value: str, ok: bool) -> None:
    assert matches(EMAIL_PATTERN, value) is ok
    assert accepted(TypeAdapter(Email), value) is ok


@pytest.mark.parametrize("value", ["2026-11-21", date(2026, 11, 21)])
def test_a_date_is_written_yyyy_mm_dd(value: Any) -> None:
    assert TypeAdapter(IsoDate).validate_python(value) == date(2026, 11, 21)


@pytest.mark.parametrize(
    "value", ["0", 0, 1764547200, "1764547200", "2026-11-21T00:00:00", "2026-02-30", "21.11.2026"]
)
def test_anything_else_is_not_a_date(value: Any) -> None:
    assert not accepted(TypeAdapter(IsoDate), value)


@pytest.mark.parametrize("value", ["0.5", 0.5, 1764547200, "1764547200", " 12 "])
def test_a_unix_time_is_not_a_timestamp(value: Any) -> None:
    assert not accepted(TypeAdapter(IsoDateTimeUtcDefault), value)


@pytest.mark.parametrize(
    ("value", "utc"),
    [
        ("2026-11-21T10:00:00Z", datetime(2026, 11, 21, 10, tzinfo=UTC)),
        ("2026-11-21T11:00:00+01:00", datetime(2026, 11, 21, 10, tzinfo=UTC)),
    ],
)
def test_a_timestamp_with_an_offset_is_read_as_written(value: str, utc: datetime) -> None:
    assert TypeAdapter(IsoDateTimeUtcDefault).validate_python(value) == utc


# --- the document ---------------------------------------------------------------------------------

_CACHE: dict[str, Any] = {}


def _document() -> dict[str, Any]:
    if "document" not in _CACHE:
        _CACHE["document"] = create_app(make_settings("unused")).openapi()
    return _CACHE["document"]


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in _document()["paths"].items()
        for method, operation in item.items()
    ]


def test_operation_ids_are_the_endpoint_names() -> None:
    ids = {(method.upper(), path): op["operationId"] for path, method, op in _operations()}
    assert len(set(ids.values())) == len(ids)
    assert ids[("GET", "/api/v1/tasks")] == "list_tasks"
    assert ids[("POST", "/api/v1/tasks")] == "create_task"
    assert ids[("GET", "/api/v1/tasks/{task_id}")] == "get_task"
    assert ids[("PATCH", "/api/v1/tasks/{task_id}")] == "update_task"
    assert ids[("GET", "/api/v1/files/{file_id}")] == "download_file"
    assert all(name.isidentifier() and name.islower() for name in ids.values())


def test_public_operations_say_they_need_no_credentials() -> None:
    public = {(m.upper(), p) for p, m, op in _operations() if op["security"] == []}
    assert public == {
        ("POST", "/api/v1/auth/register"),
        ("POST", "/api/v1/auth/login"),
        ("POST", "/api/v1/auth/token"),
        ("POST", "/api/v1/auth/refresh"),
        ("GET", "/ops/health"),
        ("GET", "/ops/ready"),
        ("GET", "/ops/metrics"),
    }
    assert _document()["servers"] == [{"url": "/", "description": ANY_TEXT}]


class _AnyText(str):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and bool(other)

    __hash__ = str.__hash__


ANY_TEXT = _AnyText()


def test_integer_bounds_are_integers() -> None:
    text = json.dumps(_document())
    assert "9.223372036854776e+18" not in text
    assert "9223372036854775807" in text
    task_create = _document()["components"]["schemas"]["TaskCreate"]["properties"]
    assert task_create["assignee_id"]["anyOf"][0] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 2**63 - 1,
    }


def test_null_is_documented_only_where_it_is_accepted() -> None:
    patch = _document()["components"]["schemas"]["TaskPatch"]["properties"]
    for name in ("title", "status", "completed", "priority", "tags"):
        assert "null" not in json.dumps(patch[name]), name
    for name in ("description", "due_date", "assignee_id"):
        assert {"type": "null"} in patch[name]["anyOf"], name
    email = _document()["components"]["schemas"]["UserUpdate"]["properties"]["email"]
    assert "anyOf" not in email
    for path, method, operation in _operations():
        for parameter in operation.get("parameters", []):
            assert "null" not in json.dumps(parameter.get("schema", {})), (method, path, parameter)


def test_a_download_is_documented_as_bytes() -> None:
    content = _document()["paths"]["/api/v1/files/{file_id}"]["get"]["responses"]["200"]["content"]
    binary = {"schema": {"type": "string", "format": "binary"}}
    assert next(iter(content.items())) == ("application/octet-stream", binary)
    assert content["*/*"] == binary


# --- bodies hold JSON's own types, as the schema says ---------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"title": "x", "assignee_id": "1"},
        {"title": "x", "assignee_id": True},
        {"title": "x", "completed": 0},
        {"title": "x", "completed": "true"},
        {"title": "x", "due_date": 0},
        {"title": "x", "due_date": "2030-01-01T00:00:00"},
    ],
)
async def test_a_body_value_of_another_json_type_is_refused(
    client: httpx.AsyncClient, alice: UserHandle, body: dict[str, Any]
) -> None:
    response = await client.post(TASKS, json=body, headers=alice.headers)
    problem = assert_problem(response, 422, "validation_error")
    assert problem["errors"][0]["loc"][:2] == ["body", next(k for k in body if k != "title")]


async def test_a_whole_number_written_as_a_float_is_an_integer(
    client: httpx.AsyncClient, alice: UserHandle
) -> None:
    body = {"title": "x", "assignee_id": float(alice.id), "completed": True}
    response = await client.post(TASKS, json=body, headers=alice.headers)
    assert response.status_code == 201, response.text
    assert (response.json()["assignee_id"], response.json()["status"]) == (alice.id, "done")
    bulk = await client.post(
        f"{TASKS}/bulk-status",
        json={"task_ids": ["1"], "target_status": "todo"},
        headers=alice.headers,
    )
    assert_problem(bulk, 422, "validation_error")
