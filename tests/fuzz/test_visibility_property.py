"""Property: whatever sequence of create / assign / unassign / reassign / update / delete / attach /
account-delete four users perform, nobody sees a task (GET, list, search, stats, files) or a
notification they should not. A model of owners, assignees, files and the notifications each user
legitimately received is compared with the API after every step."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.auth.service import AUTH_SERVICE
from taskapi.kit.services import services_of
from taskapi.models import User
from tests.conftest import ROOT

API = "/api/v1"
TASKS = f"{API}/tasks"
USERS = 4
STATS: Counter[str] = Counter()

user_index = st.integers(0, USERS - 1)
maybe_user = st.none() | user_index
task_ref = st.integers(0, 30)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("create"), user_index, maybe_user),
        st.tuples(st.just("assign"), user_index, task_ref, maybe_user),
        st.tuples(st.just("update"), user_index, task_ref),
        st.tuples(st.just("delete"), user_index, task_ref),
        st.tuples(st.just("attach"), user_index, task_ref),
        st.tuples(st.just("delete_account"), user_index),
    ),
    min_size=10,
    max_size=15,
)


@dataclass
class ModelTask:
    id: int
    owner: int
    assignee: int | None
    alive: bool = True
    files: list[int] = field(default_factory=list)


@dataclass
class Model:
    ids: list[int]
    headers: list[dict[str, str]]
    alive: list[bool]
    tasks: list[ModelTask] = field(default_factory=list)
    # per user: (kind, task id or None once the task is gone)
    notes: list[Counter[tuple[str, int | None]]] = field(default_factory=list)

    def visible(self, user: int) -> set[int]:
        return {t.id for t in self.tasks if t.alive and user in (t.owner, t.assignee)}

    def task_gone(self, task: ModelTask) -> None:
        task.alive = False
        for counter in self.notes:
            for kind in ("task_assigned", "task_updated"):
                moved = counter.pop((kind, task.id), 0)
                if moved:
                    counter[(kind, None)] += moved


async def new_users(app: FastAPI, db: AsyncSession) -> Model:
    """Users straight in the database with tokens from the app's own auth service (no Argon2)."""
    auth = services_of(app).get(AUTH_SERVICE)
    ids, headers = [], []
    for _ in range(USERS):
        name = f"vis_{uuid.uuid4().hex[:12]}"
        user = User(username=name, email=f"{name}@example.com", password_hash="x")
        db.add(user)
        await db.flush()
        pair = await auth.issue_tokens(db, user.id, family_id=uuid.uuid4())
        ids.append(user.id)
        headers.append({"Authorization": f"Bearer {pair.access_token}"})
    await db.commit()
    return Model(ids, headers, [True] * USERS, notes=[Counter() for _ in range(USERS)])


def expected_status(model: Model, actor: int, task: ModelTask, *, owner_only: bool) -> int:
    if not model.alive[actor]:
        return 401
    if not task.alive or actor not in (task.owner, task.assignee):
        return 404
    if owner_only and actor != task.owner:
        return 403
    return 200


async def apply(client: httpx.AsyncClient, model: Model, op: tuple[Any, ...], n: int) -> int | None:
    """Run one operation through the API, check its status against the model, update the model.
    Returns the id of the task it was about, if any."""
    kind, actor = op[0], op[1]
    h = model.headers[actor]
    if kind == "create" or (kind != "delete_account" and not model.tasks):
        assignee = op[2] if kind == "create" else None
        body: dict[str, Any] = {"title": f"vis{n}"}
        if assignee is not None:
            body["assignee_id"] = model.ids[assignee]
        r = await client.post(TASKS, json=body, headers=h)
        if not model.alive[actor]:
            assert r.status_code == 401
            return None
        if assignee is not None and not model.alive[assignee]:
            assert r.status_code == 422, r.text
            return None
        assert r.status_code == 201, r.text
        task = ModelTask(r.json()["id"], actor, assignee)
        model.tasks.append(task)
        if assignee is not None and assignee != actor:
            model.notes[assignee][("task_assigned", task.id)] += 1
        return task.id
    if kind == "delete_account":
        r = await client.delete(f"{API}/users/me", headers=h)
        assert r.status_code == (204 if model.alive[actor] else 401)
        if model.alive[actor]:
            model.alive[actor] = False
            model.notes[actor].clear()
            for task in model.tasks:
                if task.alive and task.owner == actor:
                    model.task_gone(task)
                elif task.assignee == actor:
                    task.assignee = None
        return None
    task = model.tasks[op[2] % len(model.tasks)]
    url = f"{TASKS}/{task.id}"
    if kind == "assign":
        target = op[3]
        body = {"assignee_id": None if target is None else model.ids[target]}
        r = await client.post(url + "/assign", json=body, headers=h)
        expected = expected_status(model, actor, task, owner_only=True)
        if expected == 200 and target is not None and not model.alive[target]:
            expected = 422
        assert r.status_code == expected, (op, r.text)
        if expected == 200 and target != task.assignee:
            task.assignee = target
            if target is not None and target != actor:
                model.notes[target][("task_assigned", task.id)] += 1
    elif kind == "update":
        r = await client.patch(url, json={"title": f"vis{n}"}, headers=h)
        expected = expected_status(model, actor, task, owner_only=False)
        assert r.status_code == expected, (op, r.text)
        if expected == 200 and actor == task.owner and task.assignee not in (None, actor):
            model.notes[task.assignee][("task_updated", task.id)] += 1
    elif kind == "delete":
        r = await client.delete(url, headers=h)
        expected = expected_status(model, actor, task, owner_only=True)
        assert r.status_code == (204 if expected == 200 else expected), (op, r.text)
        if expected == 200:
            model.task_gone(task)
    elif kind == "attach":
        files = {"file": ("f.txt", f"file of {task.id}\n".encode(), "text/plain")}
        r = await client.post(url + "/files", files=files, headers=h)
        expected = expected_status(model, actor, task, owner_only=False)
        assert r.status_code == (201 if expected == 200 else expected), (op, r.text)
        if expected == 200:
            task.files.append(r.json()["id"])
    return task.id


async def check_step(client: httpx.AsyncClient, model: Model, touched: int | None) -> None:
    for user in range(USERS):
        if not model.alive[user]:
            continue
        h, visible = model.headers[user], model.visible(user)
        listed = (await client.get(TASKS, params={"limit": 100}, headers=h)).json()
        assert {t["id"] for t in listed["items"]} == visible
        assert listed["total"] == len(visible)
        notes = (await client.get(f"{API}/notifications", params={"limit": 100}, headers=h)).json()
        got = Counter((n["kind"], n["task_id"]) for n in notes["items"])
        assert got == model.notes[user]
        if touched is not None:
            r = await client.get(f"{TASKS}/{touched}", headers=h)
            assert r.status_code == (200 if touched in visible else 404)
        STATS["checks"] += 1


async def check_everything(client: httpx.AsyncClient, model: Model) -> None:
    for user in range(USERS):
        h = model.headers[user]
        if not model.alive[user]:
            assert (await client.get(TASKS, headers=h)).status_code == 401
            continue
        visible = model.visible(user)
        stats = (await client.get(f"{TASKS}/stats", headers=h)).json()
        assert stats["total"] == len(visible)
        found = await client.get(TASKS, params={"search": "vis*", "limit": 100}, headers=h)
        assert {t["id"] for t in found.json()["items"]} == visible
        for task in model.tasks:
            sees = task.id in visible
            r = await client.get(f"{TASKS}/{task.id}", headers=h)
            assert r.status_code == (200 if sees else 404)
            r = await client.get(f"{TASKS}/{task.id}/files", headers=h)
            assert r.status_code == (200 if sees else 404)
            if sees:
                assert sorted(f["id"] for f in r.json()) == sorted(task.files)
            for file_id in task.files:
                r = await client.get(f"{API}/files/{file_id}", headers=h)
                assert r.status_code == (200 if sees else 404)
                STATS["file_checks"] += 1


@settings(
    max_examples=20,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=operations)
async def test_nobody_sees_what_they_should_not(
    live_client: httpx.AsyncClient, live_app: FastAPI, ops
):
    # A database of its own with real commits (a test transaction held open for every example
    # would hold back the event log's horizon for the other tests). Every example gets four
    # fresh users: earlier examples' rows are invisible to them.
    client = live_client
    async with services_of(live_app).sessionmaker() as db:
        model = await new_users(live_app, db)
    for n, op in enumerate(ops):
        touched = await apply(client, model, op, n)
        await check_step(client, model, touched)
        STATS["steps"] += 1
    await check_everything(client, model)
    STATS["examples"] += 1
    report = Path(ROOT) / "reports" / "visibility_property.txt"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(
        f"visibility property: {STATS['examples']} examples, {STATS['steps']} steps, "
        f"{STATS['checks']} per-user checks, {STATS['file_checks']} file checks, 0 leaks\n"
    )
