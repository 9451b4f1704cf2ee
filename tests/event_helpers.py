"""Following the change feed in tests: cursors, pages, settling, and a follower's copy."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from taskapi.kit.services import services_of
from tests.conftest import UserHandle

EVENTS = "/api/v1/events"
ENDS_COPY = {"task.deleted", "task.purged", "task.access_lost"}


def position(cursor: str) -> tuple[int, int]:
    """The (xid, id) a feed cursor points at (its payload is signed, not secret)."""
    body = cursor.split(".", 1)[0]
    values = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))["v"]
    return int(values[0]), int(values[1])


async def now_cursor(client: httpx.AsyncClient, user: UserHandle) -> str:
    response = await client.get(EVENTS, headers=user.headers)
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["items"] == []
    assert page["has_more"] is False
    cursor: str = page["next_cursor"]
    return cursor


async def page(
    client: httpx.AsyncClient, user: UserHandle, cursor: str, limit: int = 100
) -> dict[str, Any]:
    response = await client.get(
        EVENTS, params={"since": cursor, "limit": limit}, headers=user.headers
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def next_xid(app: FastAPI) -> int:
    """The first transaction id not yet assigned: every write made so far has a smaller one."""
    async with services_of(app).sessionmaker() as session:
        return int(
            await session.scalar(text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text"))
        )


async def settle(
    client: httpx.AsyncClient,
    app: FastAPI,
    user: UserHandle,
    cursor: str,
    *,
    limit: int = 100,
    wait_seconds: float = 30.0,
) -> tuple[list[dict[str, Any]], str]:
    """Every event after `cursor` of everything written before this call: follows until the
    cursor passes every transaction id assigned so far (transactions of other tests, in other
    databases of the cluster, may hold the horizon back for a while: it waits for them)."""
    target = (await next_xid(app), 0)
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + wait_seconds
    while True:
        result = await page(client, user, cursor, limit)
        events.extend(result["items"])
        cursor = result["next_cursor"]
        if result["has_more"]:
            continue
        if position(cursor) >= target:
            return events, cursor
        assert time.monotonic() < deadline, "the feed never reached the horizon"
        await asyncio.sleep(0.05)


class Copy:
    """A follower's copy of its tasks: listed, then kept by the feed (by version: an event
    older than what the copy holds, or than a tombstone, changes nothing)."""

    def __init__(self) -> None:
        self.tasks: dict[int, dict[str, Any]] = {}
        self.versions: dict[int, int] = {}

    def load(self, tasks: list[dict[str, Any]]) -> None:
        for task in tasks:
            self.tasks[task["id"]] = task
            self.versions[task["id"]] = task["version"]

    def apply(self, event: dict[str, Any]) -> None:
        task = event.get("task")
        if event.get("task_id") is None:
            return
        if event["type"] == "task.purged":  # gone for good: nothing can bring it back
            self.tasks.pop(event["task_id"], None)
            self.versions[event["task_id"]] = 2**62
            return
        assert task is not None, event
        task_id, version = event["task_id"], task["version"]
        known = self.versions.get(task_id)
        if event["type"] in ENDS_COPY:
            if known is None or version >= known:
                self.tasks.pop(task_id, None)
                self.versions[task_id] = version
        elif known is None or version > known:
            self.tasks[task_id] = task
            self.versions[task_id] = version


async def list_all(client: httpx.AsyncClient, user: UserHandle) -> list[dict[str, Any]]:
    """Every task `user` sees (GET /tasks, page by page)."""
    tasks: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    while True:
        response = await client.get("/api/v1/tasks", params=params, headers=user.headers)
        assert response.status_code == 200, response.text
        body = response.json()
        tasks.extend(body["items"])
        if body["next_cursor"] is None:
            return tasks
        params = {"limit": 100, "cursor": body["next_cursor"]}
