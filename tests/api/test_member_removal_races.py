"""A member is removed from a project while editors write its tasks (real commits, real
parallel transactions): no request may fail, however their locks interleave.

1. The interleaving that deadlocked, step by step: the removal holds the project and waits for
   a task of it; meanwhile a later task leaves the project and an editor moves it straight back.
   That move locked the task and then waited for the project (to put the task into it), while
   the removal, which locks every row that was in the project when it began, came to wait for
   that task: PostgreSQL aborted one of them (40P01), a 500.
   The same with an account's deletion (it removes its member from every project) and a bulk
   change holding tasks of two of those projects: the deletion locked them project by project,
   the bulk change in id order across projects.
2. Seeded random schedules: 8 editors move tasks between two projects, assign them to the
   leaving member, edit, trash, restore, force delete and create, each transaction
   held open a random while after its events are written; meanwhile the member is removed from
   both projects, added back and removed again at random moments.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from taskapi.events import repository as event_repository
from tests.conftest import UserHandle, register_and_login
from tests.lock_helpers import until_waiting
from tests.task_helpers import TASKS, assert_problem, task_url

PROJECTS = "/api/v1/projects"


def member_url(project_id: int, user_id: int) -> str:
    return f"{PROJECTS}/{project_id}/members/{user_id}"


@dataclass
class Team:
    admin: UserHandle
    writers: list[UserHandle]
    leaver: UserHandle
    p: int  # the writers and the leaver
    q: int  # the writers and the leaver


async def _project(client: httpx.AsyncClient, admin: UserHandle, members: list[UserHandle]) -> int:
    body = {"name": f"p {uuid.uuid4().hex[:8]}"}
    created = await client.post(PROJECTS, json=body, headers=admin.headers)
    assert created.status_code == 201, created.text
    project_id: int = created.json()["id"]
    for member in members:
        added = await client.put(
            member_url(project_id, member.id), json={"role": "editor"}, headers=admin.headers
        )
        assert added.status_code == 200, added.text
    return project_id


async def make_team(client: httpx.AsyncClient, writers: int) -> Team:
    admin = await register_and_login(client)
    team = [await register_and_login(client) for _ in range(writers)]
    leaver = await register_and_login(client)
    p = await _project(client, admin, [*team, leaver])
    q = await _project(client, admin, [*team, leaver])
    return Team(admin, team, leaver, p, q)


async def create_task(client: httpx.AsyncClient, user: UserHandle, **body: Any) -> int:
    created = await client.post(TASKS, json={"title": "t", **body}, headers=user.headers)
    assert created.status_code == 201, created.text
    task_id: int = created.json()["id"]
    return task_id


async def assert_gone_for_the_leaver(client: httpx.AsyncClient, team: Team, project: int) -> None:
    """The leaver sees nothing of the project, and none of its tasks is assigned to them."""
    assert_problem(await client.get(f"{PROJECTS}/{project}", headers=team.leaver.headers), 404)
    await assert_none_assigned_to_the_leaver(client, team, project)


async def assert_none_assigned_to_the_leaver(
    client: httpx.AsyncClient, team: Team, project: int
) -> None:
    listed = await client.get(
        TASKS, params={"project_id": project, "limit": 100}, headers=team.admin.headers
    )
    assert listed.status_code == 200, listed.text
    assert [t["id"] for t in listed.json()["items"] if t["assignee_id"] == team.leaver.id] == []


# --- 1. the interleaving that deadlocked ---------------------------------------------------------


@dataclass
class Gate:
    """Holds a request's transaction open after its events are written (its row locks held)
    until released."""

    reached: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


# The gate of the request made in the current context (httpx's ASGI transport runs the app in
# the caller's context): only the request that set one waits.
GATE: ContextVar[Gate | None] = ContextVar("GATE", default=None)


def _gate_event_inserts(monkeypatch: pytest.MonkeyPatch) -> None:
    insert = event_repository.insert

    async def gated_insert(session: Any, specs: Any) -> None:
        await insert(session, specs)
        gate = GATE.get()
        if gate is not None:
            gate.reached.set()
            await gate.release.wait()

    monkeypatch.setattr(event_repository, "insert", gated_insert)


def _edit_held_open(
    client: httpx.AsyncClient, task_id: int, editor: Any
) -> tuple[Gate, asyncio.Task[httpx.Response]]:
    """An edit of the task whose transaction stays open, its row locked, from the moment it
    writes its events (`gate.reached`) until `gate.release` is set."""
    gate = Gate()

    async def edit() -> httpx.Response:
        GATE.set(gate)
        return await client.patch(
            task_url(task_id), json={"title": "edited"}, headers=editor.headers
        )

    return gate, asyncio.create_task(edit())


async def test_a_task_moved_out_and_back_in_during_a_removal_deadlocks_nothing(
    live_app: FastAPI, live_client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, app = live_client, live_app
    team = await make_team(client, 3)
    first, second, third = team.writers
    a = await create_task(client, team.admin, project_id=team.p, assignee_id=team.leaver.id)
    b = await create_task(client, team.admin, project_id=team.p)
    assert a < b  # the removal locks the project's tasks in id order: a, then b
    _gate_event_inserts(monkeypatch)

    # 1. An edit of `a` holds it, its transaction open.
    held, edit = _edit_held_open(client, a, first)
    try:
        await asyncio.wait_for(held.reached.wait(), 5)
        # 2. The removal holds the project and waits for `a`.
        removal = asyncio.create_task(
            client.delete(member_url(team.p, team.leaver.id), headers=team.admin.headers)
        )
        await until_waiting(app, "task.access_lost")
        # 3. `b` leaves the project (the removal's statement still counts it in), comes back.
        out = await client.patch(task_url(b), json={"project_id": team.q}, headers=second.headers)
        assert out.status_code == 200, out.text
        back = asyncio.create_task(
            client.patch(task_url(b), json={"project_id": team.p}, headers=third.headers)
        )
        await until_waiting(app, "FOR KEY SHARE")  # for the project, which the removal holds
    finally:
        # 4. The edit commits: the removal goes on to `b`.
        held.release.set()
    edited, removed, moved = await asyncio.wait_for(asyncio.gather(edit, removal, back), 10)

    assert edited.status_code == 200, edited.text
    assert removed.status_code == 204, removed.text
    assert moved.status_code == 200, moved.text
    assert moved.json()["project_id"] == team.p
    await assert_gone_for_the_leaver(client, team, team.p)


async def test_an_account_deleted_while_a_bulk_change_holds_tasks_of_its_projects(
    live_app: FastAPI, live_client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An account's deletion removes its member from every project; a bulk change locks the
    tasks it names in id order, across projects. The deletion locked them project by project
    (the first project's tasks, then the second's), so with a later task of the first project
    and an earlier one of the second, each came to hold one the other waited for."""
    client, app = live_client, live_app
    team = await make_team(client, 2)
    editor, other = team.writers
    first, second = team.p, team.q  # locked by the deletion in this order (ascending ids)
    early = await create_task(client, team.admin, project_id=second, assignee_id=team.leaver.id)
    late = await create_task(client, team.admin, project_id=first)
    assert first < second
    assert early < late
    _gate_event_inserts(monkeypatch)

    # 1. An edit of `late` holds it, its transaction open.
    held, edit = _edit_held_open(client, late, other)
    try:
        await asyncio.wait_for(held.reached.wait(), 5)
        # 2. The leaver deletes their account: it waits for `late`, first in line for it.
        deletion = asyncio.create_task(
            client.delete("/api/v1/users/me", headers=team.leaver.headers)
        )
        await until_waiting(app, "FOR UPDATE")
        # 3. A bulk change of both tasks (locked in id order: `early`, then `late`) waits too.
        body = {"task_ids": [early, late], "updates": {"priority": "high"}}
        change = asyncio.create_task(
            client.patch(f"{TASKS}/bulk", json=body, headers=editor.headers)
        )
        await until_waiting(app, "FOR UPDATE", 2)
    finally:
        # 4. The edit commits.
        held.release.set()
    edited, deleted, changed = await asyncio.wait_for(asyncio.gather(edit, deletion, change), 10)

    assert edited.status_code == 200, edited.text
    assert deleted.status_code == 204, deleted.text
    assert changed.status_code == 200, changed.text
    assert changed.json()["successful"] == 2
    assert_problem(await client.get("/api/v1/users/me", headers=team.leaver.headers), 401)
    for project in (first, second):
        await assert_none_assigned_to_the_leaver(client, team, project)


# --- 2. random schedules -------------------------------------------------------------------------

SEEDS = range(10)
OPERATIONS = 8  # per writer and round


def _hold_open_after_each_insert(monkeypatch: pytest.MonkeyPatch, rng: random.Random) -> None:
    """Every transaction that writes events stays open a random while after (row locks held)."""
    insert = event_repository.insert

    async def slow_insert(session: Any, specs: Any) -> None:
        await insert(session, specs)
        await asyncio.sleep(rng.uniform(0, 0.02))

    monkeypatch.setattr(event_repository, "insert", slow_insert)


class Round:
    """One seeded schedule: every writer's operations, and meanwhile the leaver removed from
    each project and added back again and again, ending removed."""

    def __init__(self, client: httpx.AsyncClient, team: Team, seed: int) -> None:
        self.client, self.team, self.rng = client, team, random.Random(seed)
        self.writing = len(team.writers)
        self.failures: list[str] = []

    async def call(
        self, user: UserHandle, method: str, url: str, expect: int | None = None, **kw: Any
    ) -> httpx.Response:
        response = await self.client.request(method, url, headers=user.headers, **kw)
        if response.status_code >= 500 or expect not in (None, response.status_code):
            self.failures.append(f"{method} {url} {kw}: {response.status_code} {response.text}")
        return response

    async def write(self, me: UserHandle, tasks: list[int]) -> None:
        rng, team = self.rng, self.team
        for _ in range(OPERATIONS):
            url = task_url(rng.choice(tasks))
            op = rng.choices(
                ["move", "assign", "edit", "trash", "restore", "force", "create"],
                weights=[24, 4, 2, 2, 2, 1, 1],
            )[0]
            if op == "move":  # from one project to the other, and often straight back
                target = rng.choice([team.p, team.q])
                await self.call(me, "PATCH", url, json={"project_id": target, "assignee_id": None})
            elif op == "assign":
                who = rng.choice([team.leaver.id, me.id, None])
                await self.call(me, "POST", f"{url}/assign", json={"assignee_id": who})
            elif op == "edit":
                await self.call(me, "PATCH", url, json={"title": f"t{rng.randint(0, 999)}"})
            elif op == "trash":
                await self.call(me, "DELETE", url)
            elif op == "restore":
                await self.call(me, "POST", f"{url}/restore")
            elif op == "force":
                await self.call(me, "DELETE", f"{url}/force")
            else:
                body = {"title": "new", "project_id": team.p, "assignee_id": team.leaver.id}
                created = await self.call(me, "POST", TASKS, json=body)
                if created.status_code == 201:
                    tasks.append(created.json()["id"])
            await asyncio.sleep(rng.uniform(0, 0.005))
        self.writing -= 1

    async def remove_again_and_again(self, project_id: int) -> None:
        team, url = self.team, member_url(project_id, self.team.leaver.id)
        while True:
            await asyncio.sleep(self.rng.uniform(0, 0.03))
            await self.call(team.admin, "DELETE", url, expect=204)
            if not self.writing:
                return
            await self.call(team.admin, "PUT", url, expect=200, json={"role": "editor"})


async def test_removing_a_member_while_editors_write_the_projects_tasks_never_fails(
    busy_app: FastAPI, busy_client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = busy_client
    team = await make_team(client, 8)
    # Few tasks, so that one often moves again soon after it moved.
    tasks = [
        await create_task(client, writer, project_id=team.p, assignee_id=team.leaver.id)
        for writer in team.writers
    ]
    _hold_open_after_each_insert(monkeypatch, random.Random(0))
    for seed in SEEDS:
        run = Round(client, team, seed)
        await asyncio.gather(
            *(run.write(writer, tasks) for writer in team.writers),
            *(run.remove_again_and_again(project) for project in (team.p, team.q)),
        )
        assert not run.failures, (seed, run.failures)
        for project in (team.p, team.q):
            await assert_gone_for_the_leaver(client, team, project)
            again = await client.put(
                member_url(project, team.leaver.id),
                json={"role": "editor"},
                headers=team.admin.headers,
            )
            assert again.status_code == 200, again.text
