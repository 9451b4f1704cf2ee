"""The authentication hot path: the principal cache in Redis (auth/principal_cache.py), the
verified-token cache (security.TokenCodec), login admission and low-priority hashing threads
(security.PasswordHashing).

The optimisations must be invisible to clients: a login that was ended is refused by the very next
request (whichever process serves it, Redis up or down), a changed profile is shown at once, and a
login storm neither holds database connections nor outranks the rest of the traffic.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import httpx
import jwt
import pytest
import redis.asyncio as redis
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request

from taskapi.app import create_app
from taskapi.auth.principal_cache import PRINCIPAL_CACHE, PrincipalCache
from taskapi.auth.service import AUTH_SERVICE
from taskapi.kit import security
from taskapi.kit.cache import RedisGuard, create_redis
from taskapi.kit.config import Settings
from taskapi.kit.ratelimit import CachedRead, RateLimiter
from taskapi.kit.security import (
    HASH_THREAD_NICENESS,
    VERIFIED_TOKENS_MAX,
    PasswordHashing,
    TokenCodec,
)
from taskapi.kit.services import services_of
from taskapi.models import User
from tests.conftest import (
    MAIN_DB,
    StatementLog,
    UserHandle,
    bind_to_connection,
    cloned_app,
    make_settings,
    register_and_login,
)
from tests.fault_servers import RedisServer, free_port, started_redis
from tests.refresh_helpers import past_the_grace
from tests.task_helpers import assert_problem

API = "/api/v1"
ME = f"{API}/users/me"
AUTH_ME = f"{API}/auth/me"
LOGIN = f"{API}/auth/login"
REFRESH = f"{API}/auth/refresh"
LOGOUT = f"{API}/auth/logout"

# Hashing is not what these tests are about; cheap parameters keep the file fast.
CHEAP_ARGON2 = {"argon2_memory_cost_kib": 64, "argon2_time_cost": 1}


# --- helpers -----------------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def unverified_claims(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


@asynccontextmanager
async def running(settings: Settings, connection: AsyncConnection) -> AsyncIterator[FastAPI]:
    """Another app instance (its own lifespan, Redis client and caches) on the test's
    transaction: what a second server process would be."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        bind_to_connection(application, connection)
        yield application


def http(application: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=application)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def cached_entry(application: FastAPI, token: str) -> bytes | None:
    """The principal cache's current entry for the login `token` belongs to, read straight from
    Redis (the generation the app would read now)."""
    claims = unverified_claims(token)
    cache: PrincipalCache = services_of(application).get(PRINCIPAL_CACHE)
    read = cache.read_for(int(claims["sub"]), uuid.UUID(claims["sid"]).hex)
    prefix = services_of(application).settings.redis_key_prefix + "auth:"
    assert read.generation_key.startswith(prefix)
    assert read.entry_prefix.startswith(prefix)
    client: redis.Redis = services_of(application).redis.client
    generation = await client.get(read.generation_key)
    if generation is None:
        return None  # the next read starts a new generation: nothing stored is current
    assert isinstance(generation, bytes)
    entry = await client.get(read.entry_prefix + generation.decode())
    assert entry is None or isinstance(entry, bytes)
    return entry


async def warm(client: httpx.AsyncClient, application: FastAPI, token: str) -> None:
    """Authenticate once so the login is cached; without that, an invalidation test would pass
    against the database alone and prove nothing about the cache."""
    response = await client.get(ME, headers=bearer(token))
    assert response.status_code == 200, response.text
    assert await cached_entry(application, token) is not None


async def assert_refused(client: httpx.AsyncClient, token: str, url: str = ME) -> None:
    response = await client.get(url, headers=bearer(token))
    assert_problem(response, 401, "invalid_token")
    assert response.headers["www-authenticate"].startswith("Bearer")


async def new_login(client: httpx.AsyncClient, user: UserHandle) -> dict[str, Any]:
    response = await client.post(LOGIN, json={"username": user.username, "password": user.password})
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    return tokens


# --- the principal cache through the API --------------------------------------------------------


async def test_a_cached_login_is_authenticated_without_sql(
    app: FastAPI, client: httpx.AsyncClient, alice: UserHandle, sql_log: StatementLog
) -> None:
    sql_log.clear()
    first = await client.get(ME, headers=alice.headers)
    assert first.status_code == 200, first.text
    # The cold request does go to the database: the log sees the lookup.
    assert sql_log.count > 0
    assert await cached_entry(app, alice.access_token) is not None

    sql_log.clear()
    second = await client.get(ME, headers=alice.headers)
    assert second.status_code == 200, second.text
    assert sql_log.statements == []
    assert second.json() == first.json()
    assert second.json()["username"] == "alice"


async def test_logout_refuses_the_cached_access_token_on_the_next_request(
    app: FastAPI, client: httpx.AsyncClient, alice: UserHandle
) -> None:
    await warm(client, app, alice.access_token)
    response = await client.post(
        LOGOUT, json={"refresh_token": alice.refresh_token}, headers=alice.headers
    )
    assert response.status_code == 204, response.text
    await assert_refused(client, alice.access_token)
    await assert_refused(client, alice.access_token, AUTH_ME)


async def test_logout_of_one_login_leaves_the_others_cached_logins_working(
    app: FastAPI, client: httpx.AsyncClient, alice: UserHandle
) -> None:
    other = await new_login(client, alice)
    await warm(client, app, alice.access_token)
    await warm(client, app, other["access_token"])
    response = await client.post(
        LOGOUT, json={"refresh_token": alice.refresh_token}, headers=alice.headers
    )
    assert response.status_code == 204, response.text
    await assert_refused(client, alice.access_token)
    assert (await client.get(ME, headers=bearer(other["access_token"]))).status_code == 200


async def test_refresh_token_reuse_refuses_the_cached_access_tokens_of_that_login(
    app: FastAPI, client: httpx.AsyncClient, alice: UserHandle
) -> None:
    await warm(client, app, alice.access_token)
    rotated = await client.post(REFRESH, json={"refresh_token": alice.refresh_token})
    assert rotated.status_code == 200, rotated.text
    new_access = rotated.json()["access_token"]
    await warm(client, app, new_access)
    await past_the_grace(app, alice.id)  # a replay within the grace is a racing client

    reused = await client.post(REFRESH, json={"refresh_token": alice.refresh_token})
    assert_problem(reused, 401, "invalid_token")

    await assert_refused(client, alice.access_token)
    await assert_refused(client, new_access)
    refreshed = await client.post(REFRESH, json={"refresh_token": rotated.json()["refresh_token"]})
    assert_problem(refreshed, 401, "invalid_token")


async def test_password_change_refuses_other_cached_logins_and_keeps_the_current_one(
    app: FastAPI, client: httpx.AsyncClient, alice: UserHandle
) -> None:
    other = await new_login(client, alice)
    await warm(client, app, alice.access_token)
    await warm(client, app, other["access_token"])

    changed = await client.patch(
        ME,
        json={"password": "a brand new passphrase", "current_password": alice.password},
        headers=alice.headers,
    )
    assert changed.status_code == 200, changed.text

    # docs/api.md: a password change "ends every other login"; the one making it stays signed in.
    await assert_refused(client, other["access_token"])
    refreshed = await client.post(REFRESH, json={"refresh_token": other["refresh_token"]})
    assert_problem(refreshed, 401, "invalid_token")
    current = await client.get(ME, headers=alice.headers)
    assert current.status_code == 200, current.text
    assert current.json()["id"] == alice.id


async def test_profile_changes_are_shown_at_once_not_the_cached_snapshot(
    app: FastAPI, client: httpx.AsyncClient, alice: UserHandle
) -> None:
    await warm(client, app, alice.access_token)
    before = (await client.get(ME, headers=alice.headers)).json()
    assert before["full_name"] is None

    renamed = await client.patch(ME, json={"full_name": "Alice Liddell"}, headers=alice.headers)
    assert renamed.status_code == 200, renamed.text
    for url in (ME, AUTH_ME):
        shown = await client.get(url, headers=alice.headers)
        assert shown.status_code == 200, shown.text
        assert shown.json()["full_name"] == "Alice Liddell"
        assert shown.json()["email"] == alice.email

    moved = await client.patch(ME, json={"email": "wonderland@example.com"}, headers=alice.headers)
    assert moved.status_code == 200, moved.text
    shown = (await client.get(ME, headers=alice.headers)).json()
    assert shown["email"] == "wonderland@example.com"
    assert shown["full_name"] == "Alice Liddell"

    # A change of case only is a change too.
    recased = await client.patch(
        ME, json={"email": "Wonderland@example.com"}, headers=alice.headers
    )
    assert recased.status_code == 200, recased.text
    shown = (await client.get(ME, headers=alice.headers)).json()
    assert shown["email"] == "Wonderland@example.com"


async def test_deleting_the_account_refuses_its_cached_access_token(
    app: FastAPI, client: httpx.AsyncClient, alice: UserHandle, bob: UserHandle
) -> None:
    await warm(client, app, alice.access_token)
    await warm(client, app, bob.access_token)
    deleted = await client.delete(ME, headers=alice.headers)
    assert deleted.status_code == 204, deleted.text
    await assert_refused(client, alice.access_token)
    await assert_refused(client, alice.access_token, AUTH_ME)
    # Someone else's cached login is not collateral damage.
    assert (await client.get(ME, headers=bob.headers)).json()["username"] == "bob"


async def test_logout_through_one_process_is_seen_by_another_that_cached_the_login(
    app: FastAPI,
    client: httpx.AsyncClient,
    connection: AsyncConnection,
    alice: UserHandle,
    sql_log: StatementLog,
) -> None:
    async with (
        running(services_of(app).settings, connection) as other_app,
        http(other_app) as other,
    ):
        await warm(client, app, alice.access_token)
        await warm(other, other_app, alice.access_token)
        # The second instance serves the login from the shared cache, not from the database.
        sql_log.clear()
        assert (await other.get(ME, headers=alice.headers)).status_code == 200
        assert sql_log.statements == []

        response = await client.post(
            LOGOUT, json={"refresh_token": alice.refresh_token}, headers=alice.headers
        )
        assert response.status_code == 204, response.text
        await assert_refused(other, alice.access_token)
        await assert_refused(client, alice.access_token)


# --- Redis down or cut off ----------------------------------------------------------------------


async def test_without_redis_logins_work_from_the_database_and_logout_still_takes_effect(
    connection: AsyncConnection, sql_log: StatementLog
) -> None:
    nothing_listens = f"redis://127.0.0.1:{free_port()}/0"
    settings = make_settings(MAIN_DB, redis_url=nothing_listens, **CHEAP_ARGON2)
    async with running(settings, connection) as application, http(application) as client:
        user = await register_and_login(client)
        for _ in range(2):
            sql_log.clear()
            response = await client.get(ME, headers=user.headers)
            assert response.status_code == 200, response.text
            assert response.json()["id"] == user.id
            assert sql_log.count > 0  # every request asks the database: nothing to cache in
        response = await client.post(
            LOGOUT, json={"refresh_token": user.refresh_token}, headers=user.headers
        )
        assert response.status_code == 204, response.text
        await assert_refused(client, user.access_token)


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    async with started_redis() as server:
        yield server


async def test_a_logout_that_missed_a_paused_redis_is_replayed_before_the_cache_is_trusted(
    redis_server: RedisServer, connection: AsyncConnection
) -> None:
    cooldown = 0.1
    settings = make_settings(
        MAIN_DB,
        redis_url=redis_server.url,
        redis_retry_cooldown_seconds=cooldown,
        **CHEAP_ARGON2,
    )
    async with running(settings, connection) as application, http(application) as client:
        user = await register_and_login(client)
        await warm(client, application, user.access_token)

        # The logout's invalidation cannot reach Redis; Redis keeps the old entry, intact.
        redis_server.pause()
        try:
            response = await client.post(
                LOGOUT, json={"refresh_token": user.refresh_token}, headers=user.headers
            )
            assert response.status_code == 204, response.text
        finally:
            redis_server.resume()
        assert await cached_entry(application, user.access_token) is not None

        await asyncio.sleep(cooldown * 2)  # the breaker lets Redis be asked again
        await assert_refused(client, user.access_token)
        # The replay did land: the stale entry is no longer under the current generation.
        assert await cached_entry(application, user.access_token) is None


# --- the generation scheme, unit level ----------------------------------------------------------


@pytest.fixture
async def live_redis() -> AsyncIterator[tuple[Settings, RedisGuard]]:
    settings = make_settings(MAIN_DB, redis_retry_cooldown_seconds=0)
    client = create_redis(settings)
    guard = RedisGuard(client, settings.redis_retry_cooldown_seconds)
    try:
        yield settings, guard
    finally:
        keys = [key async for key in client.scan_iter(match=f"{settings.redis_key_prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def a_user(user_id: int) -> User:
    now = datetime.now(UTC)
    return User(
        id=user_id,
        username="racer",
        email="racer@example.com",
        full_name="Speedy",
        created_at=now,
        updated_at=now,
    )


def a_request() -> Request:
    return Request({"type": "http", "method": "GET", "path": "/", "headers": []})


async def read_through_limiter(
    limiter: RateLimiter, cache: PrincipalCache, user_id: int, session_id: uuid.UUID
) -> CachedRead:
    """What get_current_user does: the entry rides in the rate limiter's Redis call."""
    read = cache.read_for(user_id, session_id.hex)
    await limiter.enforce(a_request(), limiter.user_policy, str(user_id), read)
    return read


@pytest.mark.parametrize("rate_limit_enabled", [False, True], ids=["limits-off", "limits-on"])
async def test_a_slow_reader_storing_after_an_invalidation_is_never_served(
    live_redis: tuple[Settings, RedisGuard], rate_limit_enabled: bool
) -> None:
    settings, guard = live_redis
    settings = settings.model_copy(update={"rate_limit_enabled": rate_limit_enabled})
    limiter = RateLimiter(guard, settings)
    cache = PrincipalCache(guard, settings.redis_key_prefix, 60)
    user_id, session_id = 4242, uuid.uuid4()

    slow = await read_through_limiter(limiter, cache, user_id, session_id)
    assert slow.generation is not None
    assert slow.entry is None
    await cache.invalidate([user_id])  # e.g. a logout commits while the reader is in the database
    await cache.store(slow, a_user(user_id))

    fresh = await read_through_limiter(limiter, cache, user_id, session_id)
    assert fresh.generation is not None
    assert fresh.generation != slow.generation
    assert fresh.entry is None

    # A reader that saw the current generation is served, so the miss above was not a fluke.
    await cache.store(fresh, a_user(user_id))
    hit = await read_through_limiter(limiter, cache, user_id, session_id)
    assert hit.entry is not None
    served = PrincipalCache.decode(hit.entry)
    assert served is not None
    assert (served.id, served.username) == (user_id, "racer")
    # The snapshot never carries the password hash.
    assert b"password" not in hit.entry


@pytest.mark.parametrize("replayed_by", ["usable", "any-successful-call"])
async def test_an_invalidation_that_missed_redis_keeps_the_cache_off_until_it_is_replayed(
    live_redis: tuple[Settings, RedisGuard], replayed_by: str
) -> None:
    settings, live_guard = live_redis
    prefix = settings.redis_key_prefix
    limiter = RateLimiter(live_guard, settings)
    reader = PrincipalCache(live_guard, prefix, 60)  # another process, which reaches Redis
    user_id, session_id = 777, uuid.uuid4()
    read = await read_through_limiter(limiter, reader, user_id, session_id)
    await reader.store(read, a_user(user_id))

    # This process is cut off from Redis (nothing listens there) when its logout commits.
    # Built as the app builds its client: redis-py's own default client would retry with
    # seconds of backoff first.
    unreachable = create_redis(
        settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    )
    guard = RedisGuard(unreachable, 0)
    cache = PrincipalCache(guard, prefix, 60)
    try:
        await cache.invalidate([user_id])
        assert not await cache.usable()
        assert not await cache.usable()  # still cut off: still not usable
        # What reading it now would serve: the revoked login's entry.
        stale = await read_through_limiter(limiter, reader, user_id, session_id)
        assert stale.entry is not None

        guard.client = live_guard.client  # Redis is reachable again
        if replayed_by == "any-successful-call":
            assert await guard.ping()
        else:
            assert await cache.usable()
        replayed = await read_through_limiter(limiter, reader, user_id, session_id)
        assert replayed.entry is None
        assert await cache.usable()
    finally:
        await unreachable.aclose()


async def test_a_disabled_principal_cache_is_never_used(
    live_redis: tuple[Settings, RedisGuard],
) -> None:
    settings, guard = live_redis
    assert not await PrincipalCache(guard, settings.redis_key_prefix, 0).usable()


# --- the verified-token cache -------------------------------------------------------------------


def _tamper(part: str, index: int) -> str:
    """A different base64url character at `index`: away from the last character, whose low bits
    are padding and could decode to the very same bytes."""
    replacement = "A" if part[index] != "A" else "B"
    return part[:index] + replacement + part[index + 1 :]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_a_cached_token_is_refused_once_it_expires(
    app: FastAPI, client: httpx.AsyncClient, alice: UserHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    codec: TokenCodec = services_of(app).get(AUTH_SERVICE).tokens
    assert (await client.get(ME, headers=alice.headers)).status_code == 200
    assert alice.access_token in codec._verified  # what follows exercises the cached path
    exp = unverified_claims(alice.access_token)["exp"]

    monkeypatch.setattr(security, "time", SimpleNamespace(time=lambda: exp - 1.0))
    assert (await client.get(ME, headers=alice.headers)).status_code == 200
    monkeypatch.setattr(security, "time", SimpleNamespace(time=lambda: exp + 1.0))
    response = await client.get(ME, headers=alice.headers)
    assert_problem(response, 401, "token_expired")
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_tampered_tokens_are_refused_even_while_the_original_is_cached(
    app: FastAPI, client: httpx.AsyncClient, alice: UserHandle, bob: UserHandle
) -> None:
    await warm(client, app, alice.access_token)
    assert alice.access_token in services_of(app).get(AUTH_SERVICE).tokens._verified
    header, payload, signature = alice.access_token.split(".")

    bad_signature = f"{header}.{payload}.{_tamper(signature, len(signature) // 2)}"
    await assert_refused(client, bad_signature)

    # Alice's valid signature over claims naming Bob.
    claims = unverified_claims(alice.access_token)
    forged_payload = _b64url(json.dumps({**claims, "sub": str(bob.id)}).encode())
    await assert_refused(client, f"{header}.{forged_payload}.{signature}")

    assert (await client.get(ME, headers=alice.headers)).json()["id"] == alice.id


async def test_a_refresh_token_is_refused_as_a_bearer_token(
    app: FastAPI, client: httpx.AsyncClient, alice: UserHandle
) -> None:
    await warm(client, app, alice.access_token)
    response = await client.get(ME, headers=bearer(alice.refresh_token))
    assert_problem(response, 401, "invalid_token")
    # And again: a refused token must not have been remembered as verified.
    assert_problem(await client.get(ME, headers=bearer(alice.refresh_token)), 401, "invalid_token")


def test_the_verified_token_cache_is_bounded() -> None:
    codec = TokenCodec(make_settings(MAIN_DB))
    now = datetime.now(UTC)
    tokens = []
    for user_id in range(1, VERIFIED_TOKENS_MAX + 11):
        token, claims = codec.encode(
            token_type="access", user_id=user_id, session_id=uuid.uuid4(), now=now
        )
        assert codec.decode(token, expected_type="access").user_id == claims.user_id
        tokens.append(token)
    assert len(codec._verified) <= VERIFIED_TOKENS_MAX
    assert tokens[-1] in codec._verified
    # An evicted token is verified again, not refused.
    assert tokens[0] not in codec._verified
    assert codec.decode(tokens[0], expected_type="access").user_id == 1
    assert len(codec._verified) <= VERIFIED_TOKENS_MAX


# --- login admission and hashing priority -------------------------------------------------------


async def _until(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_login_storm_queues_without_holding_database_connections(
    migrated_databases: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        cloned_app(password_hash_threads=1, **CHEAP_ARGON2) as application,
        http(application) as client,
    ):
        user = await register_and_login(client)
        hashing: PasswordHashing = services_of(application).password_hashing
        pool = services_of(application).engine.pool
        real_verify = hashing.verify
        release = asyncio.Event()
        started = in_flight = peak = 0

        async def gated_verify(password_hash: str, password: str) -> bool:
            nonlocal started, in_flight, peak
            started += 1
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                await release.wait()
                return await real_verify(password_hash, password)
            finally:
                in_flight -= 1

        monkeypatch.setattr(hashing, "verify", gated_verify)
        attempts = (
            [(user.username, user.password, 200)] * 5
            + [(user.username, "not the password", 401)] * 3
            + [(f"nobody_{uuid.uuid4().hex[:8]}", "whatever it is", 401)] * 2
        )
        requests = [
            asyncio.create_task(client.post(LOGIN, json={"username": name, "password": password}))
            for name, password, _ in attempts
        ]
        try:
            await _until(lambda: started >= 2)
            # Time for the rest to pile up: past admission they would query and verify too.
            await asyncio.sleep(0.2)
            assert started == 2
            assert pool.checkedout() <= 2  # twice password_hash_threads
            assert not any(request.done() for request in requests)
        finally:
            release.set()
        responses = await asyncio.gather(*requests)

    assert [r.status_code for r in responses] == [expected for *_, expected in attempts]
    for response in responses:
        if response.status_code == 200:
            assert response.json()["access_token"]
        else:
            assert_problem(response, 401, "invalid_credentials")
    assert started == len(attempts)
    assert peak <= 2


def _hash_thread_niceness(extra_niceness: int) -> tuple[int, list[int]]:
    """(the event loop thread's niceness, its hashing threads' niceness), with the loop running
    `extra_niceness` nicer than this process, as under `nice -n <extra> taskapi serve`.

    Runs in a thread of its own, which ends afterwards: on Linux nice is per thread and is
    inherited by the threads it starts, so nothing else in the test process is affected."""
    settings = make_settings(MAIN_DB, password_hash_threads=1, **CHEAP_ARGON2)
    result: dict[str, Any] = {}

    async def hash_once() -> list[int]:
        before = set(threading.enumerate())
        hashing = PasswordHashing(settings)
        try:
            await hashing.hash("correct horse battery")
            workers = [
                thread
                for thread in threading.enumerate()
                if thread.name.startswith("argon2") and thread not in before
            ]
            assert workers, "no hashing thread was started"
            ids = [thread.native_id for thread in workers]
            assert None not in ids
            return [os.getpriority(os.PRIO_PROCESS, tid) for tid in ids if tid is not None]
        finally:
            hashing.close()

    def target() -> None:
        try:
            if extra_niceness:
                os.nice(extra_niceness)
            result["loop"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            result["workers"] = asyncio.run(hash_once())
        except BaseException as error:  # re-raised in the test's thread
            result["error"] = error

    thread = threading.Thread(target=target, name="niced-event-loop")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["loop"], result["workers"]


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread niceness is Linux's")
@pytest.mark.parametrize(
    "extra_niceness", [0, 5, 12], ids=["normal-process", "niced-process", "niced-to-the-cap"]
)
def test_hashing_threads_run_nicer_than_the_event_loop(extra_niceness: int) -> None:
    own = os.getpriority(os.PRIO_PROCESS, 0)
    loop_niceness, workers = _hash_thread_niceness(extra_niceness)
    assert loop_niceness == min(19, own + extra_niceness)
    expected = min(19, loop_niceness + HASH_THREAD_NICENESS)
    assert workers == [expected] * len(workers), (loop_niceness, workers)
