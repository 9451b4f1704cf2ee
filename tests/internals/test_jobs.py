"""Background jobs (docs/operations.md, "Background jobs"): the durable queue in PostgreSQL, the
deletion of stored objects after files, tasks and accounts are deleted, the orphan sweep, the
due-soon notifications and the stand-alone `taskapi worker` process.

Every test runs the app on its own freshly cloned database with real commits, because the worker
uses sessions of its own; jobs are run explicitly with `Worker.run_once()`. The S3 backend is a
real moto server on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskapi.attachments.jobs import SWEEP_ORPHANS
from taskapi.attachments.jobs import delete_objects as delete_objects_handler
from taskapi.attachments.service import DELETE_OBJECTS
from taskapi.events.jobs import PURGE_EVENTS
from taskapi.jobs import queue
from taskapi.jobs.registry import JobContext, JobRegistry
from taskapi.jobs.worker import Worker
from taskapi.kit.db import create_engine, create_sessionmaker
from taskapi.kit.services import services_of
from taskapi.notifications.jobs import DUE_SOON
from taskapi.storage import STORAGE, new_object_key
from taskapi.tasks.jobs import FOLD_TASK_STATS, PURGE_TRASH
from taskapi.webhooks.jobs import PURGE_PINGS
from taskapi.wiring import EXPIRE_IDEMPOTENCY_KEYS, JOBS
from tests.conftest import (
    UserHandle,
    admin_execute,
    clone_template,
    cloned_app,
    database_url,
    make_settings,
    register_and_login,
)
from tests.fault_servers import free_port
from tests.storage_fixtures import MotoServer, moto_server

TASKS = "/api/v1/tasks"
FILES = "/api/v1/files"
TINY = 0.001  # seconds: lets "now" move past a run_at that is exactly now
PERIODIC = sorted(
    [
        DUE_SOON,
        EXPIRE_IDEMPOTENCY_KEYS,
        FOLD_TASK_STATS,
        SWEEP_ORPHANS,
        PURGE_EVENTS,
        PURGE_TRASH,
        PURGE_PINGS,
    ]
)


# --- moto (S3) -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoServer]:
    with moto_server(free_port()) as server:
        yield server


@asynccontextmanager
async def client_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture
async def app(migrated_databases: None) -> AsyncIterator[FastAPI]:
    async with cloned_app() as application:
        yield application


def sessions(app: FastAPI) -> async_sessionmaker[AsyncSession]:
    maker: async_sessionmaker[AsyncSession] = services_of(app).sessionmaker
    return maker


def worker_for(app: FastAPI, **settings: Any) -> Worker:
    config = (
        services_of(app).settings.model_copy(update=settings)
        if settings
        else services_of(app).settings
    )
    return Worker(services_of(app).sessionmaker, services_of(app).get(STORAGE), config, JOBS)


async def run_due_jobs(worker: Worker) -> int:
    total = 0
    while ran := await worker.run_once():
        total += ran
    return total


async def jobs(app: FastAPI, kind: str | None = None) -> list[dict[str, Any]]:
    async with sessions(app)() as session:
        rows = await session.execute(
            text("SELECT * FROM jobs WHERE (:kind)::text IS NULL OR kind = :kind ORDER BY id"),
            {"kind": kind},
        )
        return [dict(row._mapping) for row in rows]


async def sql(app: FastAPI, statement: str, **params: Any) -> None:
    async with sessions(app)() as session:
        await session.execute(text(statement), params)
        await session.commit()


class Backend:
    """Where the app of a test keeps its objects, looked at from outside the app."""

    def __init__(self, app: FastAPI, moto: MotoServer | None) -> None:
        self.app = app
        self.moto = moto
        self.settings = services_of(app).settings

    def exists(self, key: str) -> bool:
        if self.moto is None:
            return (Path(self.settings.storage_dir) / key).is_file()
        return self.moto.exists(self.settings.s3_bucket, key)

    def keys(self) -> set[str]:
        if self.moto is None:
            base = Path(self.settings.storage_dir)
            return {
                p.relative_to(base).as_posix()
                for p in (base / "attachments").rglob("*")
                if p.is_file()
            }
        return set(self.moto.keys(self.settings.s3_bucket))

    def put(self, key: str, data: bytes, *, age_seconds: float = 0) -> None:
        """Write an object behind the app's back (an orphan), optionally backdated (local)."""
        if self.moto is None:
            path = Path(self.settings.storage_dir) / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            if age_seconds:
                then = time.time() - age_seconds
                os.utime(path, (then, then))
            return
        self.moto.client().put_object(Bucket=self.settings.s3_bucket, Key=key, Body=data)

    def age(self, key: str, seconds: float) -> None:
        if self.moto is None:
            then = time.time() - seconds
            os.utime(Path(self.settings.storage_dir) / key, (then, then))


@pytest.fixture(params=["local", "s3"])
async def storage_app(
    request: pytest.FixtureRequest, migrated_databases: None
) -> AsyncIterator[tuple[FastAPI, Backend]]:
    if request.param == "local":
        async with cloned_app() as application:
            yield application, Backend(application, None)
        return
    server: MotoServer = request.getfixturevalue("moto")
    async with cloned_app(
        storage_backend="s3",
        s3_endpoint_url=server.url,
        s3_bucket=f"jobs-{uuid.uuid4().hex[:12]}",
    ) as application:
        yield application, Backend(application, server)


async def upload(
    client: httpx.AsyncClient, user: UserHandle, task_id: int, content: bytes
) -> dict[str, Any]:
    response = await client.post(
        f"{TASKS}/{task_id}/files",
        files={"file": ("notes.txt", content, "text/plain")},
        headers=user.headers,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def new_task(client: httpx.AsyncClient, user: UserHandle, **body: Any) -> dict[str, Any]:
    body.setdefault("title", f"task {uuid.uuid4().hex[:6]}")
    response = await client.post(TASKS, json=body, headers=user.headers)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def storage_key(app: FastAPI, file_id: int) -> str:
    async with sessions(app)() as session:
        key = await session.scalar(
            text("SELECT storage_key FROM attachments WHERE id = :id"), {"id": file_id}
        )
    assert key is not None
    return str(key)


def pending_keys(rows: list[dict[str, Any]]) -> set[str]:
    return {key for row in rows for key in row["payload"]["keys"]}


# --- the queue -----------------------------------------------------------------------------------


async def test_a_job_exists_exactly_when_its_transaction_commits(app: FastAPI) -> None:
    async with sessions(app)() as session:
        await queue.enqueue(session, "rolled_back", {"n": 1})
        await session.rollback()
    async with sessions(app)() as session:
        await queue.enqueue(session, "committed", {"n": 2})
        await session.commit()

    assert [row["kind"] for row in await jobs(app)] == ["committed"]
    async with sessions(app)() as session:
        first = await queue.claim(session, 10, queue.utcnow() + timedelta(seconds=TINY))
        await session.commit()
    async with sessions(app)() as session:
        second = await queue.claim(session, 10, queue.utcnow() + timedelta(seconds=TINY))
        await session.commit()
    assert [(job.kind, job.payload, job.attempts) for job in first] == [("committed", {"n": 2}, 1)]
    assert second == []


async def test_concurrent_claims_never_get_the_same_job(app: FastAPI) -> None:
    async with sessions(app)() as session:
        for n in range(20):
            await queue.enqueue(session, "work", {"n": n})
        await session.commit()
    now = queue.utcnow() + timedelta(seconds=TINY)

    # One worker holds its claim (transaction open); another must skip those rows, not wait.
    async with sessions(app)() as holder, sessions(app)() as other:
        held = await queue.claim(holder, 5, now)
        async with asyncio.timeout(3):
            rest = await queue.claim(other, 100, now)
        await holder.commit()
        await other.commit()
    assert len(held) == 5
    assert len(rest) == 15
    assert not {job.id for job in held} & {job.id for job in rest}

    # Leases expired: two workers racing for the same 20 jobs still split them.
    later = now + queue.LEASE + timedelta(seconds=1)

    async def claim_in_own_session(limit: int) -> set[int]:
        async with sessions(app)() as session:
            claimed = await queue.claim(session, limit, later)
            await asyncio.sleep(0.05)  # keep the rows locked while the other one claims
            await session.commit()
            return {job.id for job in claimed}

    a, b = await asyncio.gather(claim_in_own_session(12), claim_in_own_session(12))
    assert not a & b
    assert len(a | b) == 20


async def test_a_job_whose_lease_ran_out_is_claimed_again(app: FastAPI) -> None:
    """A worker that died mid-job leaves a lease behind; the job is not lost."""
    async with sessions(app)() as session:
        await queue.enqueue(session, "work", {"n": 1})
        await session.commit()
    now = queue.utcnow() + timedelta(seconds=TINY)
    async with sessions(app)() as session:
        (job,) = await queue.claim(session, 10, now)
        await session.commit()
    # The "dead" worker never completes or fails it. While the lease holds, nobody gets it ...
    async with sessions(app)() as session:
        assert await queue.claim(session, 10, now + queue.LEASE - timedelta(seconds=1)) == []
        await session.rollback()
    # ... and once it has run out, the next worker does.
    async with sessions(app)() as session:
        again = await queue.claim(session, 10, now + queue.LEASE + timedelta(seconds=1))
        await session.commit()
    assert [(j.id, j.attempts) for j in again] == [(job.id, 2)]


async def test_failures_retry_with_exponential_backoff_then_give_up(app: FastAPI) -> None:
    calls: list[dict[str, Any]] = []

    async def broken(ctx: JobContext, payload: dict[str, Any]) -> None:
        calls.append(payload)
        raise RuntimeError("storage said no")

    async with sessions(app)() as session:
        await queue.enqueue(session, "broken", {"n": 1})
        await session.commit()
    await sql(app, "UPDATE jobs SET max_attempts = 3")
    worker = Worker(
        services_of(app).sessionmaker,
        services_of(app).get(STORAGE),
        services_of(app).settings,
        JobRegistry(handlers={"broken": broken}),
    )

    for attempt in (1, 2):
        started = queue.utcnow()
        assert await worker.run_once() == 1
        (row,) = await jobs(app)
        assert row["attempts"] == attempt
        assert row["failed_at"] is None
        assert row["locked_until"] is None
        assert row["last_error"] == "RuntimeError: storage said no"
        delay = (row["run_at"] - started).total_seconds()
        assert 2**attempt - 0.5 <= delay <= 2**attempt + 2, delay
        # Not due yet: the worker leaves it alone.
        assert await worker.run_once() == 0
        await sql(app, "UPDATE jobs SET run_at = now() - interval '1 second'")

    assert await worker.run_once() == 1
    (row,) = await jobs(app)
    assert row["attempts"] == 3
    assert row["failed_at"] is not None  # kept for a person to look at
    assert len(calls) == 3
    async with sessions(app)() as session:
        assert await queue.claim(session, 10, queue.utcnow() + timedelta(days=30)) == []
        await session.rollback()
    assert worker.failed == 3
    assert await queue_counts(app) == {"queued": 0, "failed": 1}


async def queue_counts(app: FastAPI) -> dict[str, int]:
    async with sessions(app)() as session:
        return await queue.counts(session)


def test_backoff_doubles_and_is_capped() -> None:
    assert [queue.backoff(n).total_seconds() for n in (1, 2, 3, 10)] == [2, 4, 8, 1024]
    assert queue.backoff(40) == queue.MAX_BACKOFF


async def test_a_job_with_a_pending_dedupe_key_is_enqueued_once(app: FastAPI) -> None:
    for n in range(3):
        async with sessions(app)() as session:
            await queue.enqueue(session, "sweep", {"n": n}, dedupe_key="only-one")
            await session.commit()
    (row,) = await jobs(app)
    assert row["payload"] == {"n": 0}

    # Once it has run (and is gone), the key is free again.
    async with sessions(app)() as session:
        await queue.complete(session, row["id"])
        await session.commit()
    async with sessions(app)() as session:
        await queue.enqueue(session, "sweep", {"n": 9}, dedupe_key="only-one")
        await queue.enqueue(session, "other", dedupe_key=None)
        await queue.enqueue(session, "other", dedupe_key=None)
        await session.commit()
    assert sorted((r["kind"], r["payload"].get("n")) for r in await jobs(app)) == [
        ("other", None),
        ("other", None),
        ("sweep", 9),
    ]


async def test_periodic_jobs_are_kept_scheduled_exactly_once(app: FastAPI) -> None:
    worker = worker_for(
        app,
        orphan_sweep_interval_seconds=600,
        due_soon_interval_seconds=60,
        idempotency_sweep_interval_seconds=1800,
    )
    started = queue.utcnow()
    for _ in range(3):
        await worker.schedule_periodic()
    rows = await jobs(app)
    assert sorted(row["kind"] for row in rows) == PERIODIC
    by_kind = {row["kind"]: row for row in rows}
    assert 599 <= (by_kind[SWEEP_ORPHANS]["run_at"] - started).total_seconds() <= 605
    assert 59 <= (by_kind[DUE_SOON]["run_at"] - started).total_seconds() <= 65
    assert 1799 <= (by_kind[EXPIRE_IDEMPOTENCY_KEYS]["run_at"] - started).total_seconds() <= 1805
    # Not due: nothing runs, and scheduling again still adds nothing.
    assert await worker.run_once() == 0
    await worker.schedule_periodic()
    assert len(await jobs(app)) == len(PERIODIC)

    # Once the due-soon job has run, the next schedule_periodic puts a new one in line.
    await sql(app, "UPDATE jobs SET run_at = now() WHERE kind = :kind", kind=DUE_SOON)
    await asyncio.sleep(TINY)
    assert await worker.run_once() == 1
    assert sorted(row["kind"] for row in await jobs(app)) == sorted(set(PERIODIC) - {DUE_SOON})
    await worker.schedule_periodic()
    assert sorted(row["kind"] for row in await jobs(app)) == PERIODIC


async def test_a_periodic_job_that_gave_up_does_not_stop_its_schedule(app: FastAPI) -> None:
    """After a long storage outage the sweep job exhausts its attempts; it is kept for a person
    to look at, but sweeping must go on: the next schedule_periodic enqueues a new one."""

    async def broken(ctx: JobContext, payload: dict[str, Any]) -> None:
        raise OSError("storage is down")

    worker = Worker(
        services_of(app).sessionmaker,
        services_of(app).get(STORAGE),
        services_of(app).settings,
        JobRegistry(handlers=dict.fromkeys(PERIODIC, broken), periodic=JOBS.periodic),
    )
    await worker.schedule_periodic()
    await sql(app, "UPDATE jobs SET max_attempts = 1, run_at = now() - interval '1 second'")
    assert await worker.run_once() == len(PERIODIC)
    assert await queue_counts(app) == {"queued": 0, "failed": len(PERIODIC)}

    await worker.schedule_periodic()
    pending = [row["kind"] for row in await jobs(app) if row["failed_at"] is None]
    assert sorted(pending) == PERIODIC
    assert await queue_counts(app) == {"queued": len(PERIODIC), "failed": len(PERIODIC)}


async def test_a_job_of_an_unknown_kind_fails_without_stopping_the_others(app: FastAPI) -> None:
    async with sessions(app)() as session:
        await queue.enqueue(session, "no_such_kind", {})
        await queue.enqueue(session, DELETE_OBJECTS, {"keys": []})
        await session.commit()
    await asyncio.sleep(TINY)
    worker = worker_for(app)
    assert await worker.run_once() == 2
    (row,) = await jobs(app)
    assert row["kind"] == "no_such_kind"
    assert "no handler" in row["last_error"]
    assert (worker.done, worker.failed) == (1, 1)


# --- object cleanup after deletions --------------------------------------------------------------


async def test_deleting_a_file_deletes_its_object_once_the_worker_runs(
    storage_app: tuple[FastAPI, Backend],
) -> None:
    app, backend = storage_app
    async with client_for(app) as client:
        alice = await register_and_login(client)
        task = await new_task(client, alice)
        gone = await upload(client, alice, task["id"], b"delete me\n")
        kept = await upload(client, alice, task["id"], b"keep me\n")
        gone_key = await storage_key(app, gone["id"])
        kept_key = await storage_key(app, kept["id"])
        assert backend.exists(gone_key)

        response = await client.delete(f"{FILES}/{gone['id']}", headers=alice.headers)
        assert response.status_code == 204
        assert (await client.get(f"{FILES}/{gone['id']}", headers=alice.headers)).status_code == 404

        # The object waits for the worker, and the job that will delete it is in the table.
        assert backend.exists(gone_key)
        (job,) = await jobs(app, DELETE_OBJECTS)
        assert job["payload"] == {"keys": [gone_key]}

        assert await run_due_jobs(worker_for(app)) == 1
        assert not backend.exists(gone_key)
        assert backend.exists(kept_key)
        assert await jobs(app) == []
        download = await client.get(f"{FILES}/{kept['id']}", headers=alice.headers)
        assert download.status_code == 200
        assert download.content == b"keep me\n"


async def test_deleting_a_task_deletes_its_objects_and_no_one_elses(
    storage_app: tuple[FastAPI, Backend],
) -> None:
    app, backend = storage_app
    async with client_for(app) as client:
        alice = await register_and_login(client)
        bob = await register_and_login(client)
        doomed = await new_task(client, alice)
        alices_other = await new_task(client, alice)
        bobs = await new_task(client, bob)
        doomed_keys = [
            await storage_key(app, (await upload(client, alice, doomed["id"], data))["id"])
            for data in (b"one\n", b"two\n", b"three\n")
        ]
        survivors = [
            await storage_key(app, (await upload(client, alice, alices_other["id"], b"a\n"))["id"]),
            await storage_key(app, (await upload(client, bob, bobs["id"], b"b\n"))["id"]),
        ]

        # (to the trash first, where its files stay; then for good)
        response = await client.delete(f"{TASKS}/{doomed['id']}", headers=alice.headers)
        assert response.status_code == 204
        assert await jobs(app, DELETE_OBJECTS) == []
        response = await client.delete(f"{TASKS}/{doomed['id']}/force", headers=alice.headers)
        assert response.status_code == 204
        assert all(backend.exists(key) for key in doomed_keys)
        assert pending_keys(await jobs(app, DELETE_OBJECTS)) == set(doomed_keys)

        await run_due_jobs(worker_for(app))
        assert not any(backend.exists(key) for key in doomed_keys)
        assert all(backend.exists(key) for key in survivors)
        assert backend.keys() == set(survivors)
        assert await jobs(app) == []


async def test_deleting_an_account_deletes_its_objects_and_no_one_elses(
    storage_app: tuple[FastAPI, Backend],
) -> None:
    app, backend = storage_app
    async with client_for(app) as client:
        alice = await register_and_login(client)
        bob = await register_and_login(client)
        alice_keys = []
        for _ in range(2):
            task = await new_task(client, alice)
            file = await upload(client, alice, task["id"], b"alice's\n")
            alice_keys.append(await storage_key(app, file["id"]))
        bobs_task = await new_task(client, bob)
        bobs_file = await upload(client, bob, bobs_task["id"], b"bob's\n")
        bob_key = await storage_key(app, bobs_file["id"])

        response = await client.delete("/api/v1/users/me", headers=alice.headers)
        assert response.status_code == 204
        assert all(backend.exists(key) for key in alice_keys)
        assert pending_keys(await jobs(app, DELETE_OBJECTS)) == set(alice_keys)

        await run_due_jobs(worker_for(app))
        assert backend.keys() == {bob_key}
        assert await jobs(app) == []
        download = await client.get(f"{FILES}/{bobs_file['id']}", headers=bob.headers)
        assert download.status_code == 200
        assert download.content == b"bob's\n"


async def test_running_a_delete_job_twice_is_harmless(
    storage_app: tuple[FastAPI, Backend],
) -> None:
    """A worker may die after deleting the objects but before removing the job."""
    app, backend = storage_app
    async with client_for(app) as client:
        alice = await register_and_login(client)
        task = await new_task(client, alice)
        file = await upload(client, alice, task["id"], b"twice\n")
        key = await storage_key(app, file["id"])
        response = await client.delete(f"{FILES}/{file['id']}", headers=alice.headers)
        assert response.status_code == 204
    (job,) = await jobs(app, DELETE_OBJECTS)
    worker = worker_for(app)

    await delete_objects_handler(worker.context, job["payload"])  # the run that "died"
    assert not backend.exists(key)
    # The lease runs out and the job runs again: the object is already gone, which is fine.
    await sql(app, "UPDATE jobs SET run_at = now() - interval '1 second'")
    assert await worker.run_once() == 1
    assert (worker.done, worker.failed) == (1, 0)
    assert await jobs(app) == []
    assert not backend.exists(key)


# --- orphan sweep --------------------------------------------------------------------------------


async def test_the_orphan_sweep_deletes_only_old_objects_without_a_file(
    storage_app: tuple[FastAPI, Backend],
) -> None:
    app, backend = storage_app
    async with client_for(app) as client:
        alice = await register_and_login(client)
        task = await new_task(client, alice)
        file = await upload(client, alice, task["id"], b"attached\n")
    attached = await storage_key(app, file["id"])
    orphans = [new_object_key() for _ in range(3)]
    for key in orphans:
        backend.put(key, b"nobody's\n", age_seconds=7200)
    backend.age(attached, 7200)
    # On S3 objects cannot be backdated, so the grace period is 0 there; locally it is an hour
    # and the objects above are two hours old.
    grace = 3600 if backend.moto is None else 0
    async with sessions(app)() as session:
        await queue.enqueue(session, SWEEP_ORPHANS)
        await session.commit()
    await asyncio.sleep(TINY)

    assert await run_due_jobs(worker_for(app, orphan_grace_seconds=grace)) == 1
    assert backend.keys() == {attached}
    assert await jobs(app) == []
    async with client_for(app) as client:
        download = await client.get(f"{FILES}/{file['id']}", headers=alice.headers)
    assert download.status_code == 200
    assert download.content == b"attached\n"


async def test_the_orphan_sweep_spares_fresh_objects_that_may_be_uploads_in_flight(
    storage_app: tuple[FastAPI, Backend],
) -> None:
    app, backend = storage_app
    fresh = new_object_key()
    backend.put(fresh, b"still uploading\n")
    old = new_object_key()
    if backend.moto is None:
        backend.put(old, b"abandoned\n", age_seconds=7200)
    worker = worker_for(app, orphan_grace_seconds=3600)
    async with sessions(app)() as session:
        await queue.enqueue(session, SWEEP_ORPHANS)
        await session.commit()
    await asyncio.sleep(TINY)
    assert await run_due_jobs(worker) == 1
    assert backend.exists(fresh)
    if backend.moto is None:  # backdated, so past the grace period: swept in the same run
        assert not backend.exists(old)
    # The same fresh object is swept once the grace period is over.
    async with sessions(app)() as session:
        await queue.enqueue(session, SWEEP_ORPHANS)
        await session.commit()
    await asyncio.sleep(TINY)
    assert await run_due_jobs(worker_for(app, orphan_grace_seconds=0)) == 1
    assert not backend.exists(fresh)


# --- due-soon notifications ----------------------------------------------------------------------


async def due_soon(client: httpx.AsyncClient, user: UserHandle) -> list[int]:
    response = await client.get(
        "/api/v1/notifications", params={"limit": 100}, headers=user.headers
    )
    assert response.status_code == 200, response.text
    return sorted(
        item["task_id"] for item in response.json()["items"] if item["kind"] == "task_due_soon"
    )


async def test_due_soon_notifications_reach_owner_and_assignee_once(app: FastAPI) -> None:
    today = datetime.now(UTC).date()

    def day(offset: int) -> str:
        return (today + timedelta(days=offset)).isoformat()

    async with client_for(app) as client:
        alice = await register_and_login(client)
        bob = await register_and_login(client)
        due_today = await new_task(client, alice, due_date=day(0), assignee_id=bob.id)
        due_tomorrow = await new_task(client, alice, due_date=day(1), status="in_progress")
        await new_task(client, alice, due_date=day(0), status="done", assignee_id=bob.id)
        await new_task(client, alice, due_date=day(1), status="cancelled")
        await new_task(client, alice, due_date=day(5), assignee_id=bob.id)
        await new_task(client, alice)  # no due date
        bobs_own = await new_task(client, bob, due_date=day(1))

        worker = worker_for(app)
        for _ in range(2):  # the second run adds nothing
            async with sessions(app)() as session:
                await queue.enqueue(session, DUE_SOON)
                await session.commit()
            await asyncio.sleep(TINY)
            assert await run_due_jobs(worker) == 1

        assert await due_soon(client, alice) == sorted([due_today["id"], due_tomorrow["id"]])
        assert await due_soon(client, bob) == sorted([due_today["id"], bobs_own["id"]])
        response = await client.get("/api/v1/notifications", headers=alice.headers)
        (item,) = [
            n
            for n in response.json()["items"]
            if n["kind"] == "task_due_soon" and n["task_id"] == due_today["id"]
        ]
        assert item["read"] is False
        assert day(0) in item["message"]
    assert await jobs(app) == []


# --- the `taskapi worker` process ----------------------------------------------------------------


@pytest.fixture
async def cloned_database(migrated_databases: None) -> AsyncIterator[str]:
    name = f"taskapi_jobs_{uuid.uuid4().hex[:10]}"
    await clone_template(name)
    try:
        yield name
    finally:
        await admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_the_worker_command_runs_jobs_and_stops_cleanly_on_sigterm(
    cloned_database: str, tmp_path: Path
) -> None:
    storage_dir = tmp_path / "storage"
    key = new_object_key()
    stored = storage_dir / key
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"to be deleted by the worker process\n")
    env = {
        **os.environ,
        "ENVIRONMENT": "test",
        "SECRET_KEY": "k" * 48,
        "DATABASE_URL": database_url(cloned_database),
        "STORAGE_DIR": str(storage_dir),
        "STORAGE_BACKEND": "local",
        "JOB_POLL_INTERVAL_SECONDS": "0.2",
        "LOG_LEVEL": "INFO",
    }
    executable = Path(sys.executable).with_name("taskapi")  # the venv running the tests
    assert executable.exists(), executable
    log = tmp_path / "worker.log"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            str(executable),
            "worker",
            env=env,
            cwd=tmp_path,  # no stray .env
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        engine = create_engine(make_settings(cloned_database))
        try:
            async with create_sessionmaker(engine)() as session:
                await session.execute(
                    text("INSERT INTO jobs (kind, payload) VALUES (:kind, CAST(:data AS jsonb))"),
                    {"kind": DELETE_OBJECTS, "data": json.dumps({"keys": [key]})},
                )
                await session.commit()
            deadline = time.monotonic() + 10
            while stored.exists() and time.monotonic() < deadline:
                assert process.returncode is None, log.read_text()
                await asyncio.sleep(0.1)
            assert not stored.exists(), log.read_text()
            # The job is gone, and the worker keeps its periodic jobs scheduled.
            deadline = time.monotonic() + 5
            kinds: list[str] = []
            while time.monotonic() < deadline:
                async with create_sessionmaker(engine)() as session:
                    kinds = sorted((await session.scalars(text("SELECT kind FROM jobs"))).all())
                if kinds == PERIODIC:
                    break
                await asyncio.sleep(0.1)
            assert kinds == PERIODIC
        finally:
            await engine.dispose()

        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(5):
            assert await process.wait() == 0, log.read_text()
        assert "worker stopped" in log.read_text()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
