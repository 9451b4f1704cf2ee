"""The trash (API.md part 2): DELETE moves a task there, restore brings it back as it was (files
included), force deletes for good, a job purges what outlived TRASH_RETENTION_DAYS; who may do
each; and what a trashed task is absent from (lists, search, stats, gets, files, notifications'
links)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.models import Attachment, Job, Task
from taskapi.tasks import trash
from tests.api.test_projects import add_member, create_project, project_url
from tests.conftest import MakeUser, UserHandle
from tests.task_helpers import TASKS, assert_problem, task_url

TRASH = "/api/v1/trash"
FILE = ("notes.txt", b"release checklist\n- tag\n", "text/plain")


def restore_url(task_id: int) -> str:
    return f"{task_url(task_id)}/restore"


def force_url(task_id: int) -> str:
    return f"{task_url(task_id)}/force"


async def ids(client: httpx.AsyncClient, user: UserHandle, **params: Any) -> set[int]:
    response = await client.get(TASKS, params={"limit": 100, **params}, headers=user.headers)
    assert response.status_code == 200, response.text
    return {item["id"] for item in response.json()["items"]}


async def trash_ids(client: httpx.AsyncClient, user: UserHandle) -> list[int]:
    response = await client.get(TRASH, params={"limit": 100}, headers=user.headers)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


async def stats(client: httpx.AsyncClient, user: UserHandle, **params: Any) -> dict[str, Any]:
    response = await client.get(f"{TASKS}/stats", params=params, headers=user.headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def upload(client: httpx.AsyncClient, user: UserHandle, task_id: int) -> dict[str, Any]:
    response = await client.post(
        f"{task_url(task_id)}/files", files={"file": FILE}, headers=user.headers
    )
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_a_deleted_task_is_absent_everywhere_until_restored_as_it_was(
    client: httpx.AsyncClient, alice: UserHandle, bob: UserHandle, make_task: Any
) -> None:
    task = await make_task(
        alice, title="Quarterly zeppelin report", tags=["q4"], priority="high", assignee_id=bob.id
    )
    other = await make_task(alice, title="stays")
    stored = await upload(client, alice, task["id"])
    before = (await client.get(task_url(task["id"]), headers=alice.headers)).json()
    stats_before = await stats(client, alice)

    deleted = await client.delete(task_url(task["id"]), headers=alice.headers)
    assert deleted.status_code == 204, deleted.text
    for user in (alice, bob):
        assert_problem(await client.get(task_url(task["id"]), headers=user.headers), 404)
        assert task["id"] not in await ids(client, user)
        assert task["id"] not in await ids(client, user, search="zeppelin")
        download = await client.get(f"/api/v1/files/{stored['id']}", headers=user.headers)
        assert_problem(download, 404, "file_not_found")
    assert await ids(client, alice) == {other["id"]}
    after = await stats(client, alice)
    assert after["total"] == stats_before["total"] - 1
    assert after["by_tag"].get("q4", 0) == 0
    assert (await stats(client, bob))["total"] == 0
    # Bob's notification of the assignment no longer links to it.
    notes = (await client.get("/api/v1/notifications", headers=bob.headers)).json()["items"]
    assert [n["task_id"] for n in notes] == [None]

    listed = (await client.get(TRASH, headers=alice.headers)).json()
    assert [item["id"] for item in listed["items"]] == [task["id"]]
    item = listed["items"][0]
    deleted_at = datetime.fromisoformat(item["deleted_at"].replace("Z", "+00:00"))
    purge_at = datetime.fromisoformat(item["purge_at"].replace("Z", "+00:00"))
    assert purge_at - deleted_at == timedelta(days=30)
    assert await trash_ids(client, bob) == []  # an assignee restores nothing

    restored = await client.post(restore_url(task["id"]), headers=alice.headers)
    assert restored.status_code == 200, restored.text
    body = restored.json()
    unchanged = {k: v for k, v in before.items() if k not in ("version", "updated_at")}
    assert {k: body[k] for k in unchanged} == unchanged
    assert restored.headers["ETag"] == f'"{body["version"]}"'
    assert await stats(client, alice) == stats_before
    assert task["id"] in await ids(client, bob, search="zeppelin")
    download = await client.get(f"/api/v1/files/{stored['id']}", headers=bob.headers)
    assert download.status_code == 200
    assert download.content == FILE[1]
    notes = (await client.get("/api/v1/notifications", headers=bob.headers)).json()["items"]
    assert [n["task_id"] for n in notes] == [task["id"]]
    assert await trash_ids(client, alice) == []


async def test_who_may_delete_restore_and_force(
    client: httpx.AsyncClient, alice: UserHandle, bob: UserHandle, make_task: Any
) -> None:
    task = await make_task(alice, assignee_id=bob.id)
    assert_problem(await client.delete(task_url(task["id"]), headers=bob.headers), 403, "forbidden")
    assert_problem(await client.delete(force_url(task["id"]), headers=bob.headers), 403)
    assert (await client.delete(task_url(task["id"]), headers=alice.headers)).status_code == 204
    for who in (bob,):
        assert_problem(await client.post(restore_url(task["id"]), headers=who.headers), 404)
        assert_problem(await client.delete(force_url(task["id"]), headers=who.headers), 404)
    # Not in the trash: nothing to restore.
    live = await make_task(alice)
    assert_problem(await client.post(restore_url(live["id"]), headers=alice.headers), 404)
    assert_problem(await client.delete(task_url(task["id"]), headers=alice.headers), 404)


async def test_force_deletes_for_good_from_the_trash_or_not(
    client: httpx.AsyncClient, alice: UserHandle, make_task: Any, db_session: AsyncSession
) -> None:
    trashed, live = await make_task(alice), await make_task(alice)
    for task in (trashed, live):
        await upload(client, alice, task["id"])
    assert (await client.delete(task_url(trashed["id"]), headers=alice.headers)).status_code == 204
    jobs_before = await db_session.scalar(select(func.count()).select_from(Job))
    for task in (trashed, live):
        response = await client.delete(force_url(task["id"]), headers=alice.headers)
        assert response.status_code == 204, response.text
        assert await db_session.scalar(select(Task.id).where(Task.id == task["id"])) is None
        assert_problem(await client.post(restore_url(task["id"]), headers=alice.headers), 404)
    assert await db_session.scalar(select(func.count()).select_from(Attachment)) == 0
    # Each task's stored object is deleted by a durable job.
    assert await db_session.scalar(select(func.count()).select_from(Job)) == jobs_before + 2
    assert await trash_ids(client, alice) == []


async def test_project_tasks_trash_by_role_and_a_deleted_projects_tasks_go_to_their_owners(
    client: httpx.AsyncClient, alice: UserHandle, bob: UserHandle, make_user: MakeUser
) -> None:
    carol = await make_user("carol")
    project = await create_project(client, alice)
    pid = project["id"]
    await add_member(client, alice, pid, bob, "editor")
    await add_member(client, alice, pid, carol, "viewer")
    created = await client.post(
        TASKS, json={"title": "bob's", "project_id": pid}, headers=bob.headers
    )
    task_id = created.json()["id"]
    assert_problem(
        await client.delete(task_url(task_id), headers=carol.headers), 403, "insufficient_role"
    )
    assert (await client.delete(task_url(task_id), headers=alice.headers)).status_code == 204
    assert await trash_ids(client, bob) == [task_id]  # any editor may restore it
    assert await trash_ids(client, carol) == []
    restored = await client.post(restore_url(task_id), headers=bob.headers)
    assert restored.status_code == 200
    assert restored.json()["project_id"] == pid

    deleted = await client.delete(project_url(pid), headers=alice.headers)
    assert deleted.status_code == 204, deleted.text
    assert await trash_ids(client, alice) == []
    assert await trash_ids(client, bob) == [task_id]  # its owner's, personal now
    back = await client.post(restore_url(task_id), headers=bob.headers)
    assert back.status_code == 200
    assert back.json()["project_id"] is None
    assert back.json()["owner_id"] == bob.id
    assert await ids(client, bob) == {task_id}
    assert await ids(client, carol) == set()


async def test_an_archived_projects_task_cannot_be_restored_until_unarchived(
    client: httpx.AsyncClient, alice: UserHandle
) -> None:
    pid = (await create_project(client, alice))["id"]
    task_id = (
        await client.post(TASKS, json={"title": "t", "project_id": pid}, headers=alice.headers)
    ).json()["id"]
    assert (await client.delete(task_url(task_id), headers=alice.headers)).status_code == 204
    archive = await client.patch(project_url(pid), json={"archived": True}, headers=alice.headers)
    assert archive.status_code == 200
    assert_problem(
        await client.post(restore_url(task_id), headers=alice.headers), 409, "project_archived"
    )
    await client.patch(project_url(pid), json={"archived": False}, headers=alice.headers)
    assert (await client.post(restore_url(task_id), headers=alice.headers)).status_code == 200


async def test_the_purge_job_deletes_only_what_outlived_the_retention(
    client: httpx.AsyncClient, alice: UserHandle, make_task: Any, db_session: AsyncSession
) -> None:
    old, recent = await make_task(alice), await make_task(alice)
    await upload(client, alice, old["id"])
    for task in (old, recent):
        assert (await client.delete(task_url(task["id"]), headers=alice.headers)).status_code == 204
    await db_session.execute(
        text("UPDATE tasks SET deleted_at = now() - interval '31 days' WHERE id = :id"),
        {"id": old["id"]},
    )
    purged = await trash.purge_expired(db_session, 30, limit=100)
    assert purged == 1
    assert await db_session.scalar(select(Task.id).where(Task.id == old["id"])) is None
    assert await trash_ids(client, alice) == [recent["id"]]
    keys = await db_session.scalars(select(Job.payload).where(Job.kind == "delete_objects"))
    assert any(payload["keys"] for payload in keys.all())


async def test_the_trash_pages_newest_first_by_offset_and_cursor(
    client: httpx.AsyncClient, alice: UserHandle, make_task: Any
) -> None:
    tasks = [await make_task(alice) for _ in range(5)]
    for task in tasks:
        assert (await client.delete(task_url(task["id"]), headers=alice.headers)).status_code == 204
    newest_first = [t["id"] for t in reversed(tasks)]
    first = await client.get(TRASH, params={"limit": 2}, headers=alice.headers)
    page = first.json()
    assert [i["id"] for i in page["items"]] == newest_first[:2]
    assert page["total"] == 5
    assert 'rel="next"' in first.headers["Link"]
    seen = [i["id"] for i in page["items"]]
    while page["next_cursor"]:
        page = (
            await client.get(
                TRASH, params={"limit": 2, "cursor": page["next_cursor"]}, headers=alice.headers
            )
        ).json()
        seen += [i["id"] for i in page["items"]]
    assert seen == newest_first
    offset = await client.get(TRASH, params={"limit": 2, "offset": 2}, headers=alice.headers)
    assert [i["id"] for i in offset.json()["items"]] == newest_first[2:4]
    both = await client.get(TRASH, params={"offset": 1, "cursor": "x"}, headers=alice.headers)
    assert_problem(both, 422)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_stats_stay_exact_through_random_trash_restore_and_force(
    client: httpx.AsyncClient, alice: UserHandle, bob: UserHandle, make_task: Any, seed: int
) -> None:
    """After every step, alice's and bob's stats equal the counts of what they list."""
    rng = random.Random(seed)
    live: list[int] = []
    trashed: list[int] = []
    for n in range(6):
        assignee = bob.id if rng.random() < 0.5 else None
        task = await make_task(
            alice,
            tags=[rng.choice(["a", "b"])],
            status=rng.choice(["todo", "done", "in_progress"]),
            assignee_id=assignee,
            title=f"t{n}",
        )
        live.append(task["id"])
    for _step in range(12):
        action = rng.choice(["trash", "restore", "force"])
        if action == "trash" and live:
            task_id = live.pop(rng.randrange(len(live)))
            assert (
                await client.delete(task_url(task_id), headers=alice.headers)
            ).status_code == 204
            trashed.append(task_id)
        elif action == "restore" and trashed:
            task_id = trashed.pop(rng.randrange(len(trashed)))
            assert (
                await client.post(restore_url(task_id), headers=alice.headers)
            ).status_code == 200
            live.append(task_id)
        elif action == "force" and (live or trashed):
            pool = live if (live and rng.random() < 0.5) or not trashed else trashed
            task_id = pool.pop(rng.randrange(len(pool)))
            assert (
                await client.delete(force_url(task_id), headers=alice.headers)
            ).status_code == 204
        for user in (alice, bob):
            listed = (await client.get(TASKS, params={"limit": 100}, headers=user.headers)).json()[
                "items"
            ]
            counted = await stats(client, user)
            assert counted["total"] == len(listed)
            assert counted["completed"] == sum(1 for t in listed if t["status"] == "done")
            tags: dict[str, int] = {}
            for t in listed:
                for tag in t["tags"]:
                    tags[tag] = tags.get(tag, 0) + 1
            assert counted["by_tag"] == dict(sorted(tags.items(), key=lambda kv: (-kv[1], kv[0])))
        assert set(await trash_ids(client, alice)) == set(trashed)
