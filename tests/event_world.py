"""Concurrent writers and followers of the change feed, for the exactness tests (issue 18).

8 writers make random creates, updates, transitions, tags, assignments, moves, deletes, restores
and force deletes, each transaction held open a random while after its events are written, plus
a bare transaction holding the horizon again and again; 3 followers (the last one removed from
the shared project midway) keep a copy of their tasks, each the way its test says (`Follow`:
polling GET /events, or the SSE stream). At the end each copy must be exactly what GET /tasks
shows its follower.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from taskapi.events import repository as event_repository
from taskapi.events import service as events
from taskapi.events.schemas import Audience, EventSpec
from taskapi.kit.services import services_of
from tests.conftest import UserHandle, register_and_login
from tests.event_helpers import Copy, list_all
from tests.task_helpers import TASKS, task_url

PROJECTS = "/api/v1/projects"
STATUSES = ("todo", "in_progress", "done", "cancelled")
TAGS = ("red", "green", "blue")


def bare_spec(kind: str, user_id: int, title: str) -> EventSpec:
    """An event of `user_id` alone, about no task."""
    return events.spec(
        kind,
        user_id,
        Audience(users=[user_id]),
        project_id=None,
        changes={"title": [None, title]},
    )


@dataclass
class World:
    client: httpx.AsyncClient
    app: FastAPI
    rng: random.Random
    writers: list[UserHandle]
    followers: list[UserHandle]
    p: int  # every writer and follower
    q: int  # every writer and the first follower
    tasks: dict[int, int | None] = field(default_factory=dict)  # id -> owner (personal)
    trashed: set[int] = field(default_factory=set)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    statuses: dict[str, int] = field(default_factory=dict)

    def writer(self, user_id: int | None) -> UserHandle | None:
        return next((w for w in self.writers if w.id == user_id), None)

    async def call(self, user: UserHandle, method: str, url: str, **kw: Any) -> httpx.Response:
        response = await self.client.request(method, url, headers=user.headers, **kw)
        assert response.status_code < 500, response.text
        key = f"{method} {url.split('/')[-1] if not url.split('/')[-1].isdigit() else '{id}'}"
        self.statuses[f"{key} {response.status_code}"] = (
            self.statuses.get(f"{key} {response.status_code}", 0) + 1
        )
        if response.status_code in (200, 201) and "owner_id" in response.text:
            body = response.json()
            if isinstance(body, dict) and "project_id" in body:
                self.tasks[body["id"]] = body["owner_id"] if body["project_id"] is None else None
        return response


@dataclass
class Follower:
    user: UserHandle
    copy: Copy = field(default_factory=Copy)
    served: list[int] = field(default_factory=list)
    lost: int = 0

    # Per task: (event id, type, version) of every event served, for a failure's report.
    history: dict[int, list[tuple[int, str, Any]]] = field(default_factory=dict)

    def apply(self, event: dict[str, Any]) -> None:
        self.served.append(event["id"])
        self.lost += event["type"] == "task.access_lost"
        task_id = event.get("task_id")
        if task_id is not None:
            version = (event.get("task") or {}).get("version")
            self.history.setdefault(task_id, []).append((event["id"], event["type"], version))
        self.copy.apply(event)

    def difference(self, truth: dict[int, dict[str, Any]]) -> list[str]:
        """Each task on which the copy and the server differ, with the events served for it."""
        lines = []
        for task_id in sorted(set(self.copy.tasks) | set(truth)):
            mine, theirs = self.copy.tasks.get(task_id), truth.get(task_id)
            if mine == theirs:
                continue
            fields = sorted(
                name
                for name in set(mine or {}) | set(theirs or {})
                if (mine or {}).get(name) != (theirs or {}).get(name)
            )
            lines.append(
                f"task {task_id}: copy v{(mine or {}).get('version')} server "
                f"v{(theirs or {}).get('version')} differ in {fields}; served "
                f"{self.history.get(task_id, [])}"
            )
        return lines


# How a follower keeps its copy: called with the world, the follower and a delay before it
# starts (taking its cursor); it returns once the copy has caught up with everything written
# before `world.done` was set.
Follow = Callable[[World, Follower, float], Awaitable[None]]


async def _write(world: World, me: UserHandle) -> None:
    rng = world.rng
    if not world.tasks or rng.random() < 0.2:
        place = rng.choice(["personal", "p", "q"])
        body: dict[str, Any] = {"title": f"t{rng.randint(0, 999)}", "tags": [rng.choice(TAGS)]}
        if place == "personal":
            body["assignee_id"] = rng.choice([None, *(f.id for f in world.followers)])
        else:
            body["project_id"] = world.p if place == "p" else world.q
            body["assignee_id"] = rng.choice([None, me.id, world.followers[0].id])
        await world.call(me, "POST", TASKS, json=body)
        return
    op = rng.choices(
        ["update", "transition", "tag", "untag", "assign", "move", "delete", "restore", "force"],
        weights=[5, 4, 3, 2, 4, 4, 2, 2, 1],
    )[0]
    pool = sorted(world.trashed) if op == "restore" and world.trashed else list(world.tasks)
    task_id = rng.choice(pool)
    owner = world.writer(world.tasks.get(task_id))
    actor = owner if owner is not None else me  # project tasks: any writer is an editor
    url = task_url(task_id)
    if op == "update":
        await world.call(actor, "PATCH", url, json={"title": f"u{rng.randint(0, 999)}"})
    elif op == "transition":
        await world.call(actor, "POST", f"{url}/transition", json={"status": rng.choice(STATUSES)})
    elif op == "tag":
        await world.call(actor, "POST", f"{url}/tags", json=[rng.choice(TAGS)])
    elif op == "untag":
        await world.call(actor, "DELETE", f"{url}/tags/{rng.choice(TAGS)}")
    elif op == "assign":
        who = rng.choice([None, actor.id, *(f.id for f in world.followers)])
        await world.call(actor, "POST", f"{url}/assign", json={"assignee_id": who})
    elif op == "move":
        target = rng.choice([None, world.p, world.q])
        await world.call(actor, "PATCH", url, json={"project_id": target, "assignee_id": None})
    elif op == "delete":
        if (await world.call(actor, "DELETE", url)).status_code == 204:
            world.trashed.add(task_id)
    elif op == "restore":
        if (await world.call(actor, "POST", f"{url}/restore")).status_code == 200:
            world.trashed.discard(task_id)
    else:
        response = await world.call(actor, "DELETE", f"{url}/force")
        if response.status_code == 204:
            world.tasks.pop(task_id, None)
            world.trashed.discard(task_id)


async def _writer(world: World, me: UserHandle, operations: int) -> None:
    for _ in range(operations):
        await _write(world, me)
        await asyncio.sleep(world.rng.uniform(0, 0.01))


async def _horizon_holder(world: World) -> None:
    """A bare transaction with an xid (an event of no one's), held open a while, again and
    again: everything committed meanwhile must wait behind it, and nothing be skipped."""
    make = services_of(world.app).sessionmaker
    while not world.done.is_set():
        async with make() as session:
            await events.record_many(session, [bare_spec("project.updated", 0, "held")])
            await asyncio.sleep(world.rng.uniform(0.01, 0.08))
            await session.commit()
        await asyncio.sleep(world.rng.uniform(0, 0.05))


async def _remove_midway(world: World, delay: float) -> None:
    await asyncio.sleep(delay)
    lost = world.followers[2]
    response = await world.call(
        world.writers[0], "DELETE", f"{PROJECTS}/{world.p}/members/{lost.id}"
    )
    assert response.status_code == 204, response.text


def _hold_open_after_each_insert(monkeypatch: pytest.MonkeyPatch, rng: random.Random) -> None:
    """The test-only hook: every transaction that writes events stays open a random while
    after writing them (row locks held, ids and xids committing out of order)."""
    insert: Callable[..., Awaitable[None]] = event_repository.insert

    async def slow_insert(session: Any, specs: Any) -> None:
        await insert(session, specs)
        await asyncio.sleep(rng.uniform(0, 0.03))

    monkeypatch.setattr(event_repository, "insert", slow_insert)


async def make_world(client: httpx.AsyncClient, app: FastAPI, rng: random.Random) -> World:
    writers = [await register_and_login(client) for _ in range(8)]
    followers = [await register_and_login(client) for _ in range(3)]
    ids = []
    for members in (writers[1:] + followers, writers[1:] + followers[:1]):
        response = await client.post(
            PROJECTS, json={"name": f"p {uuid.uuid4().hex[:8]}"}, headers=writers[0].headers
        )
        assert response.status_code == 201, response.text
        project_id = response.json()["id"]
        for member in members:
            added = await client.put(
                f"{PROJECTS}/{project_id}/members/{member.id}",
                json={"role": "editor"},
                headers=writers[0].headers,
            )
            assert added.status_code == 200, added.text
        ids.append(project_id)
    return World(client, app, rng, writers, followers, ids[0], ids[1])


async def followers_end_with_the_servers_view(
    world: World, monkeypatch: pytest.MonkeyPatch, follow: Follow, operations: int = 22
) -> list[Follower]:
    """One random schedule: writers, the horizon holder and the removal run while the
    followers `follow`; once the writers are done and every follower has caught up, each copy
    is compared with GET /tasks. Returns the followers (for the caller's own checks)."""
    rng = world.rng
    # Some tasks exist before anyone follows.
    for writer in world.writers[:4]:
        await _writer(world, writer, 3)
    _hold_open_after_each_insert(monkeypatch, rng)
    followers = [Follower(user) for user in world.followers]
    # A task group: a follower or writer that fails cancels the rest, so nothing is left
    # running (or waiting forever) in the session's event loop.
    async with asyncio.TaskGroup() as group:
        for follower in followers:
            group.create_task(follow(world, follower, rng.uniform(0, 0.5)))
        group.create_task(_horizon_holder(world))
        async with asyncio.TaskGroup() as writing:
            for writer in world.writers:
                writing.create_task(_writer(world, writer, operations))
            writing.create_task(_remove_midway(world, rng.uniform(0.3, 1.5)))
        world.done.set()
    for follower in followers:
        assert len(follower.served) == len(set(follower.served)), "an event served twice"
        truth = {t["id"]: t for t in await list_all(world.client, follower.user)}
        assert follower.copy.tasks == truth, (
            follower.user.id,
            follower.difference(truth),
            world.statuses,
        )
    # The schedule did what it says: deletes, restores, moves and a lost access all happened.
    done = {k.rsplit(" ", 1)[0] for k, n in world.statuses.items() if k.endswith((" 200", " 204"))}
    assert {"DELETE {id}", "POST restore", "PATCH {id}", "POST assign"} <= done, world.statuses
    assert followers[2].lost, "the removed follower lost access to nothing"
    return followers
