"""GET /events/stream across real `taskapi serve` processes sharing one database: a stream on one
process gets every event written through the other within a second of its commit (the
wake-up is PostgreSQL LISTEN/NOTIFY); and SIGTERM ends open streams at once, so the drain
never waits on them."""

from __future__ import annotations

import asyncio
import math
import signal
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import register_and_login
from tests.deploy.test_cli_and_socket import (
    TASKAPI,
    _wait_until_healthy,
    cli_env,
    free_port,
    log_text,
)
from tests.fault_servers import PostgresCluster
from tests.sse_helpers import STREAM, messages

EVENTS = 200
WRITERS = 4
MAX_ARRIVAL_SECONDS = 1.0
# uvicorn's timeout_graceful_shutdown in `taskapi serve` is 30 s: open streams must not use it.
SIGTERM_EXIT_SECONDS = 5.0


@pytest.fixture
async def database() -> AsyncIterator[str]:
    """A database URL on a private PostgreSQL cluster: the feed serves events once every
    transaction of the *cluster* that began before them has ended (docs/sync.md), and the
    shared server carries the other tests' open transactions, which would measure them, not
    the stream."""
    cluster = PostgresCluster()
    try:
        await cluster.start()
        yield await cluster.create_database(f"taskapi_sse_{uuid.uuid4().hex[:10]}")
    finally:
        await cluster.destroy()


@asynccontextmanager
async def server(
    database: str, tmp_path: Path, name: str
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / f"{name}.log"
    env = cli_env(
        DATABASE_URL=database,
        STORAGE_DIR=str(tmp_path / "storage"),
        RATE_LIMIT_ENABLED="false",
        WORKER_EMBEDDED="false",
        ARGON2_MEMORY_COST_KIB="1024",
        ARGON2_TIME_COST="1",
        EVENT_STREAM_HEARTBEAT_SECONDS="0.5",
        LOG_LEVEL="INFO",
    )
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            TASKAPI, "serve", "--port", str(port), env=env, cwd=tmp_path, stdout=log, stderr=log
        )
    try:
        await _wait_until_healthy(base_url, process, log_path)
        yield base_url, process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1)]


async def test_events_written_on_one_process_reach_a_stream_on_another_within_a_second(
    database: str, tmp_path: Path
) -> None:
    async with (
        server(database, tmp_path, "a") as (url_a, _),
        server(database, tmp_path, "b") as (url_b, _),
        httpx.AsyncClient(base_url=url_a, timeout=20.0) as on_a,
        httpx.AsyncClient(base_url=url_b, timeout=20.0) as on_b,
    ):
        user = await register_and_login(on_b)
        # Committed before the stream opens: the stream starts after them.
        response = await on_b.post("/api/v1/tasks", json={"title": "before"}, headers=user.headers)
        assert response.status_code == 201
        arrived: dict[int, float] = {}
        all_arrived = asyncio.Event()
        stream_open = asyncio.Event()

        async def follow() -> None:
            async with on_a.stream("GET", STREAM, headers=user.headers) as response:
                assert response.status_code == 200
                stream_open.set()
                async for message in messages(response):
                    if message.event == "task.created":
                        task = message.data["task"]
                        if task["title"] != "before":
                            arrived[task["id"]] = time.monotonic()
                    if len(arrived) == EVENTS:
                        all_arrived.set()
                        return

        follower = asyncio.create_task(follow())
        await asyncio.wait_for(stream_open.wait(), 10)
        # The first read of the stream is done once its headers are out; give the listener
        # no head start beyond that.
        sent: dict[int, float] = {}
        numbers = iter(range(EVENTS))

        async def write() -> None:
            for n in numbers:
                # The commit happens inside the request: its start bounds it from below, so
                # the latencies measured here are upper bounds.
                started = time.monotonic()
                created = await on_b.post(
                    "/api/v1/tasks", json={"title": f"t{n}"}, headers=user.headers
                )
                assert created.status_code == 201, created.text
                sent[created.json()["id"]] = started
                await asyncio.sleep(0.01)

        await asyncio.gather(*(write() for _ in range(WRITERS)))
        await asyncio.wait_for(all_arrived.wait(), 10)
        await follower

    assert set(arrived) == set(sent)
    latencies = [arrived[task_id] - sent[task_id] for task_id in sent]
    p50, p99, worst = percentile(latencies, 0.5), percentile(latencies, 0.99), max(latencies)
    print(
        f"\nSSE across processes, {len(latencies)} events: commit->arrival "
        f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {worst * 1000:.1f} ms"
    )
    assert worst < MAX_ARRIVAL_SECONDS, latencies


async def test_sigterm_ends_open_streams_and_the_server_exits_promptly(
    database: str, tmp_path: Path
) -> None:
    async with (
        server(database, tmp_path, "draining") as (base_url, process),
        httpx.AsyncClient(base_url=base_url, timeout=20.0) as client,
    ):
        user = await register_and_login(client)
        opened = 0
        all_open = asyncio.Event()
        ended: list[str] = []

        async def hold_stream() -> None:
            nonlocal opened
            async with client.stream("GET", STREAM, headers=user.headers) as response:
                assert response.status_code == 200
                opened += 1
                if opened == 3:
                    all_open.set()
                try:
                    async for _ in messages(response):
                        pass
                    ended.append("closed")
                except httpx.HTTPError as error:
                    ended.append(type(error).__name__)

        streams = [asyncio.create_task(hold_stream()) for _ in range(3)]
        await asyncio.wait_for(all_open.wait(), 10)
        sigterm_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(process.wait(), 35)
        exit_seconds = time.monotonic() - sigterm_at
        await asyncio.wait_for(asyncio.gather(*streams), 5)

    log = log_text(tmp_path / "draining.log")
    print(f"\nSIGTERM with 3 open streams: exited in {exit_seconds:.2f} s")
    assert returncode == 0, log
    assert "Traceback" not in log, log
    assert exit_seconds < SIGTERM_EXIT_SECONDS, log
    # Each stream was ended by the server with a proper end of the response, not cut.
    assert ended == ["closed"] * 3
