"""Redis makes the service faster but never makes it fail (docs/api.md, "Rate limits and caching";
docs/operations.md, "When a dependency goes away"): a throwaway redis-server is killed, paused and
restarted under a running app.

Every test starts its own redis-server (tests/fault_servers.py) on a free port; the shared one on
6379 is never touched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as redis
from fastapi import FastAPI
from prometheus_client import REGISTRY
from sqlalchemy.ext.asyncio import AsyncConnection

from taskapi.app import create_app
from taskapi.kit.cache import RedisGuard
from taskapi.tasks.stats_cache import CachedStats, StatsCache
from tests.conftest import (
    MAIN_DB,
    StatementLog,
    UserHandle,
    bind_to_connection,
    make_settings,
    register_and_login,
)
from tests.fault_servers import RedisServer, started_redis
from tests.task_helpers import TASKS, task_url

STATS = f"{TASKS}/stats"
COOLDOWN = 0.2
# The paused test's cool-down: requests meant to fall inside it must, however slow the machine.
PAUSED_COOLDOWN = 2.0
SOCKET_TIMEOUT = 0.25  # the default redis_socket_timeout_seconds
# With Redis gone (connection refused) a request must not be held up by it at all.
FAST = 1.0
# A paused Redis costs a request at most one socket timeout (then the breaker is open) ...
PAUSED_LIMIT = SOCKET_TIMEOUT + 0.2
# ... and nothing at all while the breaker is open.
SKIPPED_LIMIT = SOCKET_TIMEOUT / 2


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisServer]:
    async with started_redis() as server:
        yield server


async def _build_app(
    server: RedisServer, connection: AsyncConnection, **overrides: Any
) -> AsyncIterator[FastAPI]:
    settings = make_settings(
        MAIN_DB,
        **{
            "redis_url": server.url,
            "rate_limit_enabled": True,
            "rate_limit_user_burst": 1000,
            # Refilled one token a minute: a test sees each request's token spent, however
            # slowly a loaded machine serves them (at the default 20/s, a request slower than
            # 50 ms got its token back).
            "rate_limit_user_per_minute": 1,
            "rate_limit_auth_burst": 1000,
            "redis_retry_cooldown_seconds": COOLDOWN,
            **overrides,
        },
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        bind_to_connection(application, connection)
        yield application


@pytest.fixture
async def outage_client(
    redis_server: RedisServer, connection: AsyncConnection, migrated_databases: None
) -> AsyncIterator[httpx.AsyncClient]:
    """The app on the throwaway Redis, with rate limits on; requests share the test's rolled-back
    transaction (so they must be sequential, as they are here)."""
    async for application in _build_app(redis_server, connection):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


# --- helpers -----------------------------------------------------------------------------------


class Timed:
    """Sends requests, recording how long each took; asserts no 5xx ever."""

    def __init__(self, client: httpx.AsyncClient, *, rate_limited: bool = True) -> None:
        self.client = client
        self.rate_limited = rate_limited
        self.durations: list[tuple[str, float]] = []
        self.last: httpx.Response | None = None

    async def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        started = time.perf_counter()
        response = await self.client.request(method, url, **kwargs)
        self.durations.append((f"{method} {url}", time.perf_counter() - started))
        assert response.status_code < 500, response.text
        self.last = response
        return response

    def slowest(self) -> float:
        return max(duration for _, duration in self.durations)


def assert_rate_limit_headers(response: httpx.Response, policy: str) -> None:
    assert response.headers["ratelimit-policy"].startswith(f'"{policy}";q=')
    assert response.headers["ratelimit"].startswith(f'"{policy}";r=')


def tokens_left(response: httpx.Response) -> int:
    """`r` of `RateLimit: "user";r=<tokens left>;t=<seconds>`."""
    fields = dict(part.split("=", 1) for part in response.headers["ratelimit"].split(";")[1:])
    return int(fields["r"])


async def ready(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/ops/ready")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


READY_OK = {"status": "ok", "checks": {"database": "ok", "redis": "ok", "storage": "ok"}}
READY_DEGRADED = {
    "status": "degraded",
    "checks": {"database": "ok", "redis": "unavailable", "storage": "ok"},
}


async def wait_until_ready(client: httpx.AsyncClient, within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while (body := await ready(client)) != READY_OK:
        assert time.monotonic() < deadline, body
        await asyncio.sleep(COOLDOWN / 2)


def stats_body(*, todo: int = 0, done: int = 0, tags: dict[str, int] | None = None) -> dict:
    total = todo + done
    return {
        "total": total,
        "completed": done,
        "incomplete": todo,
        "completion_rate": round(done * 100 / total, 1) if total else 0.0,
        "overdue": 0,
        "by_status": {"todo": todo, "in_progress": 0, "done": done, "cancelled": 0},
        "by_priority": {"low": 0, "medium": total, "high": 0, "urgent": 0},
        "by_tag": tags or {},
    }


async def read_stats(
    timed: Timed, user: UserHandle, sql_log: StatementLog
) -> tuple[dict[str, Any], bool]:
    """The stats body, and whether it was computed by SQL (True) or served from the cache."""
    sql_log.clear()
    response = await timed.request("GET", STATS, headers=user.headers)
    assert response.status_code == 200, response.text
    if timed.rate_limited:
        assert_rate_limit_headers(response, "user")
    computed = any("GROUP BY" in statement.upper() for statement in sql_log.statements)
    return response.json(), computed


async def create(timed: Timed, user: UserHandle, **body: Any) -> dict[str, Any]:
    response = await timed.request("POST", TASKS, json=body, headers=user.headers)
    assert response.status_code == 201, response.text
    if timed.rate_limited:
        assert_rate_limit_headers(response, "user")
    task: dict[str, Any] = response.json()
    return task


# --- tests -------------------------------------------------------------------------------------


async def test_with_redis_up_ready_is_ok_and_stats_are_cached(outage_client, sql_log):
    timed = Timed(outage_client)
    assert await ready(outage_client) == READY_OK
    alice = await register_and_login(outage_client)
    await create(timed, alice, title="one", tags=["x"])

    first, computed_first = await read_stats(timed, alice, sql_log)
    second, computed_second = await read_stats(timed, alice, sql_log)
    assert first == second == stats_body(todo=1, tags={"x": 1})
    assert (computed_first, computed_second) == (True, False)


async def test_killed_redis_degrades_gracefully_and_recovers_after_restart(
    outage_client, redis_server, sql_log
):
    timed = Timed(outage_client)
    alice = await register_and_login(outage_client)
    bob = await register_and_login(outage_client)
    task = await create(timed, alice, title="before", tags=["a"], assignee_id=bob.id)
    # Cached for both before the outage.
    for user in (alice, bob):
        await read_stats(timed, user, sql_log)
        body, computed = await read_stats(timed, user, sql_log)
        assert (body, computed) == (stats_body(todo=1, tags={"a": 1}), False)

    # What Redis holds of the stats cache now (generations and cached bodies), to bring back.
    cached = await redis_server.copy_keys("*stats:*")
    assert len(cached) >= 2
    await redis_server.kill()
    timed.durations.clear()

    # A mix of requests, all served normally, none waiting on Redis.
    login = await timed.request(
        "POST", "/api/v1/auth/login", json={"username": alice.username, "password": alice.password}
    )
    assert login.status_code == 200, login.text
    assert_rate_limit_headers(login, "auth")
    alice_headers = {"Authorization": f"Bearer {login.json()['access_token']}"}

    listed = await timed.request("GET", TASKS, headers=alice_headers)
    assert listed.status_code == 200
    assert [t["id"] for t in listed.json()["items"]] == [task["id"]]
    assert_rate_limit_headers(listed, "user")
    remaining = [tokens_left(listed)]

    for n in range(3):
        await create(timed, alice, title=f"during outage {n}", tags=["b"])
        body, computed = await read_stats(timed, alice, sql_log)
        assert body == stats_body(todo=2 + n, tags={"a": 1, "b": n + 1})
        assert computed  # no cache while Redis is down
        assert timed.last is not None
        remaining.append(tokens_left(timed.last))
    # The in-memory fallback buckets really count: each request spends a token.
    assert remaining == sorted(remaining, reverse=True)
    assert len(set(remaining)) == len(remaining), remaining

    patched = await timed.request(
        "PATCH", task_url(task["id"]), json={"status": "done"}, headers=bob.headers
    )
    assert patched.status_code == 200, patched.text
    assert_rate_limit_headers(patched, "user")
    bob_stats, computed = await read_stats(timed, bob, sql_log)
    assert bob_stats == stats_body(done=1, tags={"a": 1})
    assert computed
    alice_stats, _ = await read_stats(timed, alice, sql_log)
    assert alice_stats == stats_body(todo=3, done=1, tags={"a": 1, "b": 3})

    assert await ready(outage_client) == READY_DEGRADED
    assert timed.slowest() < FAST, timed.durations

    # Back on the same port, with its data (as with persistence): the pre-outage cached stats,
    # made stale by the writes above, are there again. The app is not restarted.
    await redis_server.start()
    await redis_server.set_keys(cached)
    await asyncio.sleep(COOLDOWN)
    await wait_until_ready(outage_client)

    # The writes made during the outage show, and the cache is used again.
    for user, want in (
        (alice, stats_body(todo=3, done=1, tags={"a": 1, "b": 3})),
        (bob, stats_body(done=1, tags={"a": 1})),
    ):
        body, _ = await read_stats(timed, user, sql_log)
        assert body == want
        body, computed = await read_stats(timed, user, sql_log)
        assert (body, computed) == (want, False)
    # ... and is invalidated again by the next write.
    await create(timed, bob, title="after recovery")
    body, computed = await read_stats(timed, bob, sql_log)
    assert (body, computed) == (stats_body(todo=1, done=1, tags={"a": 1}), True)


@pytest.fixture(params=[True, False], ids=["rate_limited", "no_rate_limit"])
async def pausable_client(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    connection: AsyncConnection,
    migrated_databases: None,
) -> AsyncIterator[tuple[httpx.AsyncClient, bool]]:
    """As `outage_client`, with and without rate limits: without them the stats cache is the first
    thing to reach Redis again after an outage. The cool-down is long enough that the requests
    meant to fall inside it do so even on a loaded machine."""
    async for application in _build_app(
        redis_server,
        connection,
        rate_limit_enabled=request.param,
        redis_retry_cooldown_seconds=PAUSED_COOLDOWN,
    ):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client, request.param


class RedisCalls:
    """How many Redis calls the app made, failed or skipped since the last `taken()`, read from
    the `taskapi_redis_calls_total` metric (what an operator would watch)."""

    OUTCOMES = ("ok", "failed", "skipped")

    def __init__(self) -> None:
        self._seen = self._read()

    @staticmethod
    def _read() -> dict[str, float]:
        return {
            outcome: REGISTRY.get_sample_value("taskapi_redis_calls_total", {"outcome": outcome})
            or 0.0
            for outcome in RedisCalls.OUTCOMES
        }

    def taken(self) -> dict[str, int]:
        now = self._read()
        delta = {outcome: int(now[outcome] - self._seen[outcome]) for outcome in self.OUTCOMES}
        self._seen = now
        return delta


async def test_paused_redis_does_not_stall_requests_and_no_stale_stats_survive_it(
    pausable_client, redis_server, sql_log
):
    client, rate_limited = pausable_client
    timed = Timed(client, rate_limited=rate_limited)
    alice = await register_and_login(client)
    bob = await register_and_login(client)
    task = await create(timed, alice, title="shared", tags=["a"], assignee_id=bob.id)
    for user in (alice, bob):
        await read_stats(timed, user, sql_log)
        body, computed = await read_stats(timed, user, sql_log)
        assert (body, computed) == (stats_body(todo=1, tags={"a": 1}), False)

    # Paused, Redis accepts connections but never answers: every call would hit the timeout.
    redis_server.pause()
    calls = RedisCalls()
    timed.durations.clear()
    # The first request finds Redis unresponsive and pays one socket timeout, not one per call:
    # one call fails, every later one in the request is skipped.
    body, computed = await read_stats(timed, bob, sql_log)
    assert (body, computed) == (stats_body(todo=1, tags={"a": 1}), True)
    first = calls.taken()
    assert (first["ok"], first["failed"]) == (0, 1), first
    assert timed.durations[-1][1] < PAUSED_LIMIT + FAST, timed.durations
    # Right after it, within the cool-down, requests don't wait for Redis at all (and the writes
    # cannot even try to invalidate the cached stats).
    timed.durations.clear()
    await create(timed, alice, title="while paused", tags=["b"])
    body, computed = await read_stats(timed, alice, sql_log)
    assert (body, computed) == (stats_body(todo=2, tags={"a": 1, "b": 1}), True)
    patched = await timed.request(
        "POST", task_url(task["id"]) + "/transition", json={"status": "done"}, headers=bob.headers
    )
    assert patched.status_code == 200, patched.text
    login = await timed.request(
        "POST", "/api/v1/auth/login", json={"username": bob.username, "password": bob.password}
    )
    assert login.status_code == 200
    if rate_limited:
        assert_rate_limit_headers(login, "auth")
    else:
        assert "ratelimit" not in login.headers
    within_cooldown = calls.taken()
    assert (within_cooldown["ok"], within_cooldown["failed"]) == (0, 0), within_cooldown
    assert within_cooldown["skipped"] >= 4, within_cooldown  # every request wanted Redis
    assert timed.slowest() < FAST, timed.durations
    # After each cool-down one request tries Redis again, and again pays at most one timeout.
    timed.durations.clear()
    for _ in range(2):
        await asyncio.sleep(PAUSED_COOLDOWN)
        listed = await timed.request("GET", TASKS, headers=alice.headers)
        assert listed.json()["total"] == 2
        body, _ = await read_stats(timed, bob, sql_log)
        assert body == stats_body(done=1, tags={"a": 1})
        retried = calls.taken()
        assert (retried["ok"], retried["failed"]) == (0, 1), retried
    assert timed.slowest() < PAUSED_LIMIT + FAST, timed.durations
    assert await ready(client) == READY_DEGRADED

    # Redis comes back with everything it held, including the pre-pause cached stats.
    redis_server.resume()
    await asyncio.sleep(PAUSED_COOLDOWN)
    timed.durations.clear()
    alice_now = stats_body(todo=1, done=1, tags={"a": 1, "b": 1})
    bob_now = stats_body(done=1, tags={"a": 1})
    # The first request after the cool-down is a stats read (without rate limits, its cache
    # lookup is the first Redis call): it must not see the value cached before the pause.
    body, _ = await read_stats(timed, alice, sql_log)
    assert body == alice_now
    body, _ = await read_stats(timed, bob, sql_log)
    assert body == bob_now
    await wait_until_ready(client)
    # The cache is used again.
    for user, want in ((alice, alice_now), (bob, bob_now)):
        await read_stats(timed, user, sql_log)
        body, computed = await read_stats(timed, user, sql_log)
        assert (body, computed) == (want, False)


async def test_stats_cache_replays_missed_invalidations_before_its_first_read(redis_server):
    """StatsCache alone: an invalidation that could not reach a paused Redis is applied before the
    first read once Redis answers again, so that read cannot return the dropped value."""
    client = redis.Redis.from_url(redis_server.url, socket_timeout=SOCKET_TIMEOUT)
    guard = RedisGuard(client, cooldown_seconds=COOLDOWN)
    cache = StatsCache(guard, "replay-test:", ttl_seconds=60)
    try:
        for user_id in (1, 2, 3):
            entry = await cache.get(user_id)
            assert entry.generation is not None
            await cache.put(user_id, entry.generation, f"before {user_id}".encode())
        assert (await cache.get(1)).payload == b"before 1"

        redis_server.pause()
        started = time.perf_counter()
        assert await cache.get(3) == CachedStats(generation=None, payload=None)  # times out
        await cache.invalidate([1, 2])  # breaker open: not even tried
        assert time.perf_counter() - started < PAUSED_LIMIT
        # While unreachable the cache is bypassed, never a stale hit.
        assert (await cache.get(1)).payload is None
        redis_server.resume()
        await asyncio.sleep(COOLDOWN)

        assert (await cache.get(1)).payload is None
        assert (await cache.get(2)).payload is None
        assert (await cache.get(3)).payload == b"before 3"
    finally:
        await client.aclose()
