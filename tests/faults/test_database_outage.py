"""PostgreSQL going away costs requests a fast, retryable 503, never a 500 or a hang, and the app
recovers by itself when it is back (docs/api.md, "Errors": 503 `database_unavailable`;
docs/operations.md, "When a dependency goes away").

The app runs against a throwaway cluster (tests/fault_servers.py) that is stopped hard and started
again while requests flow; the shared PostgreSQL on 5432 is never touched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.pool import QueuePool

from taskapi.kit import db
from taskapi.kit.services import services_of
from tests.conftest import UserHandle, register_and_login
from tests.fault_servers import PostgresCluster, app_on_cluster, started_cluster

TASKS = "/api/v1/tasks"
PROBLEM = "application/problem+json"
# Every request is answered within this, outage or not: a 503 must be quick, not a timeout.
ANSWER_WITHIN = 4.0
# Once the database accepts connections again, requests succeed within this.
RECOVERY_WITHIN = 5.0
CONNECT_TIMEOUT = 1.0


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[PostgresCluster]:
    async with started_cluster() as server:
        yield server


@pytest.fixture
async def outage_app(cluster: PostgresCluster) -> AsyncIterator[FastAPI]:
    async with app_on_cluster(
        cluster,
        f"outage_{time.monotonic_ns()}",
        database_connect_timeout_seconds=CONNECT_TIMEOUT,
        database_pool_timeout_seconds=2.0,
    ) as application:
        yield application


@pytest.fixture
async def outage_client(outage_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=outage_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@dataclass
class Outcome:
    at: float
    request: str
    status: int
    seconds: float


@dataclass
class Load:
    """A few clients sending a read and a write in turn, recording every answer."""

    client: httpx.AsyncClient
    user: UserHandle
    outcomes: list[Outcome] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def one(self, method: str, url: str, **kwargs: object) -> httpx.Response:
        started = time.monotonic()
        async with asyncio.timeout(ANSWER_WITHIN):
            response = await self.client.request(
                method,
                url,
                headers=self.user.headers,
                **kwargs,  # type: ignore[arg-type]
            )
        elapsed = time.monotonic() - started
        self.outcomes.append(Outcome(started, f"{method} {url}", response.status_code, elapsed))
        assert_expected(response)
        return response

    async def run(self, worker: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            await self.one("POST", TASKS, json={"title": f"w{worker} #{n}"})
            await self.one("GET", TASKS, params={"limit": 5})
            await asyncio.sleep(0.02)

    def statuses_since(self, moment: float) -> list[int]:
        return [o.status for o in self.outcomes if o.at >= moment]


def assert_expected(response: httpx.Response) -> None:
    """A success, or the documented retryable 503; never a 500."""
    if response.status_code in (200, 201):
        return
    assert response.status_code == 503, (response.status_code, response.text)
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["code"] == "database_unavailable", body
    assert body["status"] == 503
    assert int(response.headers["retry-after"]) >= 1


async def seconds_until(predicate: object, within: float) -> float:
    """Poll `predicate()` (an async callable returning bool); seconds it took."""
    started = time.monotonic()
    while True:
        if await predicate():  # type: ignore[operator]
            return time.monotonic() - started
        assert time.monotonic() - started < within, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_requests_get_503_while_postgres_is_down_and_succeed_once_it_is_back(
    cluster: PostgresCluster, outage_client: httpx.AsyncClient
) -> None:
    client = outage_client
    user = await register_and_login(client)
    load = Load(client, user)
    workers = [asyncio.create_task(load.run(i)) for i in range(4)]
    try:

        async def under_way() -> bool:
            return len(load.outcomes) >= 4

        # Load is flowing (on a busy machine the first answers can take more than half a second).
        await seconds_until(under_way, ANSWER_WITHIN)
        assert all(o.status in (200, 201) for o in load.outcomes)

        # -- the database goes away with connections in use and in the pool.
        stopped_at = time.monotonic()
        await cluster.stop("immediate")
        # Requests started before the server was gone may still have succeeded; none after.
        down_at = time.monotonic()
        first_503 = await seconds_until(lambda: _seen(load, stopped_at, 503), ANSWER_WITHIN)
        await asyncio.sleep(1.0)  # requests keep flowing into the outage

        ready = await client.get("/ops/ready")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"] == "unavailable"
        health = await client.get("/ops/health")
        assert health.status_code == 200
        assert health.json() == {"status": "ok"}
        during = load.statuses_since(max(down_at, stopped_at + first_503))
        assert during
        assert set(during) == {503}, during

        # -- it comes back: the same app, no restart, serves again.
        await cluster.start()
        back_at = time.monotonic()
        recovered = await seconds_until(lambda: _seen(load, back_at, 201), RECOVERY_WITHIN)
        await asyncio.sleep(0.5)
    finally:
        load.stop.set()
        results = await asyncio.gather(*workers, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures

    after = [o.status for o in load.outcomes if o.at >= back_at + recovered + 0.1]
    assert after
    assert set(after) <= {200, 201}, after
    slowest = max(o.seconds for o in load.outcomes)
    assert slowest < ANSWER_WITHIN
    assert (await client.get("/ops/ready")).status_code == 200
    # Data written before the outage survived it and the app reads it again.
    listed = await client.get(TASKS, headers=user.headers, params={"limit": 1})
    assert listed.status_code == 200
    assert listed.json()["total"] > 0
    counts = {s: sum(1 for o in load.outcomes if o.status == s) for s in (200, 201, 503)}
    print(
        f"\nDB outage: first 503 {first_503:.2f}s after the stop; requests succeed "
        f"{recovered:.2f}s after the restart; slowest answer {slowest:.2f}s; {counts}"
    )


async def _seen(load: Load, since: float, status: int) -> bool:
    return status in load.statuses_since(since)


async def test_a_request_while_postgres_is_down_is_a_quick_503_and_login_too(
    cluster: PostgresCluster, outage_client: httpx.AsyncClient
) -> None:
    user = await register_and_login(outage_client)
    await cluster.stop("immediate")
    try:
        for method, url, kwargs in (
            ("GET", TASKS, {"headers": user.headers}),
            ("POST", TASKS, {"headers": user.headers, "json": {"title": "lost"}}),
            ("GET", "/api/v1/users/me", {"headers": user.headers}),
            (
                "POST",
                "/api/v1/auth/login",
                {"json": {"username": user.username, "password": user.password}},
            ),
        ):
            started = time.monotonic()
            response = await outage_client.request(method, url, **kwargs)  # type: ignore[arg-type]
            assert time.monotonic() - started < CONNECT_TIMEOUT + 1.0, (method, url)
            assert_expected(response)
            assert response.status_code == 503, (method, url)
    finally:
        await cluster.start()
    again = await outage_client.get(TASKS, headers=user.headers)
    assert again.status_code == 200


async def test_a_restart_costs_one_request_not_one_per_pooled_connection(
    cluster: PostgresCluster,
    outage_app: FastAPI,
    outage_client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection found dead retires every connection opened before it (db.py): otherwise
    each connection waiting in the pool would fail a request of its own after a restart."""
    user = await register_and_login(outage_client)
    # The login is cached now, so the list below is one statement on a pooled connection.
    assert (await outage_client.get(TASKS, headers=user.headers)).status_code == 200
    engine = services_of(outage_app).engine
    async with engine.connect() as a, engine.connect() as b, engine.connect() as c:
        for connection in (a, b, c):
            await connection.execute(text("SELECT 1"))
    assert isinstance(engine.pool, QueuePool)
    assert engine.pool.checkedin() >= 3
    # Fresh enough that no ping would notice: as under steady traffic.
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 3600.0)

    await cluster.restart("immediate")
    statuses = [
        (await outage_client.get(TASKS, headers=user.headers)).status_code for _ in range(4)
    ]
    assert statuses[0] in (200, 503), statuses
    assert statuses[1:] == [200, 200, 200], statuses
