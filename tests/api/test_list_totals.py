"""A list's `total` and its rows come from one snapshot, whoever writes meanwhile (issue 21,
point 5: an unfiltered list, or one filtered by status, priority, completed, overdue or project,
sums its total from the trigger-kept counts instead of counting the tasks).

Real commits: writers move tasks between statuses and priorities, trash and restore them,
create new ones and leave and rejoin the project, on seeded random schedules, while readers list
with every filter the counts answer. Every answer holds all its rows (at most 100) and its
`total` must be their number; after the writers stop, every filter's total is the number of
visible tasks it selects, as the unfiltered list shows them.
"""

from __future__ import annotations

import asyncio
import random
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import UserHandle, register_and_login
from tests.task_helpers import TASKS, task_url

PROJECTS = "/api/v1/projects"
STATUSES = ("todo", "in_progress", "done", "cancelled")
PRIORITIES = ("low", "medium", "high", "urgent")


def _filters(project_id: int) -> list[dict[str, str]]:
    """Every filter shape whose total comes from the counts, each as one list request."""
    return [
        {},
        {"status": "todo"},
        {"status": "in_progress,done"},
        {"priority": "high,urgent"},
        {"status": "todo,in_progress", "priority": "low"},
        {"completed": "true"},
        {"completed": "false", "priority": "medium,high"},
        {"project_id": str(project_id)},
        {"project_id": str(project_id), "status": "done"},
        {"project_id": "none"},
        {"project_id": "none", "completed": "false"},
        {"sort": "title", "status": "cancelled,todo"},
        {"overdue": "true"},
        {"overdue": "false", "status": "todo,done"},
        {"overdue": "true", "project_id": str(project_id)},
        {"overdue": "false", "completed": "false", "project_id": "none"},
    ]


def _selects(query: dict[str, str], task: dict[str, Any]) -> bool:
    """What each filter means, from the task as the unfiltered list shows it."""
    project = query.get("project_id")
    if project == "none" and task["project_id"] is not None:
        return False
    if project not in (None, "none") and task["project_id"] != int(project):
        return False
    if "status" in query and task["status"] not in query["status"].split(","):
        return False
    if "priority" in query and task["priority"] not in query["priority"].split(","):
        return False
    if "overdue" in query and task["is_overdue"] != (query["overdue"] == "true"):
        return False
    return "completed" not in query or (task["status"] == "done") == (query["completed"] == "true")


async def _listing(client: httpx.AsyncClient, user: UserHandle, query: dict[str, str]) -> Any:
    response = await client.get(TASKS, params={**query, "limit": "100"}, headers=user.headers)
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["total"] == len(page["items"]), (query, page["total"], len(page["items"]))
    return page


@pytest.mark.parametrize("seed", [1, 2])
async def test_a_total_is_the_number_of_rows_of_its_snapshot_under_concurrent_writes(
    live_app: FastAPI, live_client: httpx.AsyncClient, seed: int
) -> None:
    client = live_client
    rng = random.Random(seed)
    owner = await register_and_login(client)
    member = await register_and_login(client)
    created = await client.post(PROJECTS, json={"name": f"totals {seed}"}, headers=owner.headers)
    assert created.status_code == 201, created.text
    project_id = created.json()["id"]
    membership = f"{PROJECTS}/{project_id}/members/{member.id}"

    async def join() -> None:
        response = await client.put(membership, json={"role": "editor"}, headers=owner.headers)
        assert response.status_code == 200, response.text

    await join()
    tasks: list[int] = []
    for n in range(18):
        body: dict[str, Any] = {"title": f"task {n}", "priority": rng.choice(PRIORITIES)}
        if n % 4:  # due a few days ago or ahead: overdue while open
            body["due_date"] = (date.today() + timedelta(days=rng.randint(-5, 5))).isoformat()
        if n % 3 == 0:
            body["project_id"] = project_id
        elif n % 3 == 1:
            body["assignee_id"] = member.id
        response = await client.post(TASKS, json=body, headers=owner.headers)
        assert response.status_code == 201, response.text
        tasks.append(response.json()["id"])
    writing = True

    async def writer() -> None:
        for _ in range(16):
            task_id = rng.choice(tasks)
            roll = rng.random()
            if roll < 0.4:
                body = {"status": rng.choice(STATUSES), "priority": rng.choice(PRIORITIES)}
                response = await client.patch(task_url(task_id), json=body, headers=owner.headers)
                assert response.status_code in (200, 404, 409), response.text
            elif roll < 0.55:
                response = await client.delete(task_url(task_id), headers=owner.headers)
                assert response.status_code in (204, 404), response.text
            elif roll < 0.7:
                url = f"{task_url(task_id)}/restore"
                response = await client.post(url, headers=owner.headers)
                assert response.status_code in (200, 404), response.text
            elif roll < 0.85:
                body = {"title": "new", "project_id": project_id, "status": rng.choice(STATUSES)}
                response = await client.post(TASKS, json=body, headers=owner.headers)
                assert response.status_code == 201, response.text
                tasks.append(response.json()["id"])
            else:
                body = {"task_ids": rng.sample(tasks, 6), "target_status": rng.choice(STATUSES)}
                url = f"{TASKS}/bulk-status"
                response = await client.post(url, json=body, headers=owner.headers)
                assert response.status_code == 200, response.text

    async def mover() -> None:
        """The member leaves the project and comes back: the project's counts leave and rejoin
        their total."""
        for _ in range(4):
            await asyncio.sleep(rng.random() * 0.05)
            response = await client.delete(membership, headers=owner.headers)
            assert response.status_code == 204, response.text
            await asyncio.sleep(rng.random() * 0.05)
            await join()

    async def reader(user: UserHandle) -> int:
        reads = 0
        while writing or reads == 0:
            query = rng.choice(_filters(project_id))
            if query.get("project_id") not in (None, "none") and user is member:
                continue  # the member may be out of the project at this moment: a 404
            await _listing(client, user, query)
            reads += 1
        return reads

    readers = [asyncio.create_task(reader(user)) for user in (owner, member, owner, member)]
    await asyncio.gather(writer(), writer(), mover())
    writing = False
    assert sum(await asyncio.gather(*readers)) >= 8

    for user in (owner, member):
        everything = (await _listing(client, user, {}))["items"]
        for query in _filters(project_id):
            expected = sum(_selects(query, task) for task in everything)
            assert (await _listing(client, user, query))["total"] == expected, query
