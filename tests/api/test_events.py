"""The event log (API.md part 2, "Change feed and activity"): an event for every write, with its
`changes` and the task after the change; who sees what; cursor paging; 410; activity; purge.

Over real commits (`live_client`): the feed serves only events of transactions older than every
one still running, which a test's own rolled-back transaction would never be.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import func, select, text

from taskapi.events.jobs import purge_events
from taskapi.events.service import FEED_FINGERPRINT
from taskapi.jobs.registry import JobContext
from taskapi.kit.services import services_of
from taskapi.models import Event, EventRecipient
from taskapi.storage import STORAGE
from tests.conftest import UserHandle, register_and_login
from tests.event_helpers import EVENTS, now_cursor, page, position, settle
from tests.task_helpers import TASKS, assert_problem, task_url

PROJECTS = "/api/v1/projects"


@dataclass
class Env:
    client: httpx.AsyncClient
    app: FastAPI
    alice: UserHandle
    bob: UserHandle

    async def settle(self, user: UserHandle, cursor: str) -> tuple[list[dict[str, Any]], str]:
        return await settle(self.client, self.app, user, cursor)

    async def cursor(self, user: UserHandle) -> str:
        """A cursor past every event so far (a "now" cursor may still be followed by events
        committed before it, of transactions younger than one still running: harmless to a
        copy, but these tests count events)."""
        return (await self.settle(user, await now_cursor(self.client, user)))[1]

    async def task(self, user: UserHandle | None = None, **body: Any) -> dict[str, Any]:
        body.setdefault("title", f"task {uuid.uuid4().hex[:6]}")
        response = await self.client.post(TASKS, json=body, headers=(user or self.alice).headers)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    async def get(self, task_id: int, user: UserHandle | None = None) -> dict[str, Any]:
        response = await self.client.get(task_url(task_id), headers=(user or self.alice).headers)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def project(self, *members: UserHandle) -> int:
        response = await self.client.post(
            PROJECTS, json={"name": f"p {uuid.uuid4().hex[:8]}"}, headers=self.alice.headers
        )
        assert response.status_code == 201, response.text
        project_id: int = response.json()["id"]
        for member in members:
            added = await self.client.put(
                f"{PROJECTS}/{project_id}/members/{member.id}",
                json={"role": "editor"},
                headers=self.alice.headers,
            )
            assert added.status_code == 200, added.text
        return project_id

    async def ok(self, method: str, url: str, user: UserHandle | None = None, **kw: Any) -> Any:
        response = await self.client.request(
            method, url, headers=(user or self.alice).headers, **kw
        )
        assert response.status_code in (200, 201, 204), response.text
        return response.json() if response.status_code != 204 else None


@pytest.fixture
async def env(live_client: httpx.AsyncClient, live_app: FastAPI) -> Env:
    return Env(
        live_client,
        live_app,
        await register_and_login(live_client),
        await register_and_login(live_client),
    )


# --- an event for every write --------------------------------------------------------------------

# What each write does, and the event(s) it must produce for alice: (type, task_id, changes,
# task) — `changes` and `task` compared exactly when given.
Expected = list[tuple[str, int | None, dict[str, Any] | None, dict[str, Any] | None]]
Scenario = Callable[[Env], Awaitable[Expected]]


async def _create(env: Env) -> Expected:
    task = await env.task(title="created", assignee_id=env.bob.id, tags=["a"])
    return [("task.created", task["id"], None, task)]


async def _patch(env: Env) -> Expected:
    task = await env.task(title="before")
    after = await env.ok("PATCH", task_url(task["id"]), json={"title": "after", "priority": "high"})
    changes = {"title": ["before", "after"], "priority": ["medium", "high"]}
    return [("task.updated", task["id"], changes, after)]


async def _put(env: Env) -> Expected:
    task = await env.task(title="old", description="d")
    after = await env.ok("PUT", task_url(task["id"]), json={"title": "new"})
    changes = {"title": ["old", "new"], "description": ["d", None]}
    return [("task.updated", task["id"], changes, after)]


async def _delete(env: Env) -> Expected:
    task = await env.task()
    await env.ok("DELETE", task_url(task["id"]))
    return [("task.deleted", task["id"], None, task)]


async def _transition(env: Env) -> Expected:
    task = await env.task()
    after = await env.ok("POST", f"{task_url(task['id'])}/transition", json={"status": "done"})
    changes = {"status": ["todo", "done"], "completed_at": [None, after["completed_at"]]}
    return [("task.updated", task["id"], changes, after)]


async def _assign(env: Env) -> Expected:
    task = await env.task()
    after = await env.ok("POST", f"{task_url(task['id'])}/assign", json={"assignee_id": env.bob.id})
    return [("task.updated", task["id"], {"assignee_id": [None, env.bob.id]}, after)]


async def _add_tags(env: Env) -> Expected:
    task = await env.task(tags=["a"])
    after = await env.ok("POST", f"{task_url(task['id'])}/tags", json=["b"])
    return [("task.updated", task["id"], {"tags": [["a"], ["a", "b"]]}, after)]


async def _remove_tag(env: Env) -> Expected:
    task = await env.task(tags=["a", "b"])
    after = await env.ok("DELETE", f"{task_url(task['id'])}/tags/a")
    return [("task.updated", task["id"], {"tags": [["a", "b"], ["b"]]}, after)]


async def _bulk(env: Env) -> Expected:
    one, two = await env.task(priority="low"), await env.task(priority="medium")
    await env.ok(
        "PATCH",
        f"{TASKS}/bulk",
        json={"task_ids": [one["id"], two["id"]], "updates": {"priority": "high"}},
    )
    return [
        ("task.updated", one["id"], {"priority": ["low", "high"]}, await env.get(one["id"])),
        ("task.updated", two["id"], {"priority": ["medium", "high"]}, await env.get(two["id"])),
    ]


async def _bulk_status(env: Env) -> Expected:
    one = await env.task()
    await env.ok(
        "POST",
        f"{TASKS}/bulk-status",
        json={"task_ids": [one["id"]], "target_status": "in_progress"},
    )
    return [
        ("task.updated", one["id"], {"status": ["todo", "in_progress"]}, await env.get(one["id"]))
    ]


async def _batch(env: Env) -> Expected:
    """A create, an update of it, a transition and a delete of another: an event each (the
    failing operation none)."""
    other = await env.task(title="other")
    result = await env.ok(
        "POST",
        f"{TASKS}/batch",
        json={
            "operations": [
                {
                    "op": "create",
                    "temp_id": "n",
                    "task": {"title": "new", "assignee_id": env.bob.id},
                },
                {"op": "update", "temp_id": "n", "changes": {"title": "renamed"}},
                {"op": "transition", "task_id": other["id"], "status": "done"},
                {"op": "transition", "task_id": other["id"], "status": "done"},
                {"op": "delete", "task_id": other["id"]},
            ]
        },
    )
    created, renamed, done, _failed, _deleted = result["results"]
    new_id = result["temp_ids"]["n"]
    return [
        ("task.created", new_id, None, created["task"]),
        ("task.updated", new_id, {"title": ["new", "renamed"]}, renamed["task"]),
        (
            "task.updated",
            other["id"],
            {"status": ["todo", "done"], "completed_at": [None, done["task"]["completed_at"]]},
            done["task"],
        ),
        ("task.deleted", other["id"], None, None),
    ]


async def _upload(env: Env) -> Expected:
    task = await env.task()
    file = await env.ok(
        "POST",
        f"{task_url(task['id'])}/files",
        files={"file": ("a.txt", b"x" * 10, "text/plain")},
    )
    attachment = {
        "id": file["id"],
        "filename": "a.txt",
        "content_type": file["content_type"],
        "size": 10,
    }
    changes = {"attachment": [None, attachment], "attachment_count": [0, 1]}
    return [("attachment.added", task["id"], changes, await env.get(task["id"]))]


async def _delete_file(env: Env) -> Expected:
    task = await env.task()
    file = await env.ok(
        "POST",
        f"{task_url(task['id'])}/files",
        files={"file": ("b.txt", b"y" * 3, "text/plain")},
    )
    await env.ok("DELETE", f"/api/v1/files/{file['id']}")
    attachment = {
        "id": file["id"],
        "filename": "b.txt",
        "content_type": file["content_type"],
        "size": 3,
    }
    changes = {"attachment": [attachment, None], "attachment_count": [1, 0]}
    return [("attachment.deleted", task["id"], changes, await env.get(task["id"]))]


async def _project_patch(env: Env) -> Expected:
    project_id = await env.project()
    before = await env.ok("GET", f"{PROJECTS}/{project_id}")
    await env.ok(
        "PATCH", f"{PROJECTS}/{project_id}", json={"name": "renamed " + uuid.uuid4().hex[:6]}
    )
    after = await env.ok("GET", f"{PROJECTS}/{project_id}")
    return [("project.updated", None, {"name": [before["name"], after["name"]]}, None)]


async def _project_delete(env: Env) -> Expected:
    project_id = await env.project()
    task = await env.task(project_id=project_id)
    await env.ok("DELETE", f"{PROJECTS}/{project_id}")
    return [("task.deleted", task["id"], None, task), ("project.deleted", None, None, None)]


async def _member_put(env: Env) -> Expected:
    project_id = await env.project()
    url = f"{PROJECTS}/{project_id}/members/{env.bob.id}"
    await env.ok("PUT", url, json={"role": "viewer"})
    await env.ok("PUT", url, json={"role": "editor"})
    return [
        (
            "project.member_added",
            None,
            {"user_id": [None, env.bob.id], "role": [None, "viewer"]},
            None,
        ),
        (
            "project.member_role_changed",
            None,
            {"user_id": [env.bob.id, env.bob.id], "role": ["viewer", "editor"]},
            None,
        ),
    ]


async def _member_delete(env: Env) -> Expected:
    project_id = await env.project(env.bob)
    task = await env.task(project_id=project_id, assignee_id=env.bob.id)
    await env.ok("DELETE", f"{PROJECTS}/{project_id}/members/{env.bob.id}")
    return [
        (
            "task.updated",
            task["id"],
            {"assignee_id": [env.bob.id, None]},
            await env.get(task["id"]),
        ),
        (
            "project.member_removed",
            None,
            {"user_id": [env.bob.id, None], "role": ["editor", None]},
            None,
        ),
    ]


async def _delete_account(env: Env) -> Expected:
    """Another account goes: its task assigned to alice goes with it (alice is told)."""
    carol = await register_and_login(env.client)
    task = await env.task(carol, assignee_id=env.alice.id)
    mine = await env.task(assignee_id=carol.id)
    await env.ok("DELETE", "/api/v1/users/me", carol)
    return [
        ("task.deleted", task["id"], None, task),
        ("task.updated", mine["id"], {"assignee_id": [carol.id, None]}, await env.get(mine["id"])),
    ]


async def _restore(env: Env) -> Expected:
    task = await env.task()
    await env.ok("DELETE", task_url(task["id"]))
    restored = await env.ok("POST", f"{task_url(task['id'])}/restore")
    return [("task.restored", task["id"], None, restored)]


async def _force(env: Env) -> Expected:
    task = await env.task(assignee_id=env.bob.id)
    await env.ok("DELETE", f"{task_url(task['id'])}/force")
    return [("task.purged", task["id"], None, None)]


SCENARIOS: dict[tuple[str, str], Scenario] = {
    ("POST", "/api/v1/tasks"): _create,
    ("PATCH", "/api/v1/tasks/{task_id}"): _patch,
    ("PUT", "/api/v1/tasks/{task_id}"): _put,
    ("DELETE", "/api/v1/tasks/{task_id}"): _delete,
    ("POST", "/api/v1/tasks/{task_id}/transition"): _transition,
    ("POST", "/api/v1/tasks/{task_id}/assign"): _assign,
    ("POST", "/api/v1/tasks/{task_id}/tags"): _add_tags,
    ("DELETE", "/api/v1/tasks/{task_id}/tags/{tag}"): _remove_tag,
    ("PATCH", "/api/v1/tasks/bulk"): _bulk,
    ("POST", "/api/v1/tasks/bulk-status"): _bulk_status,
    ("POST", "/api/v1/tasks/batch"): _batch,
    ("POST", "/api/v1/tasks/{task_id}/files"): _upload,
    ("DELETE", "/api/v1/files/{file_id}"): _delete_file,
    ("PATCH", "/api/v1/projects/{project_id}"): _project_patch,
    ("DELETE", "/api/v1/projects/{project_id}"): _project_delete,
    ("PUT", "/api/v1/projects/{project_id}/members/{user_id}"): _member_put,
    ("DELETE", "/api/v1/projects/{project_id}/members/{user_id}"): _member_delete,
    ("DELETE", "/api/v1/users/me"): _delete_account,
    ("POST", "/api/v1/tasks/{task_id}/restore"): _restore,
    ("DELETE", "/api/v1/tasks/{task_id}/force"): _force,
}

# Writes that change nothing the feed is about (no task, file, project or membership).
NO_EVENT = {
    ("POST", "/api/v1/auth/register"): "an account: no task yet",
    ("POST", "/api/v1/auth/login"): "a login",
    ("POST", "/api/v1/auth/token"): "a login",
    ("POST", "/api/v1/auth/refresh"): "a login",
    ("POST", "/api/v1/auth/logout"): "a login",
    ("PATCH", "/api/v1/users/me"): "a profile (not in any task's representation)",
    ("POST", "/api/v1/projects"): "no `project.created` in the contract: its creator, alone in it, "
    "lists it; its first member_added is the second member's",
    ("POST", "/api/v1/notifications/read-all"): "notifications are not in the feed",
    ("POST", "/api/v1/notifications/{notification_id}/read"): "notifications are not in the feed",
    # Webhooks read the feed; a subscription is the reader's own configuration, not a change
    # to anything in it (no webhook.* types in the contract).
    ("POST", "/api/v1/webhooks"): "a subscription to the feed",
    ("PATCH", "/api/v1/webhooks/{webhook_id}"): "a subscription to the feed",
    ("DELETE", "/api/v1/webhooks/{webhook_id}"): "a subscription to the feed",
    ("POST", "/api/v1/webhooks/{webhook_id}/rotate-secret"): "a subscription to the feed",
    ("POST", "/api/v1/webhooks/{webhook_id}/ping"): "a test delivery, not a change",
    ("POST", "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"): "a delivery "
    "sent again, not a change",
    ("POST", "/api/v1/tokens"): "a credential, not anything in the feed",
    ("DELETE", "/api/v1/tokens/{token_id}"): "a credential, not anything in the feed",
}


def write_routes(app: FastAPI) -> set[tuple[str, str]]:
    return {
        (method, route.path)
        for route in app.routes
        if isinstance(route, APIRoute)
        for method in route.methods
        if method not in ("GET", "HEAD", "OPTIONS")
    }


def test_every_write_route_is_either_covered_or_exempt(live_app: FastAPI) -> None:
    routes = write_routes(live_app)
    assert routes - SCENARIOS.keys() - NO_EVENT.keys() == set(), "a write with no event scenario"
    assert (SCENARIOS.keys() | NO_EVENT.keys()) - routes == set(), "a scenario for no route"


def _matches(event: dict[str, Any], expected: tuple[Any, ...], actor: int) -> bool:
    kind, task_id, changes, task = expected
    if event["type"] != kind or event.get("task_id") != task_id:
        return False
    if event.get("actor_id") != actor:
        return False
    if changes is not None and event.get("changes") != changes:
        return False
    if task is None:
        return True
    if kind == "task.deleted":  # into the trash: a new version, as it is there
        loose = ("version", "updated_at", "deleted_at", "purge_at")
        shown = event.get("task") or {}
        return {k: v for k, v in shown.items() if k not in loose} == {
            k: v for k, v in task.items() if k not in loose
        } and shown["version"] >= task["version"]
    return event.get("task") == task


@pytest.mark.parametrize("route", sorted(SCENARIOS), ids=lambda r: f"{r[0]} {r[1]}")
async def test_every_write_records_its_event(env: Env, route: tuple[str, str]) -> None:
    cursor = await env.cursor(env.alice)
    expected = await SCENARIOS[route](env)
    events, _ = await env.settle(env.alice, cursor)
    actor_of = {**{e[0]: env.alice.id for e in expected}}
    for item in expected:
        actor = actor_of[item[0]]
        if route == ("DELETE", "/api/v1/users/me"):
            actor = next(e["actor_id"] for e in events if e["type"] == item[0])
        assert any(_matches(e, item, actor) for e in events), (item, events)
    if route[1].startswith("/api/v1/projects"):
        assert all(
            e.get("project_id") is not None for e in events if e["type"].startswith("project.")
        )


# --- who sees what -------------------------------------------------------------------------------


async def test_personal_task_events_reach_owner_and_assignee_only(env: Env) -> None:
    carol = await register_and_login(env.client)
    cursors = {u.id: await env.cursor(u) for u in (env.alice, env.bob, carol)}
    task = await env.task(assignee_id=env.bob.id)
    await env.ok("PATCH", task_url(task["id"]), json={"title": "seen by both"})
    await env.ok("POST", f"{task_url(task['id'])}/assign", json={"assignee_id": None})
    await env.ok("PATCH", task_url(task["id"]), json={"title": "owner only"})
    feeds = {}
    for user in (env.alice, env.bob, carol):
        feeds[user.id] = [
            (e["type"], e.get("changes")) for e in (await env.settle(user, cursors[user.id]))[0]
        ]
    assert [t for t, _ in feeds[env.alice.id]] == [
        "task.created",
        "task.updated",
        "task.updated",
        "task.updated",
    ]
    assert [t for t, _ in feeds[env.bob.id]] == ["task.created", "task.updated", "task.access_lost"]
    assert feeds[carol.id] == []


async def test_project_members_see_its_events_and_a_removed_member_gets_tombstones(
    env: Env,
) -> None:
    carol = await register_and_login(env.client)
    project_id = await env.project(env.bob, carol)
    tasks = [await env.task(project_id=project_id) for _ in range(3)]
    cursor = {u.id: await env.cursor(u) for u in (env.bob, carol)}
    await env.ok("PATCH", task_url(tasks[0]["id"]), json={"title": "both see it"})
    await env.ok("DELETE", f"{PROJECTS}/{project_id}/members/{env.bob.id}")
    await env.ok("PATCH", task_url(tasks[1]["id"]), json={"title": "bob no longer"})
    bob_events, _ = await env.settle(env.bob, cursor[env.bob.id])
    carol_events, _ = await env.settle(carol, cursor[carol.id])
    assert [e["type"] for e in bob_events] == [
        "task.updated",
        "task.access_lost",
        "task.access_lost",
        "task.access_lost",
        "project.member_removed",
    ]
    lost = {e["task_id"]: e["task"] for e in bob_events if e["type"] == "task.access_lost"}
    assert set(lost) == {t["id"] for t in tasks}
    assert all(set(stub) == {"id", "version"} for stub in lost.values())
    assert [e["type"] for e in carol_events] == [
        "task.updated",
        "project.member_removed",
        "task.updated",
    ]
    # And nothing more about them, whatever happens to them.
    later = await env.cursor(env.bob)
    await env.ok("PATCH", task_url(tasks[2]["id"]), json={"title": "still not bob's"})
    assert (await env.settle(env.bob, later))[0] == []


async def test_moving_a_task_to_a_project_tells_who_loses_it(env: Env) -> None:
    carol = await register_and_login(env.client)
    project_id = await env.project(carol)  # alice (admin) and carol; not bob
    task = await env.task(assignee_id=env.bob.id)
    cursors = {u.id: await env.cursor(u) for u in (env.bob, carol)}
    await env.ok(
        "PATCH", task_url(task["id"]), json={"project_id": project_id, "assignee_id": None}
    )
    bob_events, _ = await env.settle(env.bob, cursors[env.bob.id])
    carol_events, _ = await env.settle(carol, cursors[carol.id])
    assert [e["type"] for e in bob_events] == ["task.access_lost"]
    assert [e["type"] for e in carol_events] == ["task.updated"]
    assert carol_events[0]["task"]["project_id"] == project_id


# --- cursors -------------------------------------------------------------------------------------


async def test_pages_cover_every_event_once_in_order(env: Env) -> None:
    cursor = await env.cursor(env.alice)
    created = [(await env.task(title=f"t{i}"))["id"] for i in range(23)]
    everything, _ = await env.settle(env.alice, cursor)
    assert [e["task_id"] for e in everything] == created
    seen: list[int] = []
    pages = 0
    while True:
        result = await page(env.client, env.alice, cursor, limit=7)
        again = await page(env.client, env.alice, cursor, limit=7)
        # A retried page is the same page. Only the cursor after a last page may have moved on:
        # it marks the horizon, which advances as any transaction of the cluster ends.
        assert again["items"] == result["items"]
        assert again["has_more"] == result["has_more"]
        if result["has_more"]:
            assert again["next_cursor"] == result["next_cursor"]
        seen.extend(e["id"] for e in result["items"])
        pages += 1
        cursor = result["next_cursor"]
        if not result["has_more"]:
            break
        assert len(result["items"]) == 7
    assert seen == [e["id"] for e in everything]
    assert pages == 4
    assert (await page(env.client, env.alice, cursor))["items"] == []


async def test_bad_cursors_and_limits(env: Env, live_app: FastAPI) -> None:
    codec = services_of(live_app).cursor_codec
    headers = env.alice.headers
    cursor = await env.cursor(env.alice)
    # One signature character changed, whatever it was ("AA" in place of the last two was the
    # same cursor once in 256 runs).
    forged = cursor[:-2] + ("A" if cursor[-2] != "A" else "B") + cursor[-1]
    for since in (
        "nope",
        forged,
        codec.encode([1, 2], FEED_FINGERPRINT),
        codec.encode([1, 2, 3], "tasks"),
    ):
        response = await env.client.get(EVENTS, params={"since": since}, headers=headers)
        assert_problem(response, 422, "invalid_cursor")
    for limit in (0, 1001, "x"):
        response = await env.client.get(
            EVENTS, params={"since": cursor, "limit": limit}, headers=headers
        )
        assert_problem(response, 422)
    assert (
        await env.client.get(EVENTS, params={"since": cursor, "limit": 1000}, headers=headers)
    ).status_code == 200
    assert (
        await env.client.get(EVENTS, params={"sice": cursor}, headers=headers)
    ).status_code == 422
    assert (await env.client.get(EVENTS)).status_code == 401


async def test_a_cursor_older_than_the_retention_is_gone(env: Env, live_app: FastAPI) -> None:
    codec = services_of(live_app).cursor_codec
    xid, _ = position(await env.cursor(env.alice))
    days = services_of(live_app).settings.event_retention_days
    old = datetime.now(UTC) - timedelta(days=days, minutes=1)
    expired = codec.encode([xid, 0, int(old.timestamp())], FEED_FINGERPRINT)
    response = await env.client.get(EVENTS, params={"since": expired}, headers=env.alice.headers)
    assert_problem(response, 410, "cursor_expired")
    fresh = codec.encode([xid, 0, int((old + timedelta(minutes=2)).timestamp())], FEED_FINGERPRINT)
    response = await env.client.get(EVENTS, params={"since": fresh}, headers=env.alice.headers)
    assert response.status_code == 200, response.text


async def test_the_purge_job_deletes_events_past_retention(env: Env, live_app: FastAPI) -> None:
    services = services_of(live_app)
    old_task = await env.task(assignee_id=env.bob.id)
    new_task = await env.task()
    async with services.sessionmaker() as session:
        await session.execute(
            text("UPDATE events SET occurred_at = now() - interval '9 days' WHERE task_id = :t"),
            {"t": old_task["id"]},
        )
        await session.commit()
    ctx = JobContext(services.sessionmaker, services.get(STORAGE), services.settings)
    await purge_events(ctx, {})
    async with services.sessionmaker() as session:
        kept = set((await session.scalars(select(Event.task_id))).all())
        recipients = await session.scalar(select(func.count()).select_from(EventRecipient))
        orphans = await session.scalar(
            select(func.count())
            .select_from(EventRecipient)
            .where(~select(Event.id).where(Event.id == EventRecipient.event_id).exists())
        )
    assert old_task["id"] not in kept
    assert new_task["id"] in kept
    assert recipients
    assert orphans == 0


# --- activity ------------------------------------------------------------------------------------


async def test_activity_is_newest_first_paginated_and_needs_the_task_visible(env: Env) -> None:
    task = await env.task(assignee_id=env.bob.id)
    for i in range(4):
        await env.ok("PATCH", task_url(task["id"]), json={"title": f"v{i}"})
    url = f"{task_url(task['id'])}/activity"
    first = await env.client.get(url, params={"limit": 3}, headers=env.alice.headers)
    assert first.status_code == 200, first.text
    body = first.json()
    assert [e["changes"]["title"][1] for e in body["items"]] == ["v3", "v2", "v1"]
    assert body["limit"] == 3
    assert body["next_cursor"]
    assert first.headers["Link"].endswith('rel="next"')
    assert "cursor=" in first.headers["Link"]
    second = await env.client.get(
        url, params={"limit": 3, "cursor": body["next_cursor"]}, headers=env.alice.headers
    )
    rest = second.json()
    assert [e["type"] for e in rest["items"]] == ["task.updated", "task.created"]
    assert rest["next_cursor"] is None
    assert "Link" not in second.headers
    # The assignee sees it too; once unassigned, the task (and its history) is a 404.
    assert (await env.client.get(url, headers=env.bob.headers)).status_code == 200
    await env.ok("POST", f"{task_url(task['id'])}/assign", json={"assignee_id": None})
    assert_problem(await env.client.get(url, headers=env.bob.headers), 404, "task_not_found")
    carol = await register_and_login(env.client)
    assert_problem(await env.client.get(url, headers=carol.headers), 404, "task_not_found")
    # A cursor of another task's activity is refused.
    other = await env.task()
    response = await env.client.get(
        f"{task_url(other['id'])}/activity",
        params={"cursor": body["next_cursor"]},
        headers=env.alice.headers,
    )
    assert_problem(response, 422, "invalid_cursor")
