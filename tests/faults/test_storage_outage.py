"""S3 going away never takes the API down with it (docs/api.md, "Attachments";
docs/operations.md, "When a dependency goes away").

The app talks to a real moto server through a TCP link (`Link`, tests/fault_servers.py) that these
tests cut and restore: cutting it closes every open connection and the listening socket, so the
app sees "connection refused", exactly as when the S3 endpoint is down; restoring it reopens the
same port in front of the same moto, whose objects were kept (a restarted moto would have lost
them).

Stopping `ThreadedMotoServer` itself would not do: its `stop()` leaves the listening socket open
(connections hang in the backlog) and keep-alive connections are still served.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskapi.attachments.service import DELETE_OBJECTS
from taskapi.jobs.worker import Worker
from taskapi.kit.services import services_of
from taskapi.storage import STORAGE
from taskapi.storage.local import LocalStorage
from taskapi.wiring import JOBS
from tests.conftest import (
    UserHandle,
    cloned_app,
    register_and_login,
)
from tests.fault_servers import Link, free_port
from tests.storage_fixtures import MotoServer, moto_server

TASKS = "/api/v1/tasks"
FILES = "/api/v1/files"
PROBLEM = "application/problem+json"
# A request that needs storage while it is down fails fast: never a hang.
FAST = 5.0


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_server(free_port()) as server:
        yield server


class Stack:
    def __init__(
        self, app: FastAPI, client: httpx.AsyncClient, link: Link, moto: MotoServer
    ) -> None:
        self.app = app
        self.client = client
        self.link = link
        self.moto = moto
        self.bucket: str = services_of(app).settings.s3_bucket

    def sessions(self) -> async_sessionmaker[AsyncSession]:
        maker: async_sessionmaker[AsyncSession] = services_of(self.app).sessionmaker
        return maker

    def worker(self) -> Worker:
        return Worker(
            services_of(self.app).sessionmaker,
            services_of(self.app).get(STORAGE),
            services_of(self.app).settings,
            JOBS,
        )

    async def jobs(self) -> list[dict[str, Any]]:
        async with self.sessions()() as session:
            rows = await session.execute(text("SELECT * FROM jobs ORDER BY id"))
            return [dict(row._mapping) for row in rows]

    async def storage_key(self, file_id: int) -> str:
        async with self.sessions()() as session:
            key = await session.scalar(
                text("SELECT storage_key FROM attachments WHERE id = :id"), {"id": file_id}
            )
        assert key is not None
        return str(key)

    async def upload(self, user: UserHandle, task_id: int, content: bytes) -> httpx.Response:
        return await self.client.post(
            f"{TASKS}/{task_id}/files",
            files={"file": ("report.txt", content, "text/plain")},
            headers=user.headers,
        )

    async def new_task(self, user: UserHandle, **body: Any) -> dict[str, Any]:
        body.setdefault("title", f"task {uuid.uuid4().hex[:6]}")
        response = await self.client.post(TASKS, json=body, headers=user.headers)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result


@pytest.fixture
async def stack(moto: MotoServer, migrated_databases: None) -> AsyncIterator[Stack]:
    link = Link(moto.port)
    await link.restore()
    try:
        async with cloned_app(
            storage_backend="s3",
            s3_endpoint_url=link.url,
            s3_bucket=f"outage-{uuid.uuid4().hex[:12]}",
        ) as app:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                yield Stack(app, c, link, moto)
    finally:
        await link.cut()


async def timed(request: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    async with asyncio.timeout(FAST * 2):
        response: httpx.Response = await request
    return response, time.monotonic() - started


def assert_storage_unavailable(response: httpx.Response, elapsed: float) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["code"] == "storage_unavailable"
    assert elapsed < FAST, elapsed


async def test_file_endpoints_fail_fast_with_503_while_storage_is_down(stack: Stack) -> None:
    alice = await register_and_login(stack.client)
    task = await stack.new_task(alice)
    uploaded = await stack.upload(alice, task["id"], b"written before the outage\n")
    assert uploaded.status_code == 201, uploaded.text
    file = uploaded.json()
    key = await stack.storage_key(file["id"])

    await stack.link.cut()

    response, elapsed = await timed(stack.upload(alice, task["id"], b"during the outage\n"))
    assert_storage_unavailable(response, elapsed)
    response, elapsed = await timed(
        stack.client.get(f"{FILES}/{file['id']}", headers=alice.headers)
    )
    assert_storage_unavailable(response, elapsed)
    response, elapsed = await timed(
        stack.client.get(f"{FILES}/{file['id']}?redirect=true", headers=alice.headers)
    )
    # A presigned URL is computed locally, without asking S3: the redirect still works.
    assert response.status_code == 307, response.text
    assert elapsed < FAST

    # Listing reads only the database, so it works, and shows no trace of the failed upload.
    response, elapsed = await timed(
        stack.client.get(f"{TASKS}/{task['id']}/files", headers=alice.headers)
    )
    assert response.status_code == 200
    assert [f["id"] for f in response.json()] == [file["id"]]
    task_now = await stack.client.get(f"{TASKS}/{task['id']}", headers=alice.headers)
    assert task_now.json()["attachment_count"] == 1

    # Deleting a file only touches the database; the object waits in the job queue.
    response, elapsed = await timed(
        stack.client.delete(f"{FILES}/{file['id']}", headers=alice.headers)
    )
    assert response.status_code == 204, response.text
    assert elapsed < FAST
    assert [(job["kind"], job["payload"]) for job in await stack.jobs()] == [
        (DELETE_OBJECTS, {"keys": [key]})
    ]
    assert (
        await stack.client.get(f"{FILES}/{file['id']}", headers=alice.headers)
    ).status_code == 404
    assert stack.moto.exists(stack.bucket, key)


async def test_everything_else_keeps_working_while_storage_is_down(stack: Stack) -> None:
    await stack.link.cut()
    client = stack.client
    alice = await register_and_login(client)
    bob = await register_and_login(client)

    refreshed = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": alice.refresh_token}
    )
    assert refreshed.status_code == 200, refreshed.text
    me = await client.get("/api/v1/users/me", headers=alice.headers)
    assert me.status_code == 200
    assert me.json()["username"] == alice.username

    task = await stack.new_task(alice, title="plan", assignee_id=bob.id, due_date="2030-01-01")
    url = f"{TASKS}/{task['id']}"
    got = await client.get(url, headers=alice.headers)
    assert got.status_code == 200
    assert got.json()["title"] == "plan"
    patched = await client.patch(url, json={"status": "in_progress"}, headers=alice.headers)
    assert patched.status_code == 200, patched.text
    assert patched.json()["status"] == "in_progress"
    listed = await client.get(TASKS, headers=alice.headers)
    assert listed.status_code == 200
    assert [t["id"] for t in listed.json()["items"]] == [task["id"]]
    stats = await client.get(f"{TASKS}/stats", headers=alice.headers)
    assert stats.status_code == 200, stats.text
    notes = await client.get("/api/v1/notifications", headers=bob.headers)
    assert notes.status_code == 200
    assert sorted(n["kind"] for n in notes.json()["items"]) == ["task_assigned", "task_updated"]
    deleted = await client.delete(url, headers=alice.headers)
    assert deleted.status_code == 204
    assert (await client.get(url, headers=alice.headers)).status_code == 404
    # A task without files leaves no job behind.
    assert await stack.jobs() == []


async def ready(client: httpx.AsyncClient) -> httpx.Response:
    return await client.get("/ops/ready")


async def test_deleting_a_task_during_an_outage_cleans_up_once_storage_is_back(
    stack: Stack,
) -> None:
    client = stack.client
    alice = await register_and_login(client)
    task = await stack.new_task(alice)
    uploaded = await stack.upload(alice, task["id"], b"outlives the outage\n")
    assert uploaded.status_code == 201, uploaded.text
    key = await stack.storage_key(uploaded.json()["id"])
    assert stack.moto.exists(stack.bucket, key)
    before = await ready(client)
    assert before.status_code == 200
    assert before.json()["checks"]["storage"] == "ok"

    await stack.link.cut()

    response, elapsed = await timed(ready(client))
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert response.json()["checks"] == {"database": "ok", "redis": "ok", "storage": "unavailable"}
    assert elapsed < FAST

    deleted = await client.delete(f"{TASKS}/{task['id']}/force", headers=alice.headers)
    assert deleted.status_code == 204, deleted.text
    assert (await client.get(f"{TASKS}/{task['id']}", headers=alice.headers)).status_code == 404
    (job,) = await stack.jobs()
    assert (job["kind"], job["payload"], job["attempts"]) == (DELETE_OBJECTS, {"keys": [key]}, 0)

    # The worker tries, fails, and schedules a retry; nothing crashes.
    worker = stack.worker()
    started = time.monotonic()
    assert await worker.run_once() == 1
    assert time.monotonic() - started < FAST * 2
    assert (worker.done, worker.failed) == (0, 1)
    (job,) = await stack.jobs()
    assert job["attempts"] == 1
    assert job["failed_at"] is None
    assert job["locked_until"] is None
    assert "StorageUnavailable" in job["last_error"]
    async with stack.sessions()() as session:
        in_future = await session.scalar(
            text("SELECT run_at > now() FROM jobs WHERE id = :id"), {"id": job["id"]}
        )
    assert in_future is True
    assert await worker.run_once() == 0  # backing off
    assert stack.moto.exists(stack.bucket, key)  # nothing was lost, nothing was deleted

    await stack.link.restore()

    response = await ready(client)
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "redis": "ok", "storage": "ok"},
    }
    async with stack.sessions()() as session:
        await session.execute(text("UPDATE jobs SET run_at = now() - interval '1 second'"))
        await session.commit()
    assert await worker.run_once() == 1
    assert (worker.done, worker.failed) == (1, 1)
    assert await stack.jobs() == []
    assert not stack.moto.exists(stack.bucket, key)

    # And files work again.
    other = await stack.new_task(alice)
    again = await stack.upload(alice, other["id"], b"after the outage\n")
    assert again.status_code == 201, again.text
    download = await client.get(f"{FILES}/{again.json()['id']}", headers=alice.headers)
    assert download.status_code == 200
    assert download.content == b"after the outage\n"


async def test_the_app_starts_without_storage_and_uses_it_once_it_appears(
    moto: MotoServer, migrated_databases: None
) -> None:
    link = Link(moto.port)  # not listening yet: the port is closed
    bucket = f"late-{uuid.uuid4().hex[:12]}"
    try:
        async with cloned_app(
            storage_backend="s3", s3_endpoint_url=link.url, s3_bucket=bucket
        ) as app:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                stack = Stack(app, c, link, moto)
                response = await ready(c)
                assert response.status_code == 200
                assert response.json()["status"] == "degraded"
                assert response.json()["checks"]["storage"] == "unavailable"
                alice = await register_and_login(c)
                task = await stack.new_task(alice)
                response, elapsed = await timed(stack.upload(alice, task["id"], b"early\n"))
                assert_storage_unavailable(response, elapsed)

                # Storage comes up (its bucket created by whoever runs it).
                moto.client().create_bucket(Bucket=bucket)
                await link.restore()
                response = await ready(c)
                assert response.json()["checks"]["storage"] == "ok"
                uploaded = await stack.upload(alice, task["id"], b"late\n")
                assert uploaded.status_code == 201, uploaded.text
                key = await stack.storage_key(uploaded.json()["id"])
                assert moto.exists(bucket, key)
    finally:
        await link.cut()


async def test_local_storage_readiness_logs_the_directory_it_cannot_use(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # /ops/ready only says "unavailable"; the log must say which directory and why (in the image
    # that was a STORAGE_DIR the app user could not create).
    occupied = tmp_path / "a-file"
    occupied.write_text("where the storage directory should be")
    caplog.set_level(logging.WARNING, logger="taskapi.storage")
    assert await LocalStorage(occupied / "storage").check() is False
    assert f"local storage {occupied / 'storage'} unavailable" in caplog.text
    caplog.clear()
    assert await LocalStorage(tmp_path / "storage").check() is True
    assert "local storage" not in caplog.text
