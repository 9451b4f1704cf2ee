"""Problem details, request ids, security headers, OpenAPI and CORS: what every client sees."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from taskapi.app import create_app
from taskapi.kit.config import Settings
from tests.conftest import MAIN_DB, make_settings

PROBLEM = "application/problem+json"
PROBLEM_FIELDS = {"type", "title", "status", "detail", "code", "request_id"}

# What a careless 500 would leak: exception text, SQL, a file path and a secret.
LEAKY_MESSAGE = (
    "boom: SELECT password_hash FROM users WHERE id = 1; "
    "secret_key=s3cr3t-DO-NOT-LEAK in /work/main/src/taskapi/leaky.py line 42"
)
LEAK_MARKERS = (
    "Traceback",
    "RuntimeError",
    "boom",
    "SELECT",
    "password_hash",
    "s3cr3t-DO-NOT-LEAK",
    "/work/",
    "leaky.py",
    'File "',
)


def assert_common_headers(response: httpx.Response) -> None:
    headers = response.headers
    assert headers.get("x-request-id"), "every response needs X-Request-ID"
    assert headers.get("x-content-type-options") == "nosniff"
    assert headers.get("x-frame-options") == "DENY"
    assert headers.get("cache-control") == "no-store"
    assert "server" not in headers


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body.keys() >= PROBLEM_FIELDS, body
    assert body["status"] == status
    assert body["code"] == code
    assert body["request_id"] == response.headers["x-request-id"]
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert_common_headers(response)
    return body


def _raise_leaky() -> None:
    raise RuntimeError(LEAKY_MESSAGE)


async def _boom() -> None:
    _raise_leaky()


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


@pytest.fixture
async def boom_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The real application plus one test-only route that fails with a leaky exception."""
    app = create_app(settings)
    app.add_api_route("/test-only/boom", _boom, methods=["GET", "POST"])
    async with _client(app) as client:
        yield client


# --- error shapes ------------------------------------------------------------------------------


async def test_unknown_route_is_a_404_problem(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/no-such-thing")
    body = assert_problem(response, 404, "not_found")
    assert body["type"].endswith("not_found")


async def test_wrong_method_is_a_405_problem_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.delete("/ops/health")
    assert_problem(response, 405, "method_not_allowed")
    assert "GET" in response.headers["allow"]


async def test_validation_error_lists_errors_without_echoing_passwords(
    client: httpx.AsyncClient,
) -> None:
    short_secret = "Xq7!zz"  # too short: 6 characters
    response = await client.post(
        "/api/v1/auth/register",
        json={"username": "a b", "email": "not-an-email", "password": short_secret},
    )
    body = assert_problem(response, 422, "validation_error")
    errors = body["errors"]
    assert isinstance(errors, list)
    assert errors
    for error in errors:
        assert set(error) == {"loc", "msg", "type"}
        assert isinstance(error["loc"], list)
        assert isinstance(error["msg"], str)
        assert error["msg"]
        assert isinstance(error["type"], str)
        assert error["type"]
    locs = {tuple(error["loc"]) for error in errors}
    assert ("body", "password") in locs
    assert ("body", "email") in locs
    assert ("body", "username") in locs
    assert short_secret not in response.text
    assert "not-an-email" not in response.text


async def test_overlong_password_is_not_echoed(client: httpx.AsyncClient) -> None:
    long_secret = "TopSecretPassphrase-" * 10  # 200 characters, over the 128 limit
    response = await client.post(
        "/api/v1/auth/register",
        json={"username": "valid_name", "email": "valid@example.com", "password": long_secret},
    )
    body = assert_problem(response, 422, "validation_error")
    assert [error["loc"] for error in body["errors"]] == [["body", "password"]]
    assert "TopSecretPassphrase" not in response.text


async def test_malformed_json_is_a_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/auth/login",
        content=b'{"username": "alice", "password": "hunter2-secret"',
        headers={"Content-Type": "application/json"},
    )
    assert_problem(response, 400, "malformed_json")
    assert "hunter2-secret" not in response.text


async def test_unhandled_exception_is_an_opaque_500(boom_client: httpx.AsyncClient) -> None:
    response = await boom_client.get("/test-only/boom")
    body = assert_problem(response, 500, "internal_error")
    assert set(body) == PROBLEM_FIELDS
    assert re.fullmatch(r"[0-9a-f]{32}", body["request_id"])
    for marker in LEAK_MARKERS:
        assert marker not in response.text, marker


async def test_500_keeps_a_sane_client_request_id(boom_client: httpx.AsyncClient) -> None:
    response = await boom_client.post("/test-only/boom", headers={"X-Request-ID": "trace-500.a"})
    body = assert_problem(response, 500, "internal_error")
    assert response.headers["x-request-id"] == "trace-500.a"
    assert body["request_id"] == "trace-500.a"


# --- headers on every response ------------------------------------------------------------------


async def test_success_responses_carry_the_common_headers(client: httpx.AsyncClient) -> None:
    health = await client.get("/ops/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert_common_headers(health)

    registered = await client.post(
        "/api/v1/auth/register",
        json={
            "username": "headers_user",
            "email": "headers_user@example.com",
            "password": "correct horse battery",
        },
    )
    assert registered.status_code == 201, registered.text
    assert_common_headers(registered)
    assert "password" not in registered.text


async def test_401_carries_the_common_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/auth/me")
    assert_problem(response, 401, "not_authenticated")
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_sane_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    ok = await client.get("/ops/health", headers={"X-Request-ID": "abc-123"})
    assert ok.headers["x-request-id"] == "abc-123"
    missing = await client.get("/nope", headers={"X-Request-ID": "abc-123"})
    assert missing.headers["x-request-id"] == "abc-123"
    assert missing.json()["request_id"] == "abc-123"


async def test_each_request_without_an_id_gets_a_fresh_one(client: httpx.AsyncClient) -> None:
    first = await client.get("/ops/health")
    second = await client.get("/ops/health")
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


@pytest.mark.parametrize(
    "bad_id",
    [
        pytest.param(b"x" * 200, id="too-long"),
        pytest.param(b"abc 123", id="space"),
        pytest.param("req-\u00e9t\u00e9".encode(), id="non-ascii"),
        pytest.param(b"abc\r\nSet-Cookie: session=evil", id="crlf-injection"),
        pytest.param(b"abc\nX-Injected: 1", id="lf-injection"),
        pytest.param(b"<script>alert(1)</script>", id="markup"),
        pytest.param(b"", id="empty"),
    ],
)
async def test_an_insane_request_id_is_replaced(client: httpx.AsyncClient, bad_id: bytes) -> None:
    response = await client.get("/ops/health", headers={"X-Request-ID": bad_id})
    assert response.status_code == 200
    echoed = response.headers.get_list("x-request-id")
    assert len(echoed) == 1
    assert echoed[0] != bad_id.decode("utf-8")
    assert re.fullmatch(r"[0-9a-f]{32}", echoed[0])
    assert "set-cookie" not in response.headers
    assert "x-injected" not in response.headers


async def test_an_overlong_request_id_is_replaced_in_problem_bodies(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/nope", headers={"X-Request-ID": "a" * 129})
    body = assert_problem(response, 404, "not_found")
    assert body["request_id"] != "a" * 129


# --- documentation -----------------------------------------------------------------------------


async def test_docs_and_openapi_are_served(client: httpx.AsyncClient) -> None:
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "text/html" in docs.headers["content-type"]
    assert "swagger" in docs.text.lower()
    assert_common_headers(docs)

    redoc = await client.get("/redoc")
    assert redoc.status_code == 200
    assert "text/html" in redoc.headers["content-type"]

    response = await client.get("/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    schemes = schema["components"]["securitySchemes"]
    password_flows = [
        scheme["flows"]["password"]
        for scheme in schemes.values()
        if scheme.get("type") == "oauth2" and "password" in scheme.get("flows", {})
    ]
    assert [flow["tokenUrl"] for flow in password_flows] == ["/api/v1/auth/token"]
    problem = schema["components"]["schemas"]["Problem"]
    assert {"type", "title", "status", "detail", "code", "request_id"} <= set(problem["properties"])
    # Every $ref in the schema points at something that exists.
    refs = set(re.findall(r'"\$ref":\s*"#/components/schemas/([^"]+)"', response.text))
    assert "Problem" in refs
    assert refs <= set(schema["components"]["schemas"])


# --- CORS --------------------------------------------------------------------------------------


def _preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }


async def test_cors_is_off_by_default(client: httpx.AsyncClient) -> None:
    preflight = await client.options(
        "/api/v1/auth/login", headers=_preflight("https://app.example")
    )
    assert "access-control-allow-origin" not in preflight.headers
    simple = await client.get("/ops/health", headers={"Origin": "https://app.example"})
    assert simple.status_code == 200
    assert "access-control-allow-origin" not in simple.headers


async def test_cors_allows_only_the_configured_origins() -> None:
    settings = make_settings(MAIN_DB, cors_origins=["https://app.example"])
    async with _client(create_app(settings)) as client:
        allowed = await client.options(
            "/api/v1/auth/login", headers=_preflight("https://app.example")
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in allowed.headers["access-control-allow-methods"]
        assert_common_headers(allowed)

        denied = await client.options(
            "/api/v1/auth/login", headers=_preflight("https://evil.example")
        )
        assert denied.status_code >= 400
        assert "access-control-allow-origin" not in denied.headers

        simple = await client.get("/ops/health", headers={"Origin": "https://app.example"})
        assert simple.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
