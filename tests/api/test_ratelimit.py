"""Rate limits: token buckets per user and per client IP, shared through Redis by every process.

The shared `client` fixture runs with limits off; these tests build their own apps with limits on,
small buckets and their own Redis key prefix. Users are created through the limits-off `client`
(same database connection), so creating them spends nothing from the buckets under test.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from ipaddress import ip_network
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request

from taskapi.app import create_app
from taskapi.kit import ratelimit
from taskapi.kit.config import Settings
from taskapi.kit.ratelimit import LocalBuckets, Policy, client_ip
from taskapi.kit.services import services_of
from tests.conftest import (
    MAIN_DB,
    ROOT,
    UserHandle,
    admin_execute,
    bind_to_connection,
    clone_template,
    database_url,
    make_settings,
)

ME = "/api/v1/auth/me"
LOGIN = "/api/v1/auth/login"
TOKEN = "/api/v1/auth/token"
REGISTER = "/api/v1/auth/register"
TASKAPI = os.path.join(ROOT, ".venv", "bin", "taskapi")
SERVER_SECRET = "rate-limit-test-secret-0123456789-abcdefghijklmno"  # 48 characters

# user: 5 tokens, 30/min = one token per 2 s, so the header values are easy to predict:
# w = 5 / 0.5 = 10 s; after k requests r = 5 - k and t = 2k.
# auth: 3 tokens, 6/min = one token per 10 s: w = 30 s; after k requests r = 3 - k, t = 10k.
LIMITS: dict[str, Any] = {
    "rate_limit_enabled": True,
    "rate_limit_user_burst": 5,
    "rate_limit_user_per_minute": 30,
    "rate_limit_auth_burst": 3,
    "rate_limit_auth_per_minute": 6,
}


def limited_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {**LIMITS, "redis_key_prefix": f"rl-test:{uuid.uuid4().hex}:"}
    values.update(overrides)
    return make_settings(MAIN_DB, **values)


@asynccontextmanager
async def running(settings: Settings, connection: AsyncConnection) -> AsyncIterator[FastAPI]:
    """An app instance (its own lifespan, Redis client and limiter) on the test's transaction."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        bind_to_connection(application, connection)
        yield application


def http(application: FastAPI, ip: str = "203.0.113.7") -> httpx.AsyncClient:
    """A client whose requests arrive from socket peer `ip`."""
    transport = httpx.ASGITransport(app=application, client=(ip, 1234))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


def assert_rate_limited(
    response: httpx.Response, *, retry_after: int, seconds_since_full: float = 0.0
) -> None:
    """A 429 problem whose Retry-After is `retry_after`, less the whole seconds gone by since
    the bucket was emptied (`seconds_since_full`, for a check made a while after that)."""
    assert response.status_code == 429, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["code"] == "rate_limited"
    assert body["status"] == 429
    earliest = retry_after - math.ceil(seconds_since_full)
    assert earliest <= int(response.headers["retry-after"]) <= retry_after, response.headers


async def bad_login(client: httpx.AsyncClient, **kwargs: Any) -> httpx.Response:
    return await client.post(
        LOGIN, json={"username": "nobody_here", "password": "wrong password!"}, **kwargs
    )


# --- the user bucket ------------------------------------------------------------------------------


async def test_burst_is_admitted_then_429_with_exact_headers(
    connection: AsyncConnection, alice: UserHandle
) -> None:
    async with running(limited_settings(), connection) as application, http(application) as c:
        for k in range(1, 6):
            response = await c.get(ME, headers=alice.headers)
            assert response.status_code == 200, (k, response.text)
            assert response.json()["username"] == "alice"
            assert response.headers["ratelimit-policy"] == '"user";q=5;w=10'
            assert response.headers["ratelimit"] == f'"user";r={5 - k};t={2 * k}'
            assert "retry-after" not in response.headers

        refused = await c.get(ME, headers=alice.headers)
        # Empty bucket, one token every 2 s: retry in 2 s, full again in 10 s.
        assert_rate_limited(refused, retry_after=2)
        assert refused.headers["ratelimit-policy"] == '"user";q=5;w=10'
        assert refused.headers["ratelimit"] == '"user";r=0;t=10'
        # The usual headers are still there on a refusal.
        assert refused.headers["x-request-id"]
        assert refused.headers["cache-control"] == "no-store"

        # Every authenticated route spends from the same bucket, writes included.
        created = await c.post("/api/v1/tasks", json={"title": "x"}, headers=alice.headers)
        assert_rate_limited(created, retry_after=2)
        listed = await c.get("/api/v1/tasks", headers=alice.headers)
        assert_rate_limited(listed, retry_after=2)

    # The refused POST created nothing (checked with limits off).
    async with running(make_settings(MAIN_DB), connection) as application, http(application) as c:
        tasks = await c.get("/api/v1/tasks", headers=alice.headers)
        assert tasks.status_code == 200
        assert tasks.json()["total"] == 0


async def test_one_token_comes_back_after_its_refill_interval(
    connection: AsyncConnection, alice: UserHandle
) -> None:
    # 30/min = one token every 2 s: slow enough that the burst below can't earn a token back even
    # on a loaded machine, so the arithmetic is exact. A bucket of 3 refills in 6 s.
    settings = limited_settings(rate_limit_user_burst=3, rate_limit_user_per_minute=30)
    async with running(settings, connection) as application, http(application) as c:
        for _ in range(3):
            assert (await c.get(ME, headers=alice.headers)).status_code == 200
        refused = await c.get(ME, headers=alice.headers)
        assert_rate_limited(refused, retry_after=2)  # whole seconds, never 0
        assert refused.headers["ratelimit-policy"] == '"user";q=3;w=6'
        assert refused.headers["ratelimit"] == '"user";r=0;t=6'

        await asyncio.sleep(2.05)  # a little more than one token's worth
        again = await c.get(ME, headers=alice.headers)
        assert again.status_code == 200, again.text
        assert again.headers["ratelimit"] == '"user";r=0;t=6'
        # Only one token came back: the next request right away is refused again.
        assert_rate_limited(await c.get(ME, headers=alice.headers), retry_after=2)


async def test_each_user_has_a_bucket_of_their_own(
    connection: AsyncConnection, alice: UserHandle, bob: UserHandle
) -> None:
    async with running(limited_settings(), connection) as application, http(application) as c:
        for _ in range(5):
            assert (await c.get(ME, headers=alice.headers)).status_code == 200
        assert_rate_limited(await c.get(ME, headers=alice.headers), retry_after=2)

        # Same IP, other user: a full bucket.
        for k in range(1, 3):
            response = await c.get(ME, headers=bob.headers)
            assert response.status_code == 200, response.text
            assert response.json()["username"] == "bob"
            assert response.headers["ratelimit"] == f'"user";r={5 - k};t={2 * k}'

        # Bob's requests gave Alice nothing back.
        assert_rate_limited(await c.get(ME, headers=alice.headers), retry_after=2)


async def test_requests_without_a_valid_token_do_not_spend_anyone_s_tokens(
    connection: AsyncConnection, alice: UserHandle
) -> None:
    async with running(limited_settings(), connection) as application, http(application) as c:
        for _ in range(8):
            anonymous = await c.get(ME)
            assert anonymous.status_code == 401
            forged = await c.get(ME, headers={"Authorization": "Bearer not.a.jwt"})
            assert forged.status_code == 401
        first = await c.get(ME, headers=alice.headers)
        assert first.status_code == 200
        assert first.headers["ratelimit"] == '"user";r=4;t=2'


# --- the per-IP auth bucket -----------------------------------------------------------------------


async def test_failed_logins_exhaust_the_ip_bucket_not_the_account(
    connection: AsyncConnection, alice: UserHandle
) -> None:
    settings = limited_settings()
    async with running(settings, connection) as application:
        async with http(application, ip="203.0.113.66") as attacker:
            for k in range(1, 4):
                response = await attacker.post(
                    LOGIN, json={"username": "alice", "password": f"guess number {k}"}
                )
                assert response.status_code == 401, response.text
                assert response.json()["code"] == "invalid_credentials"
                assert response.headers["ratelimit-policy"] == '"auth";q=3;w=30'
                assert response.headers["ratelimit"] == f'"auth";r={3 - k};t={10 * k}'

            # The right password does not help from this IP any more ...
            blocked = await attacker.post(
                LOGIN, json={"username": "alice", "password": alice.password}
            )
            assert_rate_limited(blocked, retry_after=10)
            assert blocked.headers["ratelimit-policy"] == '"auth";q=3;w=30'
            assert blocked.headers["ratelimit"] == '"auth";r=0;t=30'
            assert "access_token" not in blocked.text

            # ... nor does switching to the other two endpoints of the same bucket.
            form = await attacker.post(
                TOKEN, data={"username": "alice", "password": alice.password}
            )
            assert_rate_limited(form, retry_after=10)
            assert form.headers["ratelimit-policy"] == '"auth";q=3;w=30'
            signup = await attacker.post(
                REGISTER,
                json={
                    "username": "mallory",
                    "email": "mallory@example.com",
                    "password": "correct horse battery",
                },
            )
            assert_rate_limited(signup, retry_after=10)

            # Already logged-in use from that IP counts against the user, not the IP.
            me = await attacker.get(ME, headers=alice.headers)
            assert me.status_code == 200, me.text
            assert me.headers["ratelimit-policy"] == '"user";q=5;w=10'
            assert me.headers["ratelimit"] == '"user";r=4;t=2'

        # The account's owner, elsewhere, logs in normally.
        async with http(application, ip="198.51.100.23") as owner:
            login = await owner.post(LOGIN, json={"username": "alice", "password": alice.password})
            assert login.status_code == 200, login.text
            assert login.headers["ratelimit"] == '"auth";r=2;t=10'
            token = login.json()["access_token"]
            me = await owner.get(ME, headers={"Authorization": f"Bearer {token}"})
            assert me.status_code == 200
            assert me.json()["username"] == "alice"

        # The refused registration created no account: the name is still free.
        async with http(application, ip="198.51.100.24") as other:
            created = await other.post(
                REGISTER,
                json={
                    "username": "mallory",
                    "email": "mallory@example.com",
                    "password": "correct horse battery",
                },
            )
            assert created.status_code == 201, created.text


async def test_register_and_token_spend_from_the_same_ip_bucket(
    connection: AsyncConnection,
) -> None:
    async with running(limited_settings(), connection) as application, http(application) as c:
        registered = await c.post(
            REGISTER,
            json={
                "username": "carol",
                "email": "carol@example.com",
                "password": "correct horse battery",
            },
        )
        assert registered.status_code == 201, registered.text
        assert registered.headers["ratelimit"] == '"auth";r=2;t=10'
        form = await c.post(TOKEN, data={"username": "carol", "password": "correct horse battery"})
        assert form.status_code == 200, form.text
        assert form.headers["ratelimit"] == '"auth";r=1;t=20'
        login = await c.post(LOGIN, json={"username": "carol", "password": "correct horse battery"})
        assert login.status_code == 200, login.text
        assert login.headers["ratelimit"] == '"auth";r=0;t=30'
        assert_rate_limited(await bad_login(c), retry_after=10)

        # Refresh is not one of the limited endpoints: an existing login keeps working.
        refreshed = await c.post(
            "/api/v1/auth/refresh", json={"refresh_token": login.json()["refresh_token"]}
        )
        assert refreshed.status_code == 200, refreshed.text


# --- client IP behind proxies ---------------------------------------------------------------------


async def test_forwarded_client_behind_a_trusted_proxy_has_its_own_bucket(
    connection: AsyncConnection,
) -> None:
    settings = limited_settings(trusted_proxies=["10.0.0.0/8"])
    async with running(settings, connection) as application, http(application, "10.1.2.3") as c:
        first_client = {"X-Forwarded-For": "198.51.100.1, 10.0.0.9"}
        for k in range(1, 4):
            response = await bad_login(c, headers=first_client)
            assert response.status_code == 401
            assert response.headers["ratelimit"] == f'"auth";r={3 - k};t={10 * k}'
        assert_rate_limited(await bad_login(c, headers=first_client), retry_after=10)

        # Another client behind the same proxy is not affected.
        second_client = {"X-Forwarded-For": "198.51.100.2, 10.0.0.9"}
        other = await bad_login(c, headers=second_client)
        assert other.status_code == 401
        assert other.headers["ratelimit"] == '"auth";r=2;t=10'

        # The first client cannot escape by forging hops to the left of what the proxy appended.
        forged = {"X-Forwarded-For": "192.0.2.77, 198.51.100.1, 10.0.0.9"}
        assert_rate_limited(await bad_login(c, headers=forged), retry_after=10)
        emptied = time.monotonic()

    # Coming through another trusted proxy, it is still the same client and the same bucket
    # (starting a second app takes a moment of the bucket's refill, more on a busy machine).
    async with running(settings, connection) as application, http(application, "10.200.0.1") as c:
        via_other_proxy = await bad_login(c, headers={"X-Forwarded-For": "198.51.100.1"})
        elapsed = time.monotonic() - emptied
        assert_rate_limited(via_other_proxy, retry_after=10, seconds_since_full=elapsed)


async def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(
    connection: AsyncConnection,
) -> None:
    settings = limited_settings(trusted_proxies=["10.0.0.0/8"])
    async with running(settings, connection) as application:
        async with http(application, "203.0.113.50") as spoofer:
            for k in range(1, 4):
                spoofed = {"X-Forwarded-For": f"198.51.100.{10 + k}"}
                response = await bad_login(spoofer, headers=spoofed)
                assert response.status_code == 401
                assert response.headers["ratelimit"] == f'"auth";r={3 - k};t={10 * k}'
            fresh_looking = {"X-Forwarded-For": "198.51.100.99"}
            assert_rate_limited(await bad_login(spoofer, headers=fresh_looking), retry_after=10)

        # Nor were the spoofed addresses charged: the real 198.51.100.11 has a full bucket.
        async with http(application, "198.51.100.11") as victim:
            response = await bad_login(victim)
            assert response.status_code == 401
            assert response.headers["ratelimit"] == '"auth";r=2;t=10'


def make_request(peer: str | None, forwarded_for: str | None = None) -> Request:
    headers = [] if forwarded_for is None else [(b"x-forwarded-for", forwarded_for.encode())]
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": headers,
        "client": None if peer is None else (peer, 5555),
    }
    return Request(scope)


def networks(*cidrs: str) -> list[ratelimit.Network]:
    return [ip_network(cidr) for cidr in cidrs]


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "trusted", "expected"),
    [
        # No trusted proxies configured: the socket peer, whatever the header says.
        ("10.1.2.3", "198.51.100.1", (), "10.1.2.3"),
        ("203.0.113.5", None, (), "203.0.113.5"),
        # Untrusted peer: its header is ignored.
        ("203.0.113.5", "198.51.100.1", ("10.0.0.0/8",), "203.0.113.5"),
        # Trusted peer: the nearest untrusted hop, reading from the right.
        ("10.1.2.3", "198.51.100.1", ("10.0.0.0/8",), "198.51.100.1"),
        ("10.1.2.3", "198.51.100.1, 10.0.0.9", ("10.0.0.0/8",), "198.51.100.1"),
        ("10.1.2.3", "6.6.6.6, 198.51.100.1, 10.0.0.9", ("10.0.0.0/8",), "198.51.100.1"),
        ("10.1.2.3", " 198.51.100.1 ,10.0.0.9 ,", ("10.0.0.0/8",), "198.51.100.1"),
        # Several trusted ranges, chained proxies.
        ("10.1.2.3", "198.51.100.1, 172.16.0.4", ("10.0.0.0/8", "172.16.0.0/12"), "198.51.100.1"),
        # Trusted peer without the header: the peer itself.
        ("10.1.2.3", None, ("10.0.0.0/8",), "10.1.2.3"),
        ("10.1.2.3", "", ("10.0.0.0/8",), "10.1.2.3"),
        # Every hop trusted: the left-most one, the furthest the proxies could see.
        ("10.1.2.3", "10.0.0.1, 10.0.0.9", ("10.0.0.0/8",), "10.0.0.1"),
        # IPv6.
        ("fd00::1", "2001:db8::7, fd00::2", ("fd00::/8",), "2001:db8::7"),
        ("2001:db8::5", "2001:db8::7", ("fd00::/8",), "2001:db8::5"),
        # A single trusted address (not a CIDR).
        ("192.0.2.1", "198.51.100.9", ("192.0.2.1/32",), "198.51.100.9"),
        ("192.0.2.2", "198.51.100.9", ("192.0.2.1/32",), "192.0.2.2"),
    ],
)
def test_client_ip(
    peer: str, forwarded_for: str | None, trusted: tuple[str, ...], expected: str
) -> None:
    assert client_ip(make_request(peer, forwarded_for), networks(*trusted)) == expected


def test_client_ip_without_a_peer_address() -> None:
    assert client_ip(make_request(None), []) == "unknown"
    assert client_ip(make_request(None, "198.51.100.1"), networks("10.0.0.0/8")) == "unknown"


def test_trusted_proxies_setting_accepts_a_comma_separated_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1")
    settings = Settings(_env_file=None)
    assert settings.trusted_proxies == ["10.0.0.0/8", "192.0.2.1"]


# --- shared by every process ----------------------------------------------------------------------


async def test_two_app_instances_share_one_bucket(
    connection: AsyncConnection, alice: UserHandle
) -> None:
    settings = limited_settings()
    async with (
        running(settings, connection) as first_app,
        running(settings, connection) as second_app,
        http(first_app) as first,
        http(second_app) as second,
    ):
        assert services_of(first_app).rate_limiter is not services_of(second_app).rate_limiter
        for k, c in enumerate([first, first, first, second, second], start=1):
            response = await c.get(ME, headers=alice.headers)
            assert response.status_code == 200, response.text
            assert response.headers["ratelimit"] == f'"user";r={5 - k};t={2 * k}'
        assert_rate_limited(await first.get(ME, headers=alice.headers), retry_after=2)
        assert_rate_limited(await second.get(ME, headers=alice.headers), retry_after=2)

        # The per-IP auth bucket is shared the same way.
        for c in (first, second, first):
            assert (await bad_login(c)).status_code == 401
        assert_rate_limited(await bad_login(second), retry_after=10)


async def test_without_redis_each_process_still_limits_in_memory(
    connection: AsyncConnection, alice: UserHandle
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    settings = limited_settings(redis_url=f"redis://127.0.0.1:{closed_port}/0")
    async with running(settings, connection) as application, http(application) as c:
        started = time.monotonic()
        # Reads, writes and the (uncached) stats are all served, not a 5xx.
        responses = [
            await c.get(ME, headers=alice.headers),
            await c.post("/api/v1/tasks", json={"title": "no redis"}, headers=alice.headers),
            await c.get("/api/v1/tasks", headers=alice.headers),
            await c.get("/api/v1/tasks/stats", headers=alice.headers),
            await c.get(ME, headers=alice.headers),
        ]
        assert [r.status_code for r in responses] == [200, 201, 200, 200, 200]
        assert responses[2].json()["total"] == 1
        assert responses[3].json()["total"] == 1
        for k, response in enumerate(responses, start=1):
            assert response.headers["ratelimit-policy"] == '"user";q=5;w=10'
            assert response.headers["ratelimit"] == f'"user";r={5 - k};t={2 * k}'
        assert_rate_limited(await c.get(ME, headers=alice.headers), retry_after=2)
        assert time.monotonic() - started < 3  # a dead Redis costs milliseconds, not seconds


# --- in-memory buckets ----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


def test_local_buckets_admit_the_burst_then_refuse(clock: FakeClock) -> None:
    policy = Policy("user", burst=4, per_minute=60)  # one token a second
    buckets = LocalBuckets()
    decisions = [buckets.take("alice", policy) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, True, False]
    assert [d.remaining for d in decisions] == [3, 2, 1, 0, 0]
    assert [d.seconds_until_full for d in decisions] == [1, 2, 3, 4, 4]
    assert decisions[-1].retry_after == 1
    assert decisions[-1].headers() == [
        (b"ratelimit-policy", b'"user";q=4;w=4'),
        (b"ratelimit", b'"user";r=0;t=4'),
    ]
    # Another key is untouched.
    assert buckets.take("bob", policy).remaining == 3


def test_local_buckets_refill_with_time_up_to_the_burst(clock: FakeClock) -> None:
    policy = Policy("user", burst=3, per_minute=30)  # one token every 2 s
    buckets = LocalBuckets()
    for _ in range(3):
        assert buckets.take("k", policy).allowed
    refused = buckets.take("k", policy)
    assert not refused.allowed
    assert refused.retry_after == 2

    clock.now += 1.0  # half a token
    half = buckets.take("k", policy)
    assert not half.allowed
    assert half.retry_after == 1
    assert half.seconds_until_full == 5

    clock.now += 1.0  # now one whole token
    assert buckets.take("k", policy).allowed
    assert not buckets.take("k", policy).allowed

    clock.now += 3600  # a long pause fills the bucket, but no more than the burst
    after_pause = [buckets.take("k", policy).allowed for _ in range(4)]
    assert after_pause == [True, True, True, False]


def test_local_buckets_are_bounded_and_forget_the_least_recently_used(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ratelimit, "_LOCAL_BUCKETS_MAX", 3)
    policy = Policy("auth", burst=2, per_minute=1)
    buckets = LocalBuckets()
    for key in ("a", "b", "c"):
        buckets.take(key, policy)
        buckets.take(key, policy)  # each bucket empty now
    assert not buckets.take("a", policy).allowed  # "a" is now the most recently used
    buckets.take("d", policy)  # a fourth key pushes out the oldest, "b"
    assert len(buckets._buckets) == 3
    assert buckets.take("b", policy).allowed  # forgotten: starts full again
    assert not buckets.take("a", policy).allowed  # remembered: still empty
    for n in range(50):
        buckets.take(f"ip-{n}", policy)
    assert len(buckets._buckets) == 3


def test_policy_window_is_whole_seconds_to_refill_an_empty_bucket() -> None:
    assert Policy("user", burst=120, per_minute=600).window_seconds == 12
    assert Policy("auth", burst=20, per_minute=20).window_seconds == 60
    assert Policy("user", burst=5, per_minute=7).window_seconds == 43  # 42.86 s rounds up
    assert Policy("user", burst=1, per_minute=6000).window_seconds == 1  # never 0


# --- disabled -------------------------------------------------------------------------------------


async def test_disabled_limits_never_refuse_and_send_no_headers(
    connection: AsyncConnection, alice: UserHandle
) -> None:
    settings = make_settings(
        MAIN_DB,
        rate_limit_enabled=False,
        rate_limit_user_burst=1,
        rate_limit_user_per_minute=1,
        rate_limit_auth_burst=1,
        rate_limit_auth_per_minute=1,
    )
    async with running(settings, connection) as application, http(application) as c:
        for _ in range(6):
            response = await c.get(ME, headers=alice.headers)
            assert response.status_code == 200
            assert "ratelimit" not in response.headers
            assert "ratelimit-policy" not in response.headers
        for _ in range(3):
            response = await bad_login(c)
            assert response.status_code == 401
            assert "ratelimit" not in response.headers
            assert "retry-after" not in response.headers
        login = await c.post(LOGIN, json={"username": "alice", "password": alice.password})
        assert login.status_code == 200
        assert "ratelimit-policy" not in login.headers


# --- real worker processes ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def log_text(path: Path) -> str:
    return path.read_text(errors="replace")


async def wait_until_healthy(
    base_url: str, process: asyncio.subprocess.Process, log_path: Path
) -> None:
    deadline = time.monotonic() + 20
    async with httpx.AsyncClient(base_url=base_url, timeout=1.0) as client:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                pytest.fail(f"taskapi serve exited early:\n{log_text(log_path)}")
            try:
                if (await client.get("/ops/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    pytest.fail(f"taskapi serve did not become healthy:\n{log_text(log_path)}")


@asynccontextmanager
async def serve_two_workers(tmp_path: Path, **variables: str) -> AsyncIterator[str]:
    name = f"taskapi_rl_{uuid.uuid4().hex[:12]}"
    await clone_template(name)
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.upper().startswith(("RATE_LIMIT_", "REDIS_", "TRUSTED_PROXIES"))
        and key.upper()
        not in {"DATABASE_URL", "SECRET_KEY", "ENVIRONMENT", "PORT", "HOST", "WEB_CONCURRENCY"}
    }
    env.update(
        ENVIRONMENT="test",
        SECRET_KEY=SERVER_SECRET,
        DATABASE_URL=database_url(name),
        STORAGE_DIR=str(tmp_path / "storage"),
        LOG_LEVEL="WARNING",
        ARGON2_MEMORY_COST_KIB="1024",
        ARGON2_TIME_COST="1",
        REDIS_KEY_PREFIX=f"rl-test:{uuid.uuid4().hex}:",
        **variables,
    )
    log_path = tmp_path / "server.log"
    try:
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                TASKAPI,
                *("serve", "--port", str(port), "--workers", "2"),
                env=env,
                cwd=tmp_path,
                stdout=log,
                stderr=log,
            )
        try:
            base_url = f"http://127.0.0.1:{port}"
            await wait_until_healthy(base_url, process, log_path)
            yield base_url
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), timeout=10)
                except TimeoutError:
                    process.kill()
                    await process.wait()
    finally:
        await admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_two_worker_processes_admit_one_burst_between_them(
    migrated_databases: None, tmp_path: Path
) -> None:
    limits = {
        "RATE_LIMIT_ENABLED": "true",
        "RATE_LIMIT_USER_BURST": "10",
        "RATE_LIMIT_USER_PER_MINUTE": "6",  # one token every 10 s: no refill during the burst
        "RATE_LIMIT_AUTH_BURST": "50",
    }
    async with serve_two_workers(tmp_path, **limits) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as c:
            credentials = {"username": "worker_user", "password": "correct horse battery"}
            registered = await c.post(
                REGISTER, json={**credentials, "email": "worker_user@example.com"}
            )
            assert registered.status_code == 201, registered.text
            login = await c.post(LOGIN, json=credentials)
            assert login.status_code == 200, login.text
            headers = {"Authorization": f"Bearer {login.json()['access_token']}"}

        # Thirty requests at once, each on its own connection, so both workers take some.
        limits_per_connection = httpx.Limits(max_connections=30, max_keepalive_connections=0)
        async with httpx.AsyncClient(
            base_url=base_url, timeout=10.0, limits=limits_per_connection
        ) as c:
            responses = await asyncio.gather(*(c.get(ME, headers=headers) for _ in range(30)))

    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) == {200, 429}, statuses
    assert 10 <= statuses[200] <= 11, statuses
    for response in responses:
        assert response.headers["ratelimit-policy"] == '"user";q=10;w=100'
        if response.status_code == 429:
            assert response.json()["code"] == "rate_limited"
            assert int(response.headers["retry-after"]) >= 1
    remaining = sorted(
        int(r.headers["ratelimit"].split(";r=")[1].split(";")[0])
        for r in responses
        if r.status_code == 200
    )
    # Every admitted request saw its own count down, as if one process had served them all.
    assert set(remaining) == set(range(10)), remaining
