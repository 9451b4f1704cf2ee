"""Personal access tokens (API.md part 2): created by a login and shown once, stored as a keyed
hash, used as a bearer token within their scopes, revoked at once on every process, expiring,
kept across a password change and ended with the account; `last_used_at` kept without a write
per request."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from taskapi.auth import personal_tokens
from taskapi.kit.security import (
    PERSONAL_TOKEN_LENGTH,
    PersonalTokenHasher,
    well_formed_personal_token,
)
from taskapi.kit.services import services_of
from taskapi.models import PersonalAccessToken
from tests.api.test_token_scopes import SCOPES
from tests.conftest import StatementLog, UserHandle, register_and_login
from tests.internals.test_auth_hot_path import http, running
from tests.task_helpers import assert_problem

TOKENS = "/api/v1/tokens"
TASKS = "/api/v1/tasks"
ME = "/api/v1/users/me"
OUT_FIELDS = {"id", "name", "scopes", "created_at", "expires_at", "last_used_at"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create(
    client: httpx.AsyncClient, user: UserHandle, scopes: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    body = {"name": "nightly import", "scopes": scopes or ["tasks:read", "tasks:write"], **extra}
    response = await client.post(TOKENS, json=body, headers=user.headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    assert response.headers["location"] == f"{TOKENS}/{created['id']}"
    return created


async def test_a_token_is_shown_once_and_stored_only_as_a_keyed_hash(
    client: httpx.AsyncClient, alice: UserHandle, db_session: AsyncSession
) -> None:
    created = await create(client, alice, ["tasks:write", "tasks:read", "tasks:read"])
    assert set(created) == OUT_FIELDS | {"token"}
    token = created["token"]
    assert token.startswith("tap_")
    assert len(token) == PERSONAL_TOKEN_LENGTH
    assert well_formed_personal_token(token)
    assert created["scopes"] == ["tasks:read", "tasks:write"]  # unique, sorted
    assert created["expires_at"] is None
    assert created["last_used_at"] is None

    listed = (await client.get(TOKENS, headers=alice.headers)).json()
    assert listed["total"] == 1
    assert set(listed["items"][0]) == OUT_FIELDS  # never the token again
    stored = await db_session.scalar(select(PersonalAccessToken))
    assert stored is not None
    assert token.encode() not in stored.token_hash
    assert stored.token_hash != hashlib.sha256(token.encode()).digest()  # keyed, not plain
    assert len(stored.token_hash) == 32


async def test_tokens_are_unique_and_each_users_own(
    client: httpx.AsyncClient, alice: UserHandle, bob: UserHandle
) -> None:
    first, second = await create(client, alice), await create(client, alice)
    assert first["token"] != second["token"]
    bobs = await create(client, bob)
    mine = (await client.get(TOKENS, headers=alice.headers)).json()["items"]
    assert [item["id"] for item in mine] == [first["id"], second["id"]]
    # Bob cannot revoke (or learn of) Alice's token: 404, and it keeps working.
    response = await client.delete(f"{TOKENS}/{first['id']}", headers=bob.headers)
    assert_problem(response, 404, "token_not_found")
    assert (await client.get(TASKS, headers=bearer(first["token"]))).status_code == 200
    assert (await client.get(ME, headers=bearer(bobs["token"]))).json()["id"] == bob.id


async def test_a_token_acts_as_its_user_within_its_scopes(
    client: httpx.AsyncClient, alice: UserHandle
) -> None:
    reader = (await create(client, alice, ["tasks:read"]))["token"]
    writer = (await create(client, alice, ["tasks:write"]))["token"]
    created = await client.post(TASKS, json={"title": "from a script"}, headers=bearer(writer))
    assert created.status_code == 201, created.text
    assert created.json()["owner_id"] == alice.id
    listed = await client.get(TASKS, headers=bearer(reader))
    assert [task["title"] for task in listed.json()["items"]] == ["from a script"]

    refused = await client.post(TASKS, json={"title": "nope"}, headers=bearer(reader))
    body = assert_problem(refused, 403, "insufficient_scope")
    assert body["required_scope"] == "tasks:write"
    assert refused.headers["www-authenticate"] == (
        'Bearer realm="taskapi", error="insufficient_scope", scope="tasks:write"'
    )
    assert (await client.get(TASKS, headers=alice.headers)).json()["total"] == 1


async def test_a_token_never_manages_tokens_or_the_account(
    client: httpx.AsyncClient, alice: UserHandle
) -> None:
    created = await create(client, alice, list(SCOPES))
    headers = bearer(created["token"])
    attempts = [
        ("POST", TOKENS, {"name": "more", "scopes": ["tasks:read"]}),
        ("GET", TOKENS, None),
        ("DELETE", f"{TOKENS}/{created['id']}", None),
        ("PATCH", ME, {"email": "stolen@example.com"}),
        ("PATCH", ME, {"password": "hijacked-password", "current_password": alice.password}),
        ("DELETE", ME, None),
        ("POST", "/api/v1/auth/logout", {"refresh_token": alice.refresh_token}),
    ]
    for method, url, body in attempts:
        response = await client.request(method, url, json=body, headers=headers)
        assert_problem(response, 403, "insufficient_scope")
        assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
    me = (await client.get(ME, headers=alice.headers)).json()
    assert me["email"] == alice.email
    assert (await client.get(TOKENS, headers=alice.headers)).json()["total"] == 1
    assert (await client.get(ME, headers=headers)).status_code == 200  # still its user


async def test_malformed_unknown_and_look_alike_tokens_are_401(
    client: httpx.AsyncClient, alice: UserHandle
) -> None:
    real = (await create(client, alice))["token"]
    tampered = real[:10] + ("A" if real[10] != "A" else "B") + real[11:]  # checksum now fails
    for token in ("tap_", "tap_short", tampered, "tap_" + "x" * 38, real + "x"):
        response = await client.get(TASKS, headers=bearer(token))
        assert_problem(response, 401, "invalid_token")
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_revoking_refuses_the_very_next_request_on_every_process(
    app: FastAPI, client: httpx.AsyncClient, connection: AsyncConnection, alice: UserHandle
) -> None:
    created = await create(client, alice)
    headers = bearer(created["token"])
    async with (
        running(services_of(app).settings, connection) as other_app,
        http(other_app) as other,
    ):
        # Both processes have recognised (and cached) the token.
        assert (await client.get(TASKS, headers=headers)).status_code == 200
        assert (await other.get(TASKS, headers=headers)).status_code == 200
        revoked = await client.delete(f"{TOKENS}/{created['id']}", headers=alice.headers)
        assert revoked.status_code == 204, revoked.text
        assert_problem(await other.get(TASKS, headers=headers), 401, "invalid_token")
        assert_problem(await client.get(TASKS, headers=headers), 401, "invalid_token")
    assert (await client.get(TOKENS, headers=alice.headers)).json()["total"] == 0
    again = await client.delete(f"{TOKENS}/{created['id']}", headers=alice.headers)
    assert_problem(again, 404, "token_not_found")


async def test_a_token_expires(
    client: httpx.AsyncClient,
    alice: UserHandle,
    db_session: AsyncSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = datetime.now(UTC)
    created = await create(client, alice, expires_in_days=30)
    expires_at = datetime.fromisoformat(created["expires_at"])
    assert before + timedelta(days=30) <= expires_at <= datetime.now(UTC) + timedelta(days=30)
    headers = bearer(created["token"])
    assert (await client.get(TASKS, headers=headers)).status_code == 200  # recognised, cached
    # 30 days later, the process that knows the token refuses it.
    later = datetime.now(UTC) + timedelta(days=30, seconds=1)
    monkeypatch.setattr(personal_tokens, "utcnow", lambda: later)
    assert_problem(await client.get(TASKS, headers=headers), 401, "token_expired")
    monkeypatch.undo()

    # A token first seen after its expiry (here: moved into the past) is refused as well.
    other = await create(client, alice, expires_in_days=1)
    await db_session.execute(
        update(PersonalAccessToken)
        .where(PersonalAccessToken.id == other["id"])
        .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    )
    await db_session.flush()
    assert_problem(await client.get(TASKS, headers=bearer(other["token"])), 401, "token_expired")
    # Listing shows them still, with their expiry, until revoked.
    assert (await client.get(TOKENS, headers=alice.headers)).json()["total"] == 2


async def test_bad_token_requests_are_422(client: httpx.AsyncClient, alice: UserHandle) -> None:
    bad = [
        {"name": "x", "scopes": []},
        {"name": "x", "scopes": ["tasks:admin"]},
        {"name": "   ", "scopes": ["tasks:read"]},
        {"name": "x" * 101, "scopes": ["tasks:read"]},
        {"name": "x", "scopes": ["tasks:read"], "expires_in_days": 0},
        {"name": "x", "scopes": ["tasks:read"], "expires_in_day": 5},
        {"scopes": ["tasks:read"]},
    ]
    for body in bad:
        response = await client.post(TOKENS, json=body, headers=alice.headers)
        assert_problem(response, 422)
    assert (await client.get(TOKENS, headers=alice.headers)).json()["total"] == 0


async def test_a_password_change_keeps_tokens_and_deleting_the_account_ends_them(
    client: httpx.AsyncClient, alice: UserHandle
) -> None:
    token = (await create(client, alice))["token"]
    assert (await client.get(TASKS, headers=bearer(token))).status_code == 200
    changed = await client.patch(
        ME,
        json={"password": "a-brand-new-password", "current_password": alice.password},
        headers=alice.headers,
    )
    assert changed.status_code == 200, changed.text
    assert (await client.get(TASKS, headers=bearer(token))).status_code == 200
    deleted = await client.delete(ME, headers=alice.headers)
    assert deleted.status_code == 204, deleted.text
    assert_problem(await client.get(TASKS, headers=bearer(token)), 401, "invalid_token")


async def test_idempotency_keys_of_a_token_are_its_users(
    client: httpx.AsyncClient, alice: UserHandle, bob: UserHandle
) -> None:
    token = (await create(client, alice))["token"]
    key = {"Idempotency-Key": "import-2026-12-06"}
    body = {"title": "once"}
    first = await client.post(TASKS, json=body, headers=bearer(token) | key)
    again = await client.post(TASKS, json=body, headers=alice.headers | key)  # same user
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    bobs = await client.post(TASKS, json=body, headers=bob.headers | key)  # another user
    assert "idempotent-replayed" not in bobs.headers
    assert (await client.get(TASKS, headers=alice.headers)).json()["total"] == 1


async def test_last_used_is_batched_not_written_per_request(
    client: httpx.AsyncClient, alice: UserHandle, sql_log: StatementLog
) -> None:
    created = await create(client, alice)
    headers = bearer(created["token"])
    sql_log.clear()
    for _ in range(20):
        assert (await client.get(TASKS, headers=headers)).status_code == 200
    writes = [s for s in sql_log.statements if "UPDATE personal_access_tokens" in s]
    assert writes == []
    before_listing = datetime.now(UTC)
    listed = (await client.get(TOKENS, headers=alice.headers)).json()["items"][0]
    used = datetime.fromisoformat(listed["last_used_at"])
    assert used <= before_listing
    writes = [s for s in sql_log.statements if "UPDATE personal_access_tokens" in s]
    assert len(writes) == 1  # all 20 uses in one statement


async def test_concurrent_creations_never_pass_the_limit(busy_client: httpx.AsyncClient) -> None:
    user = (await register_and_login(busy_client)).headers
    body = {"name": "many", "scopes": ["tasks:read"]}
    for _ in range(45):
        assert (await busy_client.post(TOKENS, json=body, headers=user)).status_code == 201
    answers = await asyncio.gather(
        *(busy_client.post(TOKENS, json=body, headers=user) for _ in range(12))
    )
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [201] * 5 + [409] * 7
    assert all(
        answer.json()["code"] == "token_limit_reached"
        for answer in answers
        if answer.status_code == 409
    )
    assert (await busy_client.get(TOKENS, headers=user)).json()["total"] == 50


def test_the_stored_hash_is_hmac_sha256_under_a_key_from_the_secret() -> None:
    hasher = PersonalTokenHasher("s" * 64)
    key = hmac.new(b"s" * 64, b"taskapi personal access token", hashlib.sha256).digest()
    token = "tap_example"
    assert hasher.digest(token) == hmac.new(key, token.encode(), hashlib.sha256).digest()
    assert PersonalTokenHasher("t" * 64).digest(token) != hasher.digest(token)
