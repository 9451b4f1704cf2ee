"""Logs as an operator reads them: JSON lines with the request id on every record of a request,
one access record per request by route template, and no password, token or key anywhere."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from fastapi import FastAPI

from taskapi.kit.config import Settings
from taskapi.kit.errors import ServiceUnavailable
from taskapi.kit.logs import configure_logging
from taskapi.kit.outbound import outbound_client, post_bounded
from tests.conftest import TEST_SECRET, MakeUser, UserHandle, register_and_login
from tests.deploy.test_cli_and_socket import cli_env, run_cli
from tests.refresh_helpers import past_the_grace
from tests.webhook_receiver import Receiver, free_port, serving

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class Captured:
    """What the service's own log handler wrote, as text and as parsed records."""

    def __init__(self, stream: io.StringIO) -> None:
        self.stream = stream

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]

    def for_request(self, request_id: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("request_id") == request_id]

    def service_text(self) -> str:
        """The service's records only: the test's own HTTP client (httpx) logs the URLs it got."""
        return "\n".join(json.dumps(r) for r in self.records() if r["logger"] != "httpx")

    def access(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["logger"] == "taskapi.access"]


@pytest.fixture
def json_logs(settings: Settings) -> Iterator[Captured]:
    """configure_logging as `taskapi serve` runs it (JSON, DEBUG), writing to a buffer."""
    yield from _configured(settings.model_copy(update={"log_format": "json", "log_level": "DEBUG"}))


def _configured(settings: Settings) -> Iterator[Captured]:
    root = logging.getLogger()
    level = root.level
    before = list(root.handlers)
    stream = io.StringIO()
    configure_logging(settings, stream=stream)
    try:
        yield Captured(stream)
    finally:
        for handler in root.handlers:
            if handler not in before:
                root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture
def test_routes(app: FastAPI) -> None:
    """Two failing routes on the app for one test (conftest's `app` fixture puts the app's own
    routes back afterwards: the app is built once per worker and shared)."""
    test_logger = logging.getLogger("taskapi.test")

    async def explode() -> None:
        test_logger.warning("about to fail")
        raise RuntimeError("boom")

    async def unavailable() -> None:
        raise ServiceUnavailable()

    app.add_api_route("/test/explode", explode)
    app.add_api_route("/test/unavailable", unavailable)


# --- the records ----------------------------------------------------------------------------------


async def test_access_record_has_the_fields_and_the_route_template(
    client: httpx.AsyncClient, alice: UserHandle, json_logs: Captured
) -> None:
    created = await client.post("/api/v1/tasks", json={"title": "logged"}, headers=alice.headers)
    task_id = created.json()["id"]
    json_logs.stream.truncate(0)
    json_logs.stream.seek(0)

    response = await client.get(f"/api/v1/tasks/{task_id}", headers=alice.headers)
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]

    (record,) = json_logs.access()
    assert record["request_id"] == request_id
    assert record["level"] == "INFO"
    assert RFC3339_UTC.match(record["timestamp"]), record["timestamp"]
    assert record["method"] == "GET"
    assert record["route"] == "/api/v1/tasks/{task_id}"
    assert record["status"] == 200
    assert isinstance(record["duration_ms"], float)
    assert record["duration_ms"] >= 0
    assert record["duration_ms"] == round(record["duration_ms"], 1)
    assert record["user_id"] == alice.id
    assert record["message"] == "GET /api/v1/tasks/{task_id} 200"
    # The id in the URL is not in the log: routes, not paths.
    assert f"/api/v1/tasks/{task_id}" not in json_logs.service_text()


async def test_unmatched_paths_are_logged_without_the_path(
    client: httpx.AsyncClient, json_logs: Captured
) -> None:
    secretish = f"/api/v1/reset/{uuid.uuid4().hex}"
    response = await client.get(secretish)
    assert response.status_code == 404

    (record,) = json_logs.access()
    assert record["route"] == "unmatched"
    assert record["status"] == 404
    assert record["user_id"] is None
    assert secretish not in json_logs.service_text()


async def test_every_operation_is_logged_under_its_documented_path(
    app: FastAPI, client: httpx.AsyncClient, json_logs: Captured
) -> None:
    """Routes come from routers included under /api/v1, whose own paths lack that prefix: the
    access log (and the metrics, labelled the same way) must still name every operation by the
    path the OpenAPI document gives it. Sent without a token or body, so nothing is changed."""
    documented = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }
    for method, path in sorted(documented):
        response = await client.request(method, re.sub(r"\{[^}/]+\}", "1", path))
        assert response.status_code != 404, (method, path)

    logged = {(record["method"], record["route"]) for record in json_logs.access()}
    assert logged == documented


@pytest.mark.usefixtures("test_routes")
async def test_every_record_of_a_request_carries_its_request_id(
    client: httpx.AsyncClient, json_logs: Captured
) -> None:
    failed = await client.get("/test/explode", headers={"X-Request-ID": "trace-me-500"})
    assert failed.status_code == 500
    assert failed.json()["request_id"] == "trace-me-500"
    records = json_logs.for_request("trace-me-500")
    by_logger = {r["logger"]: r for r in records}
    # The handler's own warning, the unhandled error with its traceback, the access record.
    assert by_logger["taskapi.test"]["message"] == "about to fail"
    assert by_logger["taskapi.test"]["level"] == "WARNING"
    assert by_logger["taskapi.request"]["level"] == "ERROR"
    assert "RuntimeError: boom" in by_logger["taskapi.request"]["exception"]
    assert by_logger["taskapi.access"]["status"] == 500
    assert by_logger["taskapi.access"]["route"] == "/test/explode"
    # Nothing the service logged lacks it (httpx is the test's client, outside the request).
    service = [r for r in json_logs.records() if r["logger"] != "httpx"]
    assert len(service) == len(records) >= 3
    assert all(r.get("request_id") == "trace-me-500" for r in service)

    unavailable = await client.get("/test/unavailable")
    assert unavailable.status_code == 503
    request_id = unavailable.headers["x-request-id"]
    levels = {(r["logger"], r["level"]) for r in json_logs.for_request(request_id)}
    assert ("taskapi.errors", "ERROR") in levels
    assert ("taskapi.access", "INFO") in levels

    # Outside a request there is no request id at all (not a stale one).
    logging.getLogger("taskapi.test").info("between requests")
    last = json_logs.records()[-1]
    assert last["message"] == "between requests"
    assert "request_id" not in last


async def test_text_format_for_people(
    settings: Settings, client: httpx.AsyncClient, alice: UserHandle
) -> None:
    text_settings = settings.model_copy(update={"log_format": "text", "log_level": "INFO"})
    for captured in _configured(text_settings):
        response = await client.get("/api/v1/auth/me", headers=alice.headers)
        request_id = response.headers["x-request-id"]
        (line,) = [x for x in captured.text.splitlines() if " taskapi.access " in x]
        assert f"[{request_id}] GET /api/v1/auth/me 200" in line
        assert "route=/api/v1/auth/me" in line
        assert f"user_id={alice.id}" in line
        assert line.split(" ")[0].endswith("Z")
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)


# --- secrets --------------------------------------------------------------------------------------


async def test_no_password_token_or_key_is_ever_logged(
    app: FastAPI,
    client: httpx.AsyncClient,
    make_user: MakeUser,
    json_logs: Captured,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # Through the API: registering and logging in are among what must not log secrets.
    user = await register_and_login(client, password="first password 123")
    secrets: set[str] = {user.password, user.access_token, user.refresh_token, TEST_SECRET}

    form = await client.post(
        "/api/v1/auth/token", data={"username": user.username, "password": user.password}
    )
    assert form.status_code == 200
    secrets |= {form.json()["access_token"], form.json()["refresh_token"]}

    wrong = await client.post(
        "/api/v1/auth/login", json={"username": user.username, "password": "not my password 1"}
    )
    assert wrong.status_code == 401
    secrets.add("not my password 1")

    refreshed = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": user.refresh_token}
    )
    assert refreshed.status_code == 200
    new_pair = refreshed.json()
    secrets |= {new_pair["access_token"], new_pair["refresh_token"]}
    # The rotated token again within the grace: another pair of the login.
    racing = await client.post("/api/v1/auth/refresh", json={"refresh_token": user.refresh_token})
    assert racing.status_code == 200
    secrets |= {racing.json()["access_token"], racing.json()["refresh_token"]}
    # Reuse of the rotated token after the grace: revokes the login, logs nothing secret either.
    await past_the_grace(app, user.id)
    reused = await client.post("/api/v1/auth/refresh", json={"refresh_token": user.refresh_token})
    assert reused.status_code == 401

    login = await client.post(
        "/api/v1/auth/login", json={"username": user.username, "password": user.password}
    )
    fresh = login.json()
    secrets |= {fresh["access_token"], fresh["refresh_token"]}
    headers = {"Authorization": f"Bearer {fresh['access_token']}"}

    changed = await client.patch(
        "/api/v1/users/me",
        json={"password": "second password 456", "current_password": user.password},
        headers=headers,
    )
    assert changed.status_code == 200, changed.text
    secrets.add("second password 456")
    bad_change = await client.patch(
        "/api/v1/users/me",
        json={"password": "third password 789", "current_password": "wrong current pw"},
        headers=headers,
    )
    assert bad_change.status_code in (401, 403)
    secrets |= {"third password 789", "wrong current pw"}

    relogin = await client.post(
        "/api/v1/auth/login", json={"username": user.username, "password": "second password 456"}
    )
    last = relogin.json()
    secrets |= {last["access_token"], last["refresh_token"]}
    last_headers = {"Authorization": f"Bearer {last['access_token']}"}
    out = await client.post(
        "/api/v1/auth/logout", json={"refresh_token": last["refresh_token"]}, headers=last_headers
    )
    assert out.status_code == 204

    forged_key = "an attacker's key that is long enough 0123456789"
    forged = jwt.encode(
        {"sub": str(user.id), "type": "access", "exp": 4_000_000_000}, forged_key, "HS256"
    )
    none_alg = jwt.encode({"sub": str(user.id), "type": "access"}, None, "none")
    secrets |= {forged, none_alg, forged_key}
    # Forged, unsigned, garbage, ended by the password change, ended by logout: all refused.
    ended = (form.json()["access_token"], last["access_token"])
    for token in (forged, none_alg, "not-a-jwt-at-all", *ended):
        rejected = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert rejected.status_code == 401
    secrets.add("not-a-jwt-at-all")
    forged_refresh = await client.post("/api/v1/auth/refresh", json={"refresh_token": forged})
    assert forged_refresh.status_code == 401

    # The logs were written (the check below is not vacuous): one access record per request.
    routes = [r["route"] for r in json_logs.access()]
    assert routes.count("/api/v1/auth/login") == 4
    assert "/api/v1/auth/refresh" in routes
    assert "/api/v1/users/me" in routes
    assert caplog.records

    everything = "\n".join(
        [
            json_logs.text,
            caplog.text,
            *(repr(vars(record)) for record in caplog.records),
            *(record.getMessage() for record in caplog.records),
        ]
    )
    for secret in secrets:
        assert secret not in everything, f"{secret[:12]}... was logged"
    assert "Bearer " not in everything
    assert "authorization" not in everything.lower()


def test_the_formatter_redacts_secrets_passed_by_mistake(settings: Settings) -> None:
    access_token = jwt.encode({"sub": "1"}, "k" * 40, "HS256")
    for captured in _configured(settings.model_copy(update={"log_format": "json"})):
        logging.getLogger("taskapi.test").warning(
            "login for %s with header Bearer %s, key %s",
            "alice",
            access_token,
            TEST_SECRET,
            extra={
                "password": "hunter2 hunter2",
                "headers": {"Authorization": "Basic YWxpY2U6aHVudGVy", "Accept": "text/html"},
                "refresh_token": "opaque-refresh-value",
                "client_secret": "s3cr3t-client",
                "note": f"token is {access_token}",
                "attempt": 3,
            },
        )
        (record,) = captured.records()
        assert record["password"] == "[redacted]"
        assert record["refresh_token"] == "[redacted]"
        assert record["client_secret"] == "[redacted]"
        assert record["headers"] == {"Authorization": "[redacted]", "Accept": "text/html"}
        assert record["note"] == "token is [redacted]"
        assert record["attempt"] == 3
        assert record["message"].startswith("login for alice with header [redacted]")
        for leaked in (
            access_token,
            TEST_SECRET,
            "hunter2",
            "YWxpY2U6aHVudGVy",
            "opaque-refresh-value",
            "s3cr3t-client",
            "Bearer",
        ):
            assert leaked not in captured.text


async def test_an_unknown_log_level_is_one_sentence(tmp_path: Any) -> None:
    result = await run_cli("migrate", env=cli_env(LOG_LEVEL="chatty"), cwd=tmp_path)
    assert result.returncode == 2
    message = result.stderr.strip()
    assert "\n" not in message
    assert "LOG_LEVEL" in message
    assert "chatty" in message
    assert "Traceback" not in result.stderr


async def test_outbound_requests_stay_out_of_the_log_at_info(settings: Settings) -> None:
    """httpx logs each request with its URL at INFO: a webhook's URL may carry the receiver's
    token, and the deliveries table already records every attempt."""
    info = settings.model_copy(update={"log_format": "json", "log_level": "INFO"})
    for captured in _configured(info):
        async with (
            serving(Receiver(free_port())) as receiver,
            outbound_client(allow_private_networks=True, timeout=2) as client,
        ):
            url = f"{receiver.url}?token=receiver-s3cr3t"
            result = await post_bounded(client, url, content=b"{}", headers={})
            assert result.status == 200
        logging.getLogger("taskapi.test").info("after the delivery")
        assert "receiver-s3cr3t" not in captured.text
        assert [r["message"] for r in captured.records()] == ["after the delivery"]
