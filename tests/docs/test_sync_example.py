"""docs/sync.md's runnable client (scripts/sync_example.py) against the app, over real commits:
its copy ends equal to GET /tasks, through changes, moves, deletions, a lost access and a 410."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import httpx
from fastapi import FastAPI

from taskapi.events.service import FEED_FINGERPRINT
from taskapi.kit.services import services_of
from tests.conftest import UserHandle, register_and_login
from tests.event_helpers import list_all, position
from tests.task_helpers import TASKS, task_url

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "sync_example.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sync_example", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sync_example"] = module
    spec.loader.exec_module(module)
    return module


async def _caught_up(replica: object, client: httpx.AsyncClient, user: UserHandle) -> None:
    """Sync until the copy is what the server shows (the feed serves an event once every
    older transaction, other tests' included, has ended)."""
    truth: dict[int, dict[str, object]] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        await replica.sync(limit=3)  # type: ignore[attr-defined]
        truth = {t["id"]: t for t in await list_all(client, user)}
        if replica.tasks == truth:  # type: ignore[attr-defined]
            return
        await asyncio.sleep(0.05)
    assert replica.tasks == truth  # type: ignore[attr-defined]


async def test_the_example_client_keeps_an_exact_copy(
    live_client: httpx.AsyncClient, live_app: FastAPI
) -> None:
    sync_example = load_script()
    client = live_client
    alice, bob = await register_and_login(client), await register_and_login(client)
    created = []
    for i in range(5):
        response = await client.post(
            TASKS, json={"title": f"t{i}", "assignee_id": bob.id}, headers=alice.headers
        )
        created.append(response.json())
    replica = sync_example.Replica(client, bob.access_token)
    await replica.sync()
    await _caught_up(replica, client, bob)
    assert set(replica.tasks) == {t["id"] for t in created}
    # Changes, a deletion, a lost access, a new task.
    await client.patch(task_url(created[0]["id"]), json={"title": "new"}, headers=alice.headers)
    await client.delete(task_url(created[1]["id"]), headers=alice.headers)
    await client.post(
        f"{task_url(created[2]['id'])}/assign", json={"assignee_id": None}, headers=alice.headers
    )
    await client.post(TASKS, json={"title": "late", "assignee_id": bob.id}, headers=alice.headers)
    await _caught_up(replica, client, bob)
    assert replica.tasks[created[0]["id"]]["title"] == "new"
    assert created[1]["id"] not in replica.tasks
    assert created[2]["id"] not in replica.tasks
    # Away longer than the retention: 410, and the client lists again.
    codec = services_of(live_app).cursor_codec
    days = services_of(live_app).settings.event_retention_days
    old = int((datetime.now(UTC) - timedelta(days=days + 1)).timestamp())
    replica.cursor = codec.encode([position(replica.cursor)[0], 0, old], FEED_FINGERPRINT)
    await client.patch(task_url(created[3]["id"]), json={"title": "after"}, headers=alice.headers)
    await _caught_up(replica, client, bob)
    assert replica.relists == 1
    assert replica.tasks[created[3]["id"]]["title"] == "after"
