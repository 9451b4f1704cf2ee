"""The /webhooks endpoints (API.md part 2, "Webhooks"): subscriptions, secrets, the delivery log
and who may touch them. Delivery itself: test_webhook_delivery.py; the address rules:
tests/fuzz/test_request_forgery.py."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import text

from taskapi.kit.services import services_of
from taskapi.models import User
from taskapi.webhooks import service
from taskapi.webhooks.schemas import WebhookCreate
from tests.conftest import MAIN_DB, UserHandle, make_settings, register_and_login
from tests.task_helpers import assert_problem

WEBHOOKS = "/api/v1/webhooks"
URL = "https://hooks.example.com/taskapi"


async def subscribe(client: httpx.AsyncClient, user: UserHandle, **body: Any) -> dict[str, Any]:
    response = await client.post(
        WEBHOOKS, json={"url": URL, "events": ["task.*"], **body}, headers=user.headers
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_create_shows_the_secret_once_then_never(client: httpx.AsyncClient) -> None:
    alice = await register_and_login(client)
    response = await client.post(
        WEBHOOKS,
        json={"url": URL, "events": ["task.created", "project.*"], "description": "CI"},
        headers=alice.headers,
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["secret"].startswith("whsec_")
    assert len(created["secret"]) > 40
    assert response.headers["location"] == f"{WEBHOOKS}/{created['id']}"
    assert {k: v for k, v in created.items() if k not in ("id", "created_at", "secret")} == {
        "url": URL,
        "events": ["project.*", "task.created"],
        "project_id": None,
        "description": "CI",
        "active": True,
        "last_delivery_at": None,
        "disabled_reason": None,
    }
    shown = await client.get(f"{WEBHOOKS}/{created['id']}", headers=alice.headers)
    listed = await client.get(WEBHOOKS, headers=alice.headers)
    assert shown.status_code == listed.status_code == 200
    assert "secret" not in shown.json()
    assert listed.json() == {"items": [shown.json()], "total": 1}
    assert created["secret"] not in shown.text + listed.text


async def test_the_secret_is_stored_sealed(client: httpx.AsyncClient, app: Any) -> None:
    alice = await register_and_login(client)
    created = await subscribe(client, alice)
    async with services_of(app).sessionmaker() as session:
        row = (
            await session.execute(
                text("SELECT secret_sealed FROM webhooks WHERE id = :id"), {"id": created["id"]}
            )
        ).one()
    secret_bytes = created["secret"].removeprefix("whsec_").encode()
    assert secret_bytes not in bytes(row.secret_sealed)
    assert created["secret"].encode() not in bytes(row.secret_sealed)


async def test_patch_and_delete_with_etags(client: httpx.AsyncClient) -> None:
    alice = await register_and_login(client)
    created = await subscribe(client, alice)
    url = f"{WEBHOOKS}/{created['id']}"
    etag = (await client.get(url, headers=alice.headers)).headers["etag"]
    patched = await client.patch(
        url,
        json={"events": ["*"], "description": "all", "active": False},
        headers={**alice.headers, "If-Match": etag},
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["events"], patched.json()["active"]) == (["*"], False)
    assert patched.headers["etag"] != etag
    stale = await client.patch(
        url, json={"description": "x"}, headers={**alice.headers, "If-Match": etag}
    )
    assert_problem(stale, 412, "precondition_failed")
    stale_delete = await client.delete(url, headers={**alice.headers, "If-Match": etag})
    assert_problem(stale_delete, 412, "precondition_failed")
    deleted = await client.delete(
        url, headers={**alice.headers, "If-Match": patched.headers["etag"]}
    )
    assert deleted.status_code == 204
    assert_problem(await client.get(url, headers=alice.headers), 404, "webhook_not_found")


@pytest.mark.parametrize("field", ["url", "events", "description", "active"])
async def test_patch_refuses_null(client: httpx.AsyncClient, field: str) -> None:
    alice = await register_and_login(client)
    created = await subscribe(client, alice)
    response = await client.patch(
        f"{WEBHOOKS}/{created['id']}", json={field: None}, headers=alice.headers
    )
    assert_problem(response, 422, "validation_error")


async def test_someone_else_s_webhook_is_404_everywhere(client: httpx.AsyncClient) -> None:
    alice = await register_and_login(client)
    mallory = await register_and_login(client)
    created = await subscribe(client, alice)
    url = f"{WEBHOOKS}/{created['id']}"
    for method, path in (
        ("GET", url),
        ("PATCH", url),
        ("DELETE", url),
        ("POST", f"{url}/rotate-secret"),
        ("POST", f"{url}/ping"),
        ("GET", f"{url}/deliveries"),
        ("POST", f"{url}/deliveries/1/redeliver"),
    ):
        response = await client.request(
            method,
            path,
            json={"description": "mine"} if method == "PATCH" else None,
            headers=mallory.headers,
        )
        assert_problem(response, 404, "webhook_not_found")
    assert (await client.get(WEBHOOKS, headers=mallory.headers)).json() == {
        "items": [],
        "total": 0,
    }
    assert (await client.get(url, headers=alice.headers)).json()["description"] == ""


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data", "metadata"),
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://localhost:9000/hook", "loopback"),
        ("http://0.0.0.0/", "unspecified"),
    ],
)
async def test_urls_naming_internal_addresses_are_refused(
    client: httpx.AsyncClient, url: str, reason: str
) -> None:
    alice = await register_and_login(client)
    response = await client.post(
        WEBHOOKS, json={"url": url, "events": ["*"]}, headers=alice.headers
    )
    problem = assert_problem(response, 422, "invalid_webhook_url")
    assert reason in problem["detail"]
    assert (await client.get(WEBHOOKS, headers=alice.headers)).json()["total"] == 0


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/", "https://user:pw@example.com/", "https://exa mple.com/", "example.com"],
)
async def test_urls_outside_the_schema_are_422(client: httpx.AsyncClient, url: str) -> None:
    alice = await register_and_login(client)
    response = await client.post(
        WEBHOOKS, json={"url": url, "events": ["*"]}, headers=alice.headers
    )
    assert_problem(response, 422, "validation_error")


async def test_events_must_be_known_types_or_families(client: httpx.AsyncClient) -> None:
    alice = await register_and_login(client)
    for events in ([], ["task.exploded"], ["*.created"], ["task"]):
        response = await client.post(
            WEBHOOKS, json={"url": URL, "events": events}, headers=alice.headers
        )
        assert_problem(response, 422, "validation_error")


async def test_a_project_filter_needs_membership(client: httpx.AsyncClient) -> None:
    alice = await register_and_login(client)
    bob = await register_and_login(client)
    project = await client.post("/api/v1/projects", json={"name": "p"}, headers=alice.headers)
    project_id = project.json()["id"]
    refused = await client.post(
        WEBHOOKS,
        json={"url": URL, "events": ["*"], "project_id": project_id},
        headers=bob.headers,
    )
    assert_problem(refused, 404, "project_not_found")
    created = await subscribe(client, alice, project_id=project_id)
    assert created["project_id"] == project_id


async def test_at_most_25_webhooks_each(client: httpx.AsyncClient) -> None:
    alice = await register_and_login(client)
    bob = await register_and_login(client)
    for _ in range(25):
        await subscribe(client, alice)
    response = await client.post(
        WEBHOOKS, json={"url": URL, "events": ["*"]}, headers=alice.headers
    )
    assert_problem(response, 409, "webhook_limit_reached")
    await subscribe(client, bob)  # per user


async def test_rotation_and_ping_and_the_delivery_log(client: httpx.AsyncClient) -> None:
    alice = await register_and_login(client)
    created = await subscribe(client, alice)
    url = f"{WEBHOOKS}/{created['id']}"
    rotated = await client.post(f"{url}/rotate-secret", headers=alice.headers)
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["secret"].startswith("whsec_")
    assert rotated.json()["secret"] != created["secret"]
    pings = []
    for _ in range(3):
        pinged = await client.post(f"{url}/ping", headers=alice.headers)
        assert pinged.status_code == 202, pinged.text
        pings.append(pinged.json()["delivery_id"])
    first = await client.get(f"{url}/deliveries?limit=2", headers=alice.headers)
    assert first.status_code == 200, first.text
    page = first.json()
    assert [d["id"] for d in page["items"]] == pings[:0:-1]
    assert page["items"][0] | {"id": 0, "next_attempt_at": None, "created_at": None} == {
        "id": 0,
        "event_id": None,
        "event_type": "ping",
        "status": "pending",
        "attempts": 0,
        "response_status": None,
        "duration_ms": None,
        "last_error": None,
        "next_attempt_at": None,
        "created_at": None,
    }
    rest = await client.get(
        f"{url}/deliveries?limit=2&cursor={page['next_cursor']}", headers=alice.headers
    )
    assert [d["id"] for d in rest.json()["items"]] == [pings[0]]
    assert rest.json()["next_cursor"] is None
    delivered = await client.get(f"{url}/deliveries?status=delivered", headers=alice.headers)
    assert delivered.json()["items"] == []
    redelivered = await client.post(f"{url}/deliveries/{pings[0]}/redeliver", headers=alice.headers)
    assert (redelivered.status_code, redelivered.json()) == (202, {"delivery_id": pings[0]})
    missing = await client.post(f"{url}/deliveries/999999/redeliver", headers=alice.headers)
    assert_problem(missing, 404, "delivery_not_found")


async def test_the_list_is_conditional(client: httpx.AsyncClient) -> None:
    alice = await register_and_login(client)
    await subscribe(client, alice)
    first = await client.get(WEBHOOKS, headers=alice.headers)
    again = await client.get(
        WEBHOOKS, headers={**alice.headers, "If-None-Match": first.headers["etag"]}
    )
    assert again.status_code == 304
    await subscribe(client, alice)
    changed = await client.get(
        WEBHOOKS, headers={**alice.headers, "If-None-Match": first.headers["etag"]}
    )
    assert changed.status_code == 200
    assert changed.json()["total"] == 2


@pytest.mark.parametrize(
    ("environment", "accepted"), [("production", False), ("development", True), ("test", True)]
)
async def test_plain_http_only_outside_production(
    db_session: Any, environment: str, accepted: bool
) -> None:
    settings = make_settings(MAIN_DB, environment=environment)
    user = User(username=f"u{environment}", email=f"{environment}@example.com", password_hash="x")
    db_session.add(user)
    await db_session.flush()
    data = WebhookCreate(url="http://hooks.example.com/in", events=["*"])
    if accepted:
        webhook, _ = await service.create_webhook(db_session, user, data, settings)
        assert webhook.url == data.url
    else:
        with pytest.raises(service.InvalidWebhookUrl, match="https"):
            await service.create_webhook(db_session, user, data, settings)
    https = WebhookCreate(url="https://hooks.example.com/in", events=["*"])
    assert (await service.create_webhook(db_session, user, https, settings))[0].id
