"""Idempotency-Key on POST: replays, conflicts, scopes, release on failure, expiry, concurrency."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from taskapi.jobs.registry import JobContext
from taskapi.kit.errors import ServiceUnavailable
from taskapi.kit.idempotency import expire_keys, store
from taskapi.kit.services import services_of
from taskapi.models import Task
from taskapi.storage import STORAGE
from taskapi.tasks import service
from taskapi.wiring import expire_idempotency_keys
from tests.conftest import UserHandle, register_and_login

TASKS = "/api/v1/tasks"
REGISTER = "/api/v1/auth/register"
LOGIN = "/api/v1/auth/login"


def keyed(user: UserHandle | None = None, key: str | None = None) -> dict[str, str]:
    headers = dict(user.headers) if user else {}
    headers["Idempotency-Key"] = key or uuid.uuid4().hex
    return headers


async def task_count(client: httpx.AsyncClient, user: UserHandle) -> int:
    response = await client.get(TASKS, headers=user.headers)
    assert response.status_code == 200
    total: int = response.json()["total"]
    return total


async def stored_keys(connection: AsyncConnection) -> list[dict[str, Any]]:
    rows = await connection.execute(
        text("SELECT scope, key, state, response_status, response_body FROM idempotency_keys")
    )
    return [dict(row._mapping) for row in rows]


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code


# --- replay ------------------------------------------------------------------------------------


async def test_a_retry_replays_the_first_response_exactly_and_creates_nothing(
    client: httpx.AsyncClient, alice: UserHandle
) -> None:
    headers = keyed(alice)
    first = await client.post(TASKS, json={"title": "pay rent", "tags": ["home"]}, headers=headers)
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers

    again = await client.post(TASKS, json={"title": "pay rent", "tags": ["home"]}, headers=headers)
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    for name in ("content-type", "location", "etag", "content-length"):
        assert again.headers[name] == first.headers[name]
    # Still a normal API response: request id, security headers, no caching.
    assert again.headers["x-request-id"] != first.headers["x-request-id"]
    assert again.headers["x-content-type-options"] == "nosniff"
    assert again.headers["cache-control"] == "no-store"
    assert await task_count(client, alice) == 1


async def test_an_error_response_is_replayed_too(
    client: httpx.AsyncClient, alice: UserHandle
) -> None:
    headers = keyed(alice)
    first = await client.post(TASKS, json={"title": ""}, headers=headers)
    assert_problem(first, 422, "validation_error")
    again = await client.post(TASKS, json={"title": ""}, headers=headers)
    assert again.status_code == 422
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content


async def test_the_same_key_with_a_different_body_is_422_and_does_nothing(
    client: httpx.AsyncClient, alice: UserHandle
) -> None:
    headers = keyed(alice)
    assert (await client.post(TASKS, json={"title": "one"}, headers=headers)).status_code == 201
    other = await client.post(TASKS, json={"title": "two"}, headers=headers)
    assert_problem(other, 422, "idempotency_key_reused")
    # A different query string is a different request as well.
    query = await client.post(f"{TASKS}?x=1", json={"title": "one"}, headers=headers)
    assert_problem(query, 422, "idempotency_key_reused")
    assert await task_count(client, alice) == 1


async def test_a_post_without_the_header_behaves_as_always(
    client: httpx.AsyncClient, alice: UserHandle, connection: AsyncConnection
) -> None:
    for _ in range(2):
        response = await client.post(TASKS, json={"title": "same"}, headers=alice.headers)
        assert response.status_code == 201
        assert "idempotent-replayed" not in response.headers
    assert await task_count(client, alice) == 2
    assert await stored_keys(connection) == []


async def test_other_methods_ignore_the_header(
    client: httpx.AsyncClient, alice: UserHandle, make_task: Callable[..., Awaitable[Any]]
) -> None:
    task = await make_task(alice, title="before")
    headers = keyed(alice)
    first = await client.patch(f"{TASKS}/{task['id']}", json={"title": "a"}, headers=headers)
    second = await client.patch(f"{TASKS}/{task['id']}", json={"title": "b"}, headers=headers)
    assert first.status_code == second.status_code == 200
    assert second.json()["title"] == "b"
    assert second.json()["version"] == first.json()["version"] + 1


# --- scopes ------------------------------------------------------------------------------------


async def test_keys_are_per_user(
    client: httpx.AsyncClient, alice: UserHandle, bob: UserHandle
) -> None:
    key = uuid.uuid4().hex
    mine = await client.post(TASKS, json={"title": "shared"}, headers=keyed(alice, key))
    theirs = await client.post(TASKS, json={"title": "shared"}, headers=keyed(bob, key))
    assert mine.status_code == theirs.status_code == 201
    assert "idempotent-replayed" not in theirs.headers
    assert theirs.json()["owner_id"] == bob.id
    assert theirs.json()["id"] != mine.json()["id"]
    # And a different body from bob under alice's key is no conflict either.
    other = await client.post(TASKS, json={"title": "bob's"}, headers=keyed(bob, "fresh-" + key))
    assert other.status_code == 201


async def test_an_invalid_token_gets_its_401_and_claims_nothing(
    client: httpx.AsyncClient, alice: UserHandle, connection: AsyncConnection
) -> None:
    key = uuid.uuid4().hex
    bad = {"Authorization": "Bearer not-a-token", "Idempotency-Key": key}
    response = await client.post(TASKS, json={"title": "x"}, headers=bad)
    assert_problem(response, 401, "invalid_token")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert await stored_keys(connection) == []
    ok = await client.post(TASKS, json={"title": "x"}, headers=keyed(alice, key))
    assert ok.status_code == 201


async def test_register_is_scoped_by_client_ip(client: httpx.AsyncClient, app: FastAPI) -> None:
    body = {"username": "ipscoped", "email": "ipscoped@example.com", "password": "long enough pw"}
    headers = keyed()
    first = await client.post(REGISTER, json=body, headers=headers)
    assert first.status_code == 201
    # Same address: a replay, not 409 username_taken; a forged X-Forwarded-For changes nothing
    # since the peer is no trusted proxy.
    again = await client.post(
        REGISTER, json=body, headers={**headers, "X-Forwarded-For": "203.0.113.9"}
    )
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content

    elsewhere = httpx.ASGITransport(app=app, client=("198.51.100.7", 4321))
    async with httpx.AsyncClient(transport=elsewhere, base_url="http://testserver") as other:
        response = await other.post(REGISTER, json=body, headers=headers)
    assert_problem(response, 409, "username_taken")


async def test_a_login_replay_returns_the_same_tokens_without_storing_them_readably(
    client: httpx.AsyncClient, alice: UserHandle, connection: AsyncConnection
) -> None:
    headers = keyed()
    body = {"username": alice.username, "password": alice.password}
    first = await client.post(LOGIN, json=body, headers=headers)
    again = await client.post(LOGIN, json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    # A copy of the database alone yields no usable token.
    (row,) = await stored_keys(connection)
    assert row["scope"].startswith("ip:")
    stored = bytes(row["response_body"])
    assert first.json()["refresh_token"].encode() not in stored
    assert first.json()["access_token"].encode() not in stored
    # The wrong password under the same key is a different request, never the stored tokens.
    wrong = await client.post(LOGIN, json={**body, "password": "wrong one!"}, headers=headers)
    assert_problem(wrong, 422, "idempotency_key_reused")


# --- key validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [b"", b"x" * 256, b"has space", b"tab\there", "caf\u00e9".encode("latin-1"), b"a\x7f"],
)
async def test_invalid_keys_are_rejected_before_anything_happens(
    client: httpx.AsyncClient, alice: UserHandle, value: bytes
) -> None:
    headers = [
        (b"authorization", alice.headers["Authorization"].encode()),
        (b"idempotency-key", value),
    ]
    response = await client.post(TASKS, json={"title": "x"}, headers=headers)
    assert_problem(response, 400, "invalid_idempotency_key")
    assert await task_count(client, alice) == 0


async def test_two_key_headers_are_rejected_and_the_longest_key_works(
    client: httpx.AsyncClient, alice: UserHandle
) -> None:
    auth = (b"authorization", alice.headers["Authorization"].encode())
    twice = [auth, (b"idempotency-key", b"a"), (b"idempotency-key", b"b")]
    assert_problem(
        await client.post(TASKS, json={"title": "x"}, headers=twice), 400, "invalid_idempotency_key"
    )
    longest = [auth, (b"idempotency-key", b"~" * 255)]
    first = await client.post(TASKS, json={"title": "x"}, headers=longest)
    again = await client.post(TASKS, json={"title": "x"}, headers=longest)
    assert first.status_code == again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"


# --- failures release the key ------------------------------------------------------------------


async def test_a_5xx_response_releases_the_key(
    client: httpx.AsyncClient,
    alice: UserHandle,
    connection: AsyncConnection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = service.create_task

    async def unavailable(*args: Any, **kwargs: Any) -> Task:
        raise ServiceUnavailable()

    async def crashing(*args: Any, **kwargs: Any) -> Task:
        raise RuntimeError("boom")

    headers = keyed(alice)
    for failure in (unavailable, crashing):
        monkeypatch.setattr(service, "create_task", failure)
        failed = await client.post(TASKS, json={"title": "retry me"}, headers=headers)
        assert failed.status_code in (500, 503)
        assert await stored_keys(connection) == []

    monkeypatch.setattr(service, "create_task", original)
    retried = await client.post(TASKS, json={"title": "retry me"}, headers=headers)
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers
    assert await task_count(client, alice) == 1


# --- expiry ------------------------------------------------------------------------------------


async def test_expired_keys_no_longer_replay_and_the_job_removes_them(
    client: httpx.AsyncClient, app: FastAPI, alice: UserHandle, connection: AsyncConnection
) -> None:
    old, fresh = keyed(alice), keyed(alice)
    assert (await client.post(TASKS, json={"title": "t"}, headers=old)).status_code == 201
    assert (await client.post(TASKS, json={"title": "t"}, headers=fresh)).status_code == 201
    backdate = text(
        "UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = :key"
    )
    await connection.execute(backdate, {"key": old["Idempotency-Key"]})

    # 24 h later the key is free again: the request runs anew, even with another body.
    rerun = await client.post(TASKS, json={"title": "other"}, headers=old)
    assert rerun.status_code == 201
    assert "idempotent-replayed" not in rerun.headers
    assert await task_count(client, alice) == 3

    await connection.execute(backdate, {"key": old["Idempotency-Key"]})
    context = JobContext(
        services_of(app).sessionmaker, services_of(app).get(STORAGE), services_of(app).settings
    )
    await expire_idempotency_keys(context, {})
    assert [row["key"] for row in await stored_keys(connection)] == [fresh["Idempotency-Key"]]
    replay = await client.post(TASKS, json={"title": "t"}, headers=fresh)
    assert replay.headers["idempotent-replayed"] == "true"


async def test_expire_keys_deletes_every_expired_key_batch_by_batch(
    client: httpx.AsyncClient,
    app: FastAPI,
    alice: UserHandle,
    connection: AsyncConnection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    headers = [keyed(alice) for _ in range(6)]
    for each in headers:
        assert (await client.post(TASKS, json={"title": "t"}, headers=each)).status_code == 201
    expired, kept = headers[:5], headers[5]
    await connection.execute(
        text(
            "UPDATE idempotency_keys SET expires_at = now() - interval '1 second' "
            "WHERE key = ANY(:keys)"
        ),
        {"keys": [each["Idempotency-Key"] for each in expired]},
    )
    monkeypatch.setattr(store, "EXPIRE_BATCH", 2)  # three batches: 2, 2, 1

    async with services_of(app).sessionmaker() as session:
        removed = await expire_keys(session, datetime.now(UTC))

    assert removed == 5
    assert [row["key"] for row in await stored_keys(connection)] == [kept["Idempotency-Key"]]


# --- uploads (bodies too large to buffer) ------------------------------------------------------


@pytest.mark.parametrize("size", [1000, 1_500_000])
async def test_a_retried_upload_replays_even_with_a_new_multipart_boundary(
    client: httpx.AsyncClient,
    alice: UserHandle,
    make_task: Callable[..., Awaitable[Any]],
    size: int,
) -> None:
    task = await make_task(alice)
    url = f"{TASKS}/{task['id']}/files"
    content = b"line of text\n" * (size // 13)
    headers = keyed(alice)
    # httpx draws a new random boundary for every request, as browsers do.
    first = await client.post(
        url, files={"file": ("a.txt", content, "text/plain")}, headers=headers
    )
    assert first.status_code == 201, first.text
    again = await client.post(
        url, files={"file": ("a.txt", content, "text/plain")}, headers=headers
    )
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    listed = await client.get(url, headers=alice.headers)
    assert [f["id"] for f in listed.json()] == [first.json()["id"]]


# --- concurrency (real commits) ----------------------------------------------------------------


@pytest.fixture
async def live_user(live_client: httpx.AsyncClient) -> UserHandle:
    return await register_and_login(live_client)


async def test_ten_concurrent_duplicates_create_exactly_one_task(
    live_client: httpx.AsyncClient, live_user: UserHandle
) -> None:
    headers = keyed(live_user)
    body = {"title": "only once", "priority": "high"}
    responses = await asyncio.gather(
        *(live_client.post(TASKS, json=body, headers=headers) for _ in range(10))
    )
    originals = [
        r for r in responses if r.status_code == 201 and "idempotent-replayed" not in r.headers
    ]
    assert len(originals) == 1
    for response in responses:
        if response.status_code == 201:
            assert response.content == originals[0].content
        else:
            assert_problem(response, 409, "idempotency_key_in_use")
            assert response.headers["retry-after"] == "1"
    assert await task_count(live_client, live_user) == 1

    retry = await live_client.post(TASKS, json=body, headers=headers)
    assert retry.status_code == 201
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.content == originals[0].content


@pytest.fixture
async def held_create(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[asyncio.Event]:
    """The first task creation waits for the returned event: a request that is "still running".
    Later ones run normally."""
    release = asyncio.Event()
    original = service.create_task
    calls = 0

    async def slow_first(*args: Any, **kwargs: Any) -> Task:
        nonlocal calls
        calls += 1
        if calls == 1:
            await release.wait()
        return await original(*args, **kwargs)

    monkeypatch.setattr(service, "create_task", slow_first)
    yield release
    release.set()


async def test_while_the_first_request_runs_a_duplicate_gets_409(
    live_client: httpx.AsyncClient, live_user: UserHandle, held_create: asyncio.Event
) -> None:
    headers = keyed(live_user)
    first = asyncio.create_task(live_client.post(TASKS, json={"title": "slow"}, headers=headers))
    await asyncio.sleep(0.2)
    busy = await live_client.post(TASKS, json={"title": "slow"}, headers=headers)
    assert_problem(busy, 409, "idempotency_key_in_use")
    assert busy.headers["retry-after"] == "1"
    # A different body under the running key is still a reuse.
    reused = await live_client.post(TASKS, json={"title": "fast"}, headers=headers)
    assert_problem(reused, 422, "idempotency_key_reused")

    held_create.set()
    done = await first
    assert done.status_code == 201
    replay = await live_client.post(TASKS, json={"title": "slow"}, headers=headers)
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == done.content


async def test_a_claim_whose_lease_ran_out_is_taken_over(
    live_client: httpx.AsyncClient,
    live_app: FastAPI,
    live_user: UserHandle,
    held_create: asyncio.Event,
) -> None:
    """A process that died mid-request leaves its claim behind; after the lease a retry runs."""
    headers = keyed(live_user)
    stuck = asyncio.create_task(live_client.post(TASKS, json={"title": "t"}, headers=headers))
    await asyncio.sleep(0.2)
    async with services_of(live_app).engine.begin() as conn:
        await conn.execute(
            text("UPDATE idempotency_keys SET locked_until = now() - interval '1 second'")
        )
    takeover = await live_client.post(TASKS, json={"title": "t"}, headers=headers)
    assert takeover.status_code == 201
    assert "idempotent-replayed" not in takeover.headers

    # The old request finishing late cannot overwrite the claim it lost.
    held_create.set()
    assert (await stuck).status_code == 201
    replay = await live_client.post(TASKS, json={"title": "t"}, headers=headers)
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.content == takeover.content


# --- documentation -----------------------------------------------------------------------------


async def test_the_header_and_its_errors_are_documented_on_post_operations(
    client: httpx.AsyncClient,
) -> None:
    schema = (await client.get("/openapi.json")).json()
    parameter = schema["components"]["parameters"]["IdempotencyKey"]
    assert parameter["name"] == "Idempotency-Key"
    assert parameter["in"] == "header"
    reference = {"$ref": "#/components/parameters/IdempotencyKey"}
    create = schema["paths"][TASKS]["post"]
    assert reference in create["parameters"]
    assert {"400", "409", "422"} <= set(create["responses"])
    assert "Idempotent-Replayed" in create["responses"]["201"]["headers"]
    assert reference not in schema["paths"][TASKS]["get"].get("parameters", [])
