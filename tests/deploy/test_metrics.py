"""GET /ops/metrics as a Prometheus scraper sees it: series by route template, counters that move
with what the service did, and one sum over every worker process of `taskapi serve`."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncConnection

from taskapi.jobs import queue
from taskapi.jobs.registry import JobRegistry
from taskapi.jobs.worker import Worker
from taskapi.kit.services import services_of
from taskapi.storage import STORAGE
from tests.api.test_ratelimit import bad_login, http, limited_settings, running
from tests.conftest import UserHandle, admin_execute, clone_template, database_url
from tests.deploy.test_cli_and_socket import TASKAPI, _wait_until_healthy, cli_env, free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/ops/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


REQUESTS = "taskapi_http_requests_total"


async def test_requests_are_counted_by_route_template_and_status(
    client: httpx.AsyncClient, alice: UserHandle
) -> None:
    task = await client.post("/api/v1/tasks", json={"title": "measured"}, headers=alice.headers)
    task_id = task.json()["id"]
    before = await scrape(client)
    labels = {"method": "GET", "route": "/api/v1/tasks/{task_id}"}

    for _ in range(3):
        ok = await client.get(f"/api/v1/tasks/{task_id}", headers=alice.headers)
        assert ok.status_code == 200
    missing = await client.get("/api/v1/tasks/999999", headers=alice.headers)
    assert missing.status_code == 404
    nowhere = await client.get(f"/no/such/{uuid.uuid4().hex}")
    assert nowhere.status_code == 404

    response = await client.get("/ops/metrics")
    after = parse(response.text)
    assert (
        value(after, REQUESTS, **labels, status="200")
        - value(before, REQUESTS, **labels, status="200")
        == 3
    )
    assert (
        value(after, REQUESTS, **labels, status="404")
        - value(before, REQUESTS, **labels, status="404")
        == 1
    )
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert value(after, REQUESTS, **unmatched) - value(before, REQUESTS, **unmatched) == 1

    duration = "taskapi_http_request_duration_seconds"
    count_delta = value(after, f"{duration}_count", **labels) - value(
        before, f"{duration}_count", **labels
    )
    assert count_delta == 4
    assert value(after, f"{duration}_bucket", **labels, le="+Inf") == value(
        after, f"{duration}_count", **labels
    )
    assert value(after, f"{duration}_sum", **labels) > value(before, f"{duration}_sum", **labels)
    # Templates only: no id ever becomes a label value.
    assert f"/api/v1/tasks/{task_id}" not in response.text
    assert "/no/such/" not in response.text
    for line in ("taskapi_db_pool_connections_in_use", "taskapi_jobs_queued"):
        assert line in response.text


async def test_metrics_need_no_auth_and_are_not_rate_limited(
    connection: AsyncConnection, alice: UserHandle
) -> None:
    async with running(limited_settings(), connection) as application, http(application) as c:
        for _ in range(12):  # far beyond both buckets (5 and 3)
            response = await c.get("/ops/metrics")
            assert response.status_code == 200
            assert "ratelimit" not in response.headers
            assert "taskapi_http_requests_total" in response.text


async def test_rate_limit_refusals_are_counted_by_policy(
    connection: AsyncConnection, alice: UserHandle
) -> None:
    async with running(limited_settings(), connection) as application, http(application) as c:
        before = await scrape(c)
        statuses = [(await bad_login(c)).status_code for _ in range(5)]
        assert statuses == [401, 401, 401, 429, 429]
        for _ in range(6):
            await c.get("/api/v1/auth/me", headers=alice.headers)
        after = await scrape(c)
    name = "taskapi_rate_limited_total"
    assert value(after, name, policy="auth") - value(before, name, policy="auth") == 2
    assert value(after, name, policy="user") - value(before, name, policy="user") == 1


async def test_stats_cache_hits_and_misses_are_counted(
    client: httpx.AsyncClient, alice: UserHandle
) -> None:
    before = await scrape(client)
    first = await client.get("/api/v1/tasks/stats", headers=alice.headers)
    second = await client.get("/api/v1/tasks/stats", headers=alice.headers)
    assert first.json() == second.json()
    after = await scrape(client)
    hits, misses = "taskapi_stats_cache_hits_total", "taskapi_stats_cache_misses_total"
    assert value(after, misses) - value(before, misses) == 1
    assert value(after, hits) - value(before, hits) == 1


async def test_jobs_are_counted_and_the_queue_is_gauged(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    async def fine(_context: Any, _payload: dict[str, Any]) -> None:
        return None

    async def broken(_context: Any, _payload: dict[str, Any]) -> None:
        raise RuntimeError("storage says no")

    async with services_of(app).sessionmaker() as session:
        await queue.enqueue(session, "metrics_ok")
        await queue.enqueue(session, "metrics_ok")
        await queue.enqueue(session, "metrics_broken")
        await session.commit()
    queued = await scrape(client)
    async with services_of(app).sessionmaker() as session:
        counts = await queue.counts(session)
    assert value(queued, "taskapi_jobs_queued") == counts["queued"] >= 3
    assert value(queued, "taskapi_jobs_failed") == counts["failed"]

    worker = Worker(
        services_of(app).sessionmaker,
        services_of(app).get(STORAGE),
        services_of(app).settings,
        JobRegistry(handlers={"metrics_ok": fine, "metrics_broken": broken}),
    )
    assert await worker.run_once() == 3
    after = await scrape(client)
    jobs = "taskapi_jobs_total"
    ok = {"kind": "metrics_ok", "outcome": "done"}
    failed = {"kind": "metrics_broken", "outcome": "failed"}
    assert value(after, jobs, **ok) - value(queued, jobs, **ok) == 2
    assert value(after, jobs, **failed) - value(queued, jobs, **failed) == 1
    # Done jobs left the queue; the failed one waits for its retry.
    assert value(after, "taskapi_jobs_queued") == counts["queued"] - 2


async def test_pool_connections_in_use(app: FastAPI, client: httpx.AsyncClient) -> None:
    name = "taskapi_db_pool_connections_in_use"
    idle = value(await scrape(client), name)
    async with (
        services_of(app).engine.connect() as first,
        services_of(app).engine.connect() as second,
    ):
        assert first is not second
        assert value(await scrape(client), name) == idle + 2
    assert value(await scrape(client), name) == idle


# --- several worker processes ---------------------------------------------------------------------


@pytest.fixture
async def served_by_two_workers(
    migrated_databases: None, tmp_path: Path
) -> AsyncIterator[tuple[str, Path]]:
    name = f"taskapi_metrics_{uuid.uuid4().hex[:12]}"
    port = free_port()
    await clone_template(name)
    log_path = tmp_path / "server.log"
    env = cli_env(
        DATABASE_URL=database_url(name),
        STORAGE_DIR=str(tmp_path / "storage"),
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
        WORKER_EMBEDDED="false",
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    try:
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                TASKAPI, "serve", "--port", str(port), "--workers", "2",
                env=env, cwd=tmp_path, stdout=log, stderr=log,
            )  # fmt: skip
        base_url = f"http://127.0.0.1:{port}"
        try:
            await _wait_until_healthy(base_url, process, log_path)
            yield base_url, log_path
        finally:
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), timeout=15)
                except TimeoutError:
                    process.kill()
                    await process.wait()
    finally:
        await admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_two_workers_are_summed_in_one_scrape(
    served_by_two_workers: tuple[str, Path],
) -> None:
    base_url, log_path = served_by_two_workers
    # A fresh connection per request, so the kernel spreads them over both workers.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0, limits=limits) as client:
        sent = 0
        pids: set[int] = set()
        for _round in range(10):
            responses = await asyncio.gather(*(client.get(f"/probe/{sent + i}") for i in range(40)))
            assert all(r.status_code == 404 for r in responses)
            sent += len(responses)
            await asyncio.sleep(0.2)  # the access records are written after each response
            pids = {
                record["pid"]
                for record in map(json.loads, log_path.read_text().splitlines())
                if record["logger"] == "taskapi.access" and record["route"] == "unmatched"
            }
            if len(pids) >= 2:
                break
        assert len(pids) == 2, "both workers should have served some of the requests"

        # Whichever worker answers the scrape, the count is the sum over both.
        for _ in range(6):
            samples = await scrape(client)
            unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
            assert value(samples, REQUESTS, **unmatched) == sent

    # Every line either process wrote is JSON, uvicorn's own included.
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert any(r["logger"].startswith("uvicorn") for r in records)
    assert {r["pid"] for r in records if r["logger"] == "taskapi.access"} == pids
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") is None
