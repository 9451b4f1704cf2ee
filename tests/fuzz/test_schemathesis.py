"""Fuzzing the app against its own OpenAPI schema with schemathesis.

Every operation is called with generated requests, valid and invalid, as an authenticated user;
every response must be a non-5xx that the schema documents: status code, content type, headers
and body. Then the stateful phase chains operations along the schema's links (create a task, then
read, change and delete *that* task).

Schemathesis drives the ASGI app from its own event-loop thread, so the app cannot share the
per-test connection of `conftest.app` (asyncpg connections belong to one loop): it runs with its
own engine over a database cloned from the migrated template, dropped afterwards.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import hypothesis
import jsonschema_rs
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck
from schemathesis import checks
from schemathesis.core.failures import FailureGroup
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.schemas import BaseSchema

from taskapi.app import create_app
from taskapi.tasks.batch_schemas import DUPLICATE_TEMP_ID
from tests.conftest import admin_execute, clone_template, make_settings

IDEMPOTENCY_KEY = "Idempotency-Key"
# What a schema-valid request may still be refused for, because it depends on state the schema
# cannot describe and a fuzzer cannot know: an If-Match that is not the task's current ETag (412),
# an assignee id no user has (the contract makes that a 422, not a 404), a cursor the server did
# not issue (it is signed).
STATE_DEPENDENT_CODES = frozenset({"precondition_failed", "unknown_assignee", "invalid_cursor"})


# An upload's type is judged by its bytes (PNG, PDF, UTF-8 text...), which no schema can state.
UPLOAD = "POST /api/v1/tasks/{task_id}/files"


def _only_too_many_distinct_tags(response: schemathesis.Response) -> bool:
    """A task keeps at most 20 tags once trimmed, lower-cased and de-duplicated; the schema can
    only bound the list as sent (up to 200 items, duplicates allowed), not what is left of it
    after that normalisation, so a list of more than 20 distinct tags is schema-valid; and tags
    added to a task count with those it already has, which no schema of the request can know."""
    errors = response.json().get("errors") or []
    too_many = [e for e in errors if _about_tags(e) and _too_many_tags(e)]
    # An optional field's tags (PATCH, bulk `updates`) fail as a union: the list branch says
    # "too many" and the null branch says "not null", both located under `tags`.
    return bool(too_many) and all(
        _about_tags(e) and (_too_many_tags(e) or e.get("type") == "none_required") for e in errors
    )


def _only_duplicate_temp_ids(response: schemathesis.Response) -> bool:
    """A batch may declare each temp_id once (POST /tasks/batch): JSON Schema can require items
    to differ, not one property of some of them, so two creates naming the same temp_id are
    schema-valid and refused."""
    errors = response.json().get("errors") or []
    return bool(errors) and all(e.get("type") == DUPLICATE_TEMP_ID for e in errors)


def _about_tags(error: dict[str, Any]) -> bool:
    loc = error.get("loc", [])
    return "tags" in loc and len(loc) - loc.index("tags") <= 2


def _too_many_tags(error: dict[str, Any]) -> bool:
    return "at most 20 tags" in error.get("msg", "") or error.get("msg") == "too many tags"


def positive_data_acceptance(
    ctx: checks.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """schemathesis' own check, except for the refusals above."""
    code = problem_code(response)
    if _follows_a_null_link(case):
        return None
    if code in STATE_DEPENDENT_CODES or (
        case.operation.label == UPLOAD and code == "unsupported_media_type"
    ):
        return None
    if code == "validation_error" and (
        _only_too_many_distinct_tags(response) or _only_duplicate_temp_ids(response)
    ):
        return None
    return checks.positive_data_acceptance(ctx, response, case)


def _follows_a_null_link(case: schemathesis.Case) -> bool:
    """The stateful phase links a response's nullable id fields (a personal task's `project_id`)
    to the operations taking that id, and then sends the null as text (`/projects/None`): not
    data the schema allows (the path parameter is an integer), so its refusal is no failure."""
    return any(value is None for value in (case.path_parameters or {}).values())


def problem_code(response: schemathesis.Response) -> str | None:
    try:
        body = json.loads(response.content)
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


# Every check schemathesis has (the 405 `Allow` and unsupported-method ones included).
checks.load_all_checks()
CHECKS = [
    positive_data_acceptance if check is checks.positive_data_acceptance else check
    for check in checks.CHECKS.get_all()
]
assert positive_data_acceptance in CHECKS
assert checks.unsupported_method in CHECKS
assert checks.allow_header_conformance in CHECKS


def as_a_client_would(case: schemathesis.Case) -> None:
    """What a client does that the schema cannot say. `offset` and `cursor` exclude each other
    (GET /tasks describes it; OpenAPI has no keyword for a rule across parameters): a client
    sends one. An Idempotency-Key names one request: the fuzzer's short keys ("0") recur across
    different requests, which the API rightly refuses (422 idempotency_key_reused), so a key the
    schema allows becomes a fresh one; an invalid one is kept (it must be refused)."""
    if case.query and "offset" in case.query and "cursor" in case.query:
        del case.query["cursor"]
    key = (case.headers or {}).get(IDEMPOTENCY_KEY)
    if isinstance(key, str) and VALID_KEY.fullmatch(key):
        case.headers[IDEMPOTENCY_KEY] = uuid.uuid4().hex


VALID_KEY = re.compile(r"[!-~]{1,255}")

LIST_TASKS = "GET /api/v1/tasks"
# Values of GET /tasks's two comma-list parameters at the edges of what the server takes: the
# fuzzer rarely reaches them (a pattern's corners), so they are checked one by one as well.
LIST_PARAMETER_EDGES = {
    "tags": [
        "work",
        " Work , urgent ",
        "a,,b",
        ",",
        "\u200b",
        "a,\u200b",
        "x" * 50,
        "x" * 51,
        "İ" * 50,
        "a\x00b",
    ],
    "sort": [
        "",
        "title",
        "title,title",
        "title,-title",
        " -due_date , +id ",
        "-+title",
        "title,",
        " ",
        "name",
        "Title",
    ],
}

# Bounded for CI: the whole file stays well under 90 s on two cores, and the same examples are
# generated on every run (derandomize), so a failure reproduces.
STATELESS_SETTINGS = hypothesis.settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
STATEFUL_SETTINGS = hypothesis.settings(
    STATELESS_SETTINGS,
    max_examples=25,
    stateful_step_count=8,
)
# Attempts end as soon as enough steps ran and one chained (a link's id used): more routes mean
# fewer random sequences reach a task's own operations, so a few more attempts may be needed.
STATEFUL_ATTEMPTS = 6
STATEFUL_MIN_STEPS = 100
PASSWORD = "correct horse battery"

# Responses seen, per operation and status (`pytest -s` prints them at the end of the module).
SEEN: Counter[tuple[str, int]] = Counter()
# Endless: left out of the fuzzing (see test_every_operation_answers_as_documented).
EVENT_STREAM = "/api/v1/events/stream"


@pytest.fixture(scope="module", autouse=True)
def report_requests() -> Iterator[None]:
    yield
    statuses = Counter[int]()
    for (_operation, status), count in SEEN.items():
        statuses[status] += count
    by_status = dict(sorted(statuses.items()))
    print(f"\nschemathesis: {statuses.total()} requests, by status {by_status}")


@pytest.fixture(scope="module")
async def fuzz_database(migrated_databases: None) -> AsyncIterator[str]:
    name = f"taskapi_fuzz_{uuid.uuid4().hex[:10]}"
    await clone_template(name)
    try:
        yield name
    finally:
        await admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def fuzz_app(fuzz_database: str) -> Iterator[FastAPI]:
    # Private addresses allowed: whether a webhook URL's host is public is not something a schema
    # can state (test_request_forgery checks that policy); everything else about it is.
    application = create_app(make_settings(fuzz_database, webhook_allow_private_networks=True))
    yield application
    # Schemathesis started the app's lifespan on first use; end it before the database goes.
    shutdown_lifespans()


def register_and_login(schema: BaseSchema) -> dict[str, str]:
    """A new user, through the API; returns the bearer header."""
    username = f"fuzz_{uuid.uuid4().hex[:12]}"
    body = {"username": username, "email": f"{username}@example.com", "password": PASSWORD}
    registered = schema["/api/v1/auth/register"]["POST"].Case(body=body).call()
    assert registered.status_code == 201, registered.text
    login = {"username": username, "password": PASSWORD}
    tokens = schema["/api/v1/auth/login"]["POST"].Case(body=login).call()
    assert tokens.status_code == 200, tokens.text
    return {"Authorization": f"Bearer {tokens.json()['access_token']}"}


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_app: FastAPI) -> BaseSchema:
    served = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    # The operations below were generated at collection time from the same factory's schema.
    assert served.raw_schema == schema.raw_schema
    return served


@pytest.fixture(scope="module")
def auth_headers(fuzz_schema: BaseSchema) -> dict[str, str]:
    return register_and_login(fuzz_schema)


# Collection needs the operations before any fixture runs, so the schema is taken from an app
# built by the same factory (building it touches no database); the requests go to `fuzz_app`.
schema = schemathesis.openapi.from_dict(create_app(make_settings("unused")).openapi())


# DELETE /users/me would delete the fuzzing user and turn every later request into a 401: it is
# fuzzed on its own below, with a fresh user per example.
# GET /events/stream answers a valid request with an endless text/event-stream: schemathesis reads
# a response to its end, so one valid example would hang the run. Its answers (the stream, 401,
# 422, 429) are tested in tests/api/test_event_stream.py over a real socket.
@schema.exclude(method="DELETE", path="/api/v1/users/me").exclude(path=EVENT_STREAM).parametrize()
@hypothesis.settings(STATELESS_SETTINGS)
def test_every_operation_answers_as_documented(
    case: schemathesis.Case, fuzz_app: FastAPI, auth_headers: dict[str, str]
) -> None:
    as_a_client_would(case)
    response = case.call_and_validate(app=fuzz_app, headers=auth_headers, checks=CHECKS)
    SEEN[(case.operation.label, response.status_code)] += 1


@schema.include(method="DELETE", path="/api/v1/users/me").parametrize()
@hypothesis.settings(STATELESS_SETTINGS, max_examples=5)
def test_deleting_the_account_answers_as_documented(
    case: schemathesis.Case, fuzz_app: FastAPI, fuzz_schema: BaseSchema
) -> None:
    headers = register_and_login(fuzz_schema)
    as_a_client_would(case)
    response = case.call_and_validate(app=fuzz_app, headers=headers, checks=CHECKS)
    SEEN[(case.operation.label, response.status_code)] += 1
    if case.method != "DELETE":  # the coverage phase also tries methods the path lacks
        assert response.status_code == 405
        return
    assert response.status_code == 204
    # The account is gone: its token no longer works.
    again = case.call(app=fuzz_app, headers=headers)
    assert again.status_code == 401


def test_stateful_sequences_answer_as_documented(
    fuzz_schema: BaseSchema, auth_headers: dict[str, str]
) -> None:
    steps: Counter[tuple[str, int]] = Counter()
    failures: list[FailureGroup] = []
    base = (
        fuzz_schema.exclude(method="DELETE", path="/api/v1/users/me")
        .exclude(path=EVENT_STREAM)
        .as_state_machine()
    )

    class Machine(base):  # type: ignore[valid-type,misc]
        def before_call(self, case: schemathesis.Case) -> None:
            as_a_client_would(case)

        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"headers": auth_headers}

        def validate_response(self, response: Any, case: schemathesis.Case, **kwargs: Any) -> None:
            steps[(case.operation.label, response.status_code)] += 1
            try:
                case.validate_response(response, checks=CHECKS, headers=auth_headers)
            except FailureGroup as failure:
                failures.append(failure)
                raise

    for _attempt in range(STATEFUL_ATTEMPTS):
        # The API's state lives in a database the earlier steps changed, so Hypothesis replaying
        # a sequence may not reach the same rules again (Flaky); schemathesis' own runner then
        # starts over, and so do we. Every step that ran was checked: failures are raised below.
        with contextlib.suppress(hypothesis.errors.Flaky):
            Machine.run(settings=STATEFUL_SETTINGS)
        if failures:
            raise failures[0]
        if sum(steps.values()) >= STATEFUL_MIN_STEPS and _chained(steps):
            break
    SEEN.update(steps)
    # The links carried real ids: operations on a task created earlier in the sequence succeeded.
    assert _chained(steps), steps


def _chained(steps: Counter[tuple[str, int]]) -> set[str]:
    """The operations on a task created earlier in the sequence that succeeded."""
    return {op for (op, status) in steps if "{task_id}" in op and status < 300}


def test_list_parameters_are_exactly_what_the_schema_says(
    fuzz_app: FastAPI, auth_headers: dict[str, str]
) -> None:
    """A value of `tags` or `sort` passes the documented schema exactly when the server takes it
    (200), and each edge case list holds values of both kinds."""
    operation = schema[LIST_TASKS.split()[1]]["GET"]
    documented = {p["name"]: p["schema"] for p in operation.definition.raw["parameters"]}
    for name, examples in LIST_PARAMETER_EDGES.items():
        parameter = documented[name]
        if parameter.get("type") == "array":
            parameter = parameter["items"]
        validator = jsonschema_rs.validator_for(parameter, validate_formats=True)
        outcomes = set()
        for example in examples:
            allowed = validator.is_valid(example)
            response = operation.Case(query={name: example}).call(
                app=fuzz_app, headers=auth_headers
            )
            assert allowed == (response.status_code == 200), (name, example, response.text)
            outcomes.add(allowed)
        assert outcomes == {True, False}, name
