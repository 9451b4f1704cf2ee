"""Projects (API.md part 2, "Projects"): every endpoint and error code, ETags, pagination,
notifications, account deletion, project tasks through the tasks API, and real concurrency."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.models import Project, ProjectMember, Task, TaskStatDelta
from tests.conftest import MakeUser, UserHandle, register_and_login
from tests.task_helpers import TASKS, assert_problem, etag, task_url

PRIORITIES = ("low", "medium", "high", "urgent")

PROJECTS = "/api/v1/projects"
PROJECT_FIELDS = {
    "id",
    "name",
    "description",
    "owner_id",
    "role",
    "member_count",
    "archived",
    "created_at",
    "updated_at",
    "version",
}


def project_url(project_id: int) -> str:
    return f"{PROJECTS}/{project_id}"


def member_url(project_id: int, user_id: int) -> str:
    return f"{PROJECTS}/{project_id}/members/{user_id}"


async def create_project(
    client: httpx.AsyncClient, user: UserHandle, name: str | None = None, **body: Any
) -> dict[str, Any]:
    body["name"] = name or f"project {uuid.uuid4().hex[:8]}"
    response = await client.post(PROJECTS, json=body, headers=user.headers)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def put_member(
    client: httpx.AsyncClient, admin: UserHandle, project_id: int, user_id: int, role: str
) -> httpx.Response:
    return await client.put(
        member_url(project_id, user_id), json={"role": role}, headers=admin.headers
    )


async def add_member(
    client: httpx.AsyncClient, admin: UserHandle, project_id: int, user: UserHandle, role: str
) -> None:
    response = await put_member(client, admin, project_id, user.id, role)
    assert response.status_code == 200, response.text


async def get_project(
    client: httpx.AsyncClient, user: UserHandle, project_id: int
) -> dict[str, Any]:
    response = await client.get(project_url(project_id), headers=user.headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def members(
    client: httpx.AsyncClient, user: UserHandle, project_id: int
) -> list[dict[str, Any]]:
    response = await client.get(f"{project_url(project_id)}/members", headers=user.headers)
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()
    return result


@pytest.fixture
async def carol(make_user: MakeUser) -> UserHandle:
    return await make_user("carol")


@pytest.fixture
async def team(
    client: httpx.AsyncClient, alice: UserHandle, bob: UserHandle, carol: UserHandle
) -> dict[str, Any]:
    """alice's project: alice admin, bob editor, carol viewer."""
    project = await create_project(client, alice, "Team")
    await add_member(client, alice, project["id"], bob, "editor")
    await add_member(client, alice, project["id"], carol, "viewer")
    return project


# --- create ------------------------------------------------------------------------------------


async def test_create_makes_the_creator_its_admin(client, alice):
    response = await client.post(
        PROJECTS, json={"name": "  Launch  ", "description": "Q3"}, headers=alice.headers
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == PROJECT_FIELDS
    assert body["name"] == "Launch"
    assert body["description"] == "Q3"
    assert body["owner_id"] == alice.id
    assert body["role"] == "admin"
    assert body["member_count"] == 1
    assert body["archived"] is False
    assert response.headers["location"] == project_url(body["id"])
    assert response.headers["etag"] == etag(body["version"])
    assert await members(client, alice, body["id"]) == [
        {"user_id": alice.id, "username": "alice", "role": "admin", "added_at": body["created_at"]}
    ]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "   "},
        {"name": "x" * 101},
        {"name": "a\x00b"},
        {"name": 5},
        {"name": "ok", "description": "d" * 10_001},
    ],
    ids=["missing", "empty", "blank", "too-long", "nul", "number", "long-description"],
)
async def test_create_validates(client, alice, body):
    response = await client.post(PROJECTS, json=body, headers=alice.headers)
    assert_problem(response, 422, "validation_error")


async def test_name_limits_count_after_trimming(client, alice):
    project = await create_project(client, alice, "  " + "x" * 100 + "  ")
    assert project["name"] == "x" * 100


async def test_name_is_unique_per_owner_ignoring_case(client, alice, bob):
    await create_project(client, alice, "Roadmap")
    response = await client.post(PROJECTS, json={"name": "ROADMAP "}, headers=alice.headers)
    assert_problem(response, 409, "project_name_taken")
    # Another owner may use the name.
    assert (await create_project(client, bob, "roadmap"))["owner_id"] == bob.id


async def test_create_replays_with_an_idempotency_key(client, alice, db_session):
    headers = {**alice.headers, "Idempotency-Key": uuid.uuid4().hex}
    body = {"name": "Once"}
    first = await client.post(PROJECTS, json=body, headers=headers)
    second = await client.post(PROJECTS, json=body, headers=headers)
    assert first.status_code == second.status_code == 201
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    count = await db_session.scalar(
        select(func.count()).select_from(Project).where(Project.owner_id == alice.id)
    )
    assert count == 1
    reused = await client.post(PROJECTS, json={"name": "Other"}, headers=headers)
    assert_problem(reused, 422, "idempotency_key_reused")


async def test_create_refuses_a_body_that_is_not_json(client, alice):
    response = await client.post(PROJECTS, data={"name": "form"}, headers=alice.headers)
    assert_problem(response, 415, "unsupported_media_type")


async def test_projects_need_authentication(client):
    assert_problem(await client.get(PROJECTS), 401)
    assert_problem(await client.post(PROJECTS, json={"name": "x"}), 401)


# --- get ---------------------------------------------------------------------------------------


async def test_get_shows_the_callers_role_and_honours_if_none_match(client, team, carol, bob):
    response = await client.get(project_url(team["id"]), headers=carol.headers)
    assert response.status_code == 200
    body = response.json()
    assert body["role"] == "viewer"
    assert body["member_count"] == 3
    tag = response.headers["etag"]
    assert tag == etag(body["version"])
    cached = await client.get(
        project_url(team["id"]), headers={**carol.headers, "If-None-Match": tag}
    )
    assert cached.status_code == 304
    assert cached.content == b""
    assert cached.headers["etag"] == tag
    stale = await client.get(
        project_url(team["id"]), headers={**carol.headers, "If-None-Match": '"0"'}
    )
    assert stale.status_code == 200
    assert (await get_project(client, bob, team["id"]))["role"] == "editor"


async def test_non_members_get_404_for_everything(client, team, make_user):
    outsider = await make_user()
    pid = team["id"]
    headers = outsider.headers
    calls = [
        ("GET", project_url(pid), None),
        ("PATCH", project_url(pid), {"name": "x"}),
        ("DELETE", project_url(pid), None),
        ("GET", f"{project_url(pid)}/members", None),
        ("PUT", member_url(pid, outsider.id), {"role": "admin"}),
        ("DELETE", member_url(pid, outsider.id), None),
        ("GET", project_url(10**12), None),
    ]
    for method, url, body in calls:
        response = await client.request(method, url, json=body, headers=headers)
        assert_problem(response, 404, "project_not_found")


# --- update ------------------------------------------------------------------------------------


async def test_admin_updates_with_if_match(client, team, alice, carol):
    pid = team["id"]
    current = await get_project(client, alice, pid)
    response = await client.patch(
        project_url(pid),
        json={"name": " Renamed ", "description": None, "archived": True},
        headers={**alice.headers, "If-Match": etag(current["version"])},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["name"], body["description"], body["archived"]) == ("Renamed", None, True)
    assert body["version"] == current["version"] + 1
    assert body["updated_at"] > current["updated_at"]
    assert response.headers["etag"] == etag(body["version"])
    # The old ETag is stale now.
    stale = await client.patch(
        project_url(pid),
        json={"archived": False},
        headers={**alice.headers, "If-Match": etag(current["version"])},
    )
    assert_problem(stale, 412, "precondition_failed")
    # Members see the change.
    assert (await get_project(client, carol, pid))["name"] == "Renamed"


async def test_a_patch_that_changes_nothing_keeps_the_version(client, team, alice):
    response = await client.patch(project_url(team["id"]), json={}, headers=alice.headers)
    assert response.status_code == 200
    assert response.json()["version"] == team["version"] + 2  # two members were added


@pytest.mark.parametrize("who", ["bob", "carol"])
async def test_only_admins_update(client, team, who, request):
    user = request.getfixturevalue(who)
    response = await client.patch(project_url(team["id"]), json={"name": "x"}, headers=user.headers)
    assert_problem(response, 403, "insufficient_role")


@pytest.mark.parametrize(
    "body", [{"name": None}, {"archived": None}, {"archived": "yes"}, {"name": ""}]
)
async def test_update_validates(client, team, alice, body):
    response = await client.patch(project_url(team["id"]), json=body, headers=alice.headers)
    assert_problem(response, 422)


async def test_rename_to_a_taken_name_is_409(client, team, alice):
    await create_project(client, alice, "Other")
    response = await client.patch(
        project_url(team["id"]), json={"name": "other"}, headers=alice.headers
    )
    assert_problem(response, 409, "project_name_taken")


# --- delete ------------------------------------------------------------------------------------


async def test_admin_deletes_the_project_and_its_tasks(
    client, team, alice, bob, carol, db_session: AsyncSession
):
    pid = team["id"]
    task = await client.post(
        TASKS, json={"title": "in project", "project_id": pid}, headers=bob.headers
    )
    assert task.status_code == 201, task.text
    stats = await client.get(f"{TASKS}/stats", headers=carol.headers)
    assert stats.json()["total"] == 1
    for user in (bob, carol):
        response = await client.delete(project_url(pid), headers=user.headers)
        assert_problem(response, 403, "insufficient_role")
    stale = await client.delete(project_url(pid), headers={**alice.headers, "If-Match": '"1"'})
    assert_problem(stale, 412, "precondition_failed")
    response = await client.delete(project_url(pid), headers=alice.headers)
    assert response.status_code == 204
    assert_problem(await client.get(project_url(pid), headers=alice.headers), 404)
    assert_problem(
        await client.get(task_url(task.json()["id"]), headers=bob.headers), 404, "task_not_found"
    )
    # Every member's stats changed (and are not served stale from the cache).
    assert (await client.get(f"{TASKS}/stats", headers=carol.headers)).json()["total"] == 0
    for model, column in ((Task, Task.project_id), (TaskStatDelta, TaskStatDelta.project_id)):
        count = await db_session.scalar(
            select(func.count()).select_from(model).where(column == pid)
        )
        assert count == 0, model


# --- list --------------------------------------------------------------------------------------


async def test_list_pages_by_offset_and_cursor(client, alice, bob):
    own = [await create_project(client, alice) for _ in range(5)]
    shared = await create_project(client, bob, "bob's")
    await add_member(client, bob, shared["id"], alice, "viewer")
    await create_project(client, bob, "not alice's")
    expected = sorted([p["id"] for p in own] + [shared["id"]], reverse=True)

    first = await client.get(PROJECTS, params={"limit": 4}, headers=alice.headers)
    assert first.status_code == 200
    page = first.json()
    assert page["total"] == 6
    assert (page["limit"], page["offset"]) == (4, 0)
    assert [p["id"] for p in page["items"]] == expected[:4]
    roles = {p["id"]: p["role"] for p in page["items"]}
    assert roles[shared["id"]] == "viewer"
    link = first.headers["link"]
    assert link.endswith('>; rel="next"')
    assert "cursor=" in link
    assert "limit=4" in link

    second = await client.get(
        PROJECTS, params={"limit": 4, "cursor": page["next_cursor"]}, headers=alice.headers
    )
    body = second.json()
    assert [p["id"] for p in body["items"]] == expected[4:]
    assert body["offset"] is None
    assert body["next_cursor"] is None
    assert "link" not in second.headers

    by_offset = await client.get(PROJECTS, params={"limit": 4, "offset": 4}, headers=alice.headers)
    assert [p["id"] for p in by_offset.json()["items"]] == expected[4:]
    # A project added meanwhile does not shift a cursor's page.
    await create_project(client, alice)
    again = await client.get(
        PROJECTS, params={"limit": 4, "cursor": page["next_cursor"]}, headers=alice.headers
    )
    assert [p["id"] for p in again.json()["items"]] == expected[4:]


async def test_list_filters_archived(client, alice):
    active = await create_project(client, alice)
    archived = await create_project(client, alice)
    response = await client.patch(
        project_url(archived["id"]), json={"archived": True}, headers=alice.headers
    )
    assert response.status_code == 200
    for value, expected in (("true", [archived["id"]]), ("false", [active["id"]])):
        listed = await client.get(PROJECTS, params={"archived": value}, headers=alice.headers)
        assert [p["id"] for p in listed.json()["items"]] == expected
        assert listed.json()["total"] == 1


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 101}, {"offset": -1}, {"archived": "maybe"}, {"cursor": "junk"}],
)
async def test_list_validates(client, alice, params):
    assert_problem(await client.get(PROJECTS, params=params, headers=alice.headers), 422)


async def test_a_cursor_belongs_to_its_query(client, alice):
    for _ in range(2):
        await create_project(client, alice)
    page = (await client.get(PROJECTS, params={"limit": 1}, headers=alice.headers)).json()
    cursor = page["next_cursor"]
    other = await client.get(
        PROJECTS, params={"limit": 1, "cursor": cursor, "archived": "false"}, headers=alice.headers
    )
    assert_problem(other, 422, "invalid_cursor")
    both = await client.get(PROJECTS, params={"cursor": cursor, "offset": 0}, headers=alice.headers)
    assert_problem(both, 422, "validation_error")


# --- members -----------------------------------------------------------------------------------


async def test_adding_a_member_notifies_them_and_bumps_the_version(client, alice, bob):
    project = await create_project(client, alice, "Shared")
    response = await put_member(client, alice, project["id"], bob.id, "editor")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"user_id", "username", "role", "added_at"}
    assert (body["user_id"], body["username"], body["role"]) == (bob.id, "bob", "editor")
    after = await get_project(client, bob, project["id"])
    assert after["member_count"] == 2
    assert after["version"] == project["version"] + 1
    assert after["role"] == "editor"
    notes = (await client.get("/api/v1/notifications", headers=bob.headers)).json()["items"]
    assert [(n["kind"], n["project_id"]) for n in notes] == [("project_shared", project["id"])]
    assert "alice" in notes[0]["message"]
    assert "Shared" in notes[0]["message"]
    # A role change is no new share: no second notification, the count stays.
    changed = await put_member(client, alice, project["id"], bob.id, "viewer")
    assert changed.json()["role"] == "viewer"
    assert changed.json()["added_at"] == body["added_at"]
    again = await get_project(client, bob, project["id"])
    assert (again["member_count"], again["role"]) == (2, "viewer")
    assert again["version"] == after["version"] + 1
    notes = (await client.get("/api/v1/notifications", headers=bob.headers)).json()["items"]
    assert len(notes) == 1


async def test_members_are_listed_in_the_order_they_were_added(client, team, alice, bob, carol):
    listed = await members(client, carol, team["id"])
    assert [(m["user_id"], m["role"]) for m in listed] == [
        (alice.id, "admin"),
        (bob.id, "editor"),
        (carol.id, "viewer"),
    ]


async def test_put_member_errors(client, team, alice, bob, carol):
    pid = team["id"]
    assert_problem(await put_member(client, alice, pid, 10**12, "viewer"), 404, "user_not_found")
    for user in (bob, carol):
        response = await put_member(client, user, pid, user.id, "admin")
        assert_problem(response, 403, "insufficient_role")
    assert_problem(await put_member(client, alice, pid, alice.id, "editor"), 409, "last_admin")
    bad = await client.put(member_url(pid, bob.id), json={"role": "owner"}, headers=alice.headers)
    assert_problem(bad, 422)


async def test_an_admin_may_step_down_once_another_admin_exists(client, team, alice, bob):
    pid = team["id"]
    await add_member(client, alice, pid, bob, "admin")
    response = await put_member(client, alice, pid, alice.id, "viewer")
    assert response.status_code == 200
    assert (await get_project(client, alice, pid))["role"] == "viewer"
    assert_problem(await put_member(client, bob, pid, bob.id, "editor"), 409, "last_admin")


async def test_removing_a_member(client, team, alice, bob, carol, db_session: AsyncSession):
    pid = team["id"]
    task = await client.post(
        TASKS,
        json={"title": "for carol", "project_id": pid, "assignee_id": carol.id},
        headers=bob.headers,
    )
    assert task.status_code == 201, task.text
    created = task.json()
    assert_problem(
        await client.delete(member_url(pid, bob.id), headers=carol.headers),
        403,
        "insufficient_role",
    )
    assert_problem(
        await client.delete(member_url(pid, 10**12), headers=alice.headers), 404, "member_not_found"
    )
    before = await get_project(client, alice, pid)
    response = await client.delete(member_url(pid, carol.id), headers=alice.headers)
    assert response.status_code == 204
    after = await get_project(client, alice, pid)
    assert after["member_count"] == before["member_count"] - 1
    assert after["version"] == before["version"] + 1
    # carol sees nothing of the project any more; her task lost its assignee, with a new version.
    assert_problem(await client.get(project_url(pid), headers=carol.headers), 404)
    assert_problem(await client.get(task_url(created["id"]), headers=carol.headers), 404)
    seen = (await client.get(task_url(created["id"]), headers=bob.headers)).json()
    assert seen["assignee_id"] is None
    assert seen["version"] == created["version"] + 1
    assert_problem(
        await client.delete(member_url(pid, carol.id), headers=alice.headers),
        404,
        "member_not_found",
    )
    row = await db_session.get(ProjectMember, (pid, carol.id))
    assert row is None


async def test_a_member_may_leave_but_not_the_last_admin(client, team, alice, bob):
    pid = team["id"]
    response = await client.delete(member_url(pid, bob.id), headers=bob.headers)
    assert response.status_code == 204
    assert_problem(await client.get(project_url(pid), headers=bob.headers), 404)
    assert_problem(
        await client.delete(member_url(pid, alice.id), headers=alice.headers), 409, "last_admin"
    )


async def test_membership_changes_what_the_member_sees_in_stats(client, alice, bob):
    project = await create_project(client, alice)
    for n in range(2):
        created = await client.post(
            TASKS, json={"title": f"t{n}", "project_id": project["id"]}, headers=alice.headers
        )
        assert created.status_code == 201
    assert (await client.get(f"{TASKS}/stats", headers=bob.headers)).json()["total"] == 0
    await add_member(client, alice, project["id"], bob, "viewer")
    assert (await client.get(f"{TASKS}/stats", headers=bob.headers)).json()["total"] == 2
    response = await client.delete(member_url(project["id"], bob.id), headers=alice.headers)
    assert response.status_code == 204
    assert (await client.get(f"{TASKS}/stats", headers=bob.headers)).json()["total"] == 0


# --- account deletion --------------------------------------------------------------------------


async def test_deleting_the_account_of_a_sole_member_deletes_their_project(
    client, alice, db_session: AsyncSession
):
    project = await create_project(client, alice)
    created = await client.post(
        TASKS, json={"title": "t", "project_id": project["id"]}, headers=alice.headers
    )
    assert created.status_code == 201
    response = await client.delete("/api/v1/users/me", headers=alice.headers)
    assert response.status_code == 204, response.text
    assert await db_session.get(Project, project["id"]) is None


async def test_the_last_admin_cannot_delete_their_account(client, team, alice):
    response = await client.delete("/api/v1/users/me", headers=alice.headers)
    body = assert_problem(response, 409, "last_admin")
    assert "promote another admin" in body["detail"]
    assert (await client.get("/api/v1/users/me", headers=alice.headers)).status_code == 200


async def test_account_deletion_hands_tasks_to_the_earliest_remaining_admin(
    client, team, alice, bob, carol, make_user
):
    pid = team["id"]
    dave = await make_user()
    await add_member(client, alice, pid, dave, "admin")
    await add_member(client, alice, pid, carol, "admin")  # carol: earlier added than dave
    created = await client.post(
        TASKS, json={"title": "alice's", "project_id": pid}, headers=alice.headers
    )
    assert created.status_code == 201
    before = await get_project(client, bob, pid)
    response = await client.delete("/api/v1/users/me", headers=alice.headers)
    assert response.status_code == 204, response.text
    task = (await client.get(task_url(created.json()["id"]), headers=bob.headers)).json()
    assert task["owner_id"] == carol.id
    assert task["version"] == created.json()["version"] + 1
    after = await get_project(client, bob, pid)
    assert after["member_count"] == before["member_count"] - 1
    assert after["owner_id"] is None
    assert alice.id not in [m["user_id"] for m in await members(client, bob, pid)]


async def test_tasks_a_former_member_owns_survive_their_account(client, team, alice, bob):
    pid = team["id"]
    created = await client.post(
        TASKS, json={"title": "bob's", "project_id": pid}, headers=bob.headers
    )
    assert created.status_code == 201
    left = await client.delete(member_url(pid, bob.id), headers=bob.headers)
    assert left.status_code == 204
    response = await client.delete("/api/v1/users/me", headers=bob.headers)
    assert response.status_code == 204, response.text
    task = await client.get(task_url(created.json()["id"]), headers=alice.headers)
    assert task.status_code == 200
    assert task.json()["owner_id"] == alice.id


# --- project tasks through the tasks API -------------------------------------------------------


async def test_creating_tasks_in_a_project_needs_the_editor_role(
    client, team, alice, bob, carol, make_user
):
    pid = team["id"]
    for user in (alice, bob):
        response = await client.post(
            TASKS, json={"title": "ok", "project_id": pid}, headers=user.headers
        )
        assert response.status_code == 201, response.text
        assert response.json()["project_id"] == pid
    viewer = await client.post(
        TASKS, json={"title": "no", "project_id": pid}, headers=carol.headers
    )
    assert_problem(viewer, 403, "insufficient_role")
    outsider = await make_user()
    stranger = await client.post(
        TASKS, json={"title": "no", "project_id": pid}, headers=outsider.headers
    )
    assert_problem(stranger, 404, "project_not_found")


async def test_an_archived_projects_tasks_are_read_only(client, team, alice, bob):
    pid = team["id"]
    created = (
        await client.post(TASKS, json={"title": "t", "project_id": pid}, headers=bob.headers)
    ).json()
    response = await client.patch(project_url(pid), json={"archived": True}, headers=alice.headers)
    assert response.status_code == 200
    edit = await client.patch(task_url(created["id"]), json={"title": "x"}, headers=bob.headers)
    assert_problem(edit, 409, "project_archived")
    new = await client.post(TASKS, json={"title": "t", "project_id": pid}, headers=bob.headers)
    assert_problem(new, 409, "project_archived")
    assert (await client.get(task_url(created["id"]), headers=bob.headers)).status_code == 200


async def test_a_project_tasks_assignee_must_be_a_member(client, team, bob, make_user):
    outsider = await make_user()
    response = await client.post(
        TASKS,
        json={"title": "t", "project_id": team["id"], "assignee_id": outsider.id},
        headers=bob.headers,
    )
    assert_problem(response, 422, "assignee_not_member")


async def test_list_and_stats_filter_by_project(client, team, alice, bob, carol, make_task):
    pid = team["id"]
    in_project = await client.post(
        TASKS, json={"title": "p", "project_id": pid, "priority": "high"}, headers=bob.headers
    )
    personal = await make_task(carol, title="mine")
    listed = await client.get(TASKS, params={"project_id": pid}, headers=carol.headers)
    assert [t["id"] for t in listed.json()["items"]] == [in_project.json()["id"]]
    none = await client.get(TASKS, params={"project_id": "none"}, headers=carol.headers)
    assert [t["id"] for t in none.json()["items"]] == [personal["id"]]
    stats = await client.get(f"{TASKS}/stats", params={"project_id": pid}, headers=carol.headers)
    assert stats.status_code == 200
    assert stats.json()["total"] == 1
    assert stats.json()["by_priority"]["high"] == 1
    outsider_view = await client.get(TASKS, params={"project_id": pid}, headers=alice.headers)
    assert outsider_view.status_code == 200  # alice is the admin
    dave_headers = (await register_and_login(client)).headers
    for url in (TASKS, f"{TASKS}/stats"):
        response = await client.get(url, params={"project_id": pid}, headers=dave_headers)
        assert_problem(response, 404, "project_not_found")


# --- concurrency (real commits, real parallel transactions) ------------------------------------


async def test_two_admins_demoting_each_other_never_leave_no_admin(live_client):
    client = live_client
    alice = await register_and_login(client, f"ra_{uuid.uuid4().hex[:6]}")
    bob = await register_and_login(client, f"rb_{uuid.uuid4().hex[:6]}")
    project = await create_project(client, alice)
    pid = project["id"]
    await add_member(client, alice, pid, bob, "admin")
    rng = random.Random(17)

    async def demote(actor: UserHandle, target: UserHandle) -> httpx.Response:
        await asyncio.sleep(rng.uniform(0, 0.004))
        return await put_member(client, actor, pid, target.id, "editor")

    wins = {alice.id: 0, bob.id: 0}
    for _round in range(30):
        first, second = await asyncio.gather(demote(alice, bob), demote(bob, alice))
        statuses = sorted([first.status_code, second.status_code])
        assert statuses[0] == 200, (first.text, second.text)
        assert statuses[1] in (403, 409), (first.text, second.text)
        loser = second if second.status_code != 200 else first
        assert loser.json()["code"] in ("insufficient_role", "last_admin")
        listed = await members(client, alice, pid)
        admins = [m["user_id"] for m in listed if m["role"] == "admin"]
        assert len(admins) == 1, listed
        (admin_id,) = admins
        wins[admin_id] += 1
        admin = alice if admin_id == alice.id else bob
        other = bob if admin is alice else alice
        await add_member(client, admin, pid, other, "admin")  # the next round starts even
    assert sum(wins.values()) == 30


async def test_a_member_removed_while_editing_gets_404_next(live_client):
    client = live_client
    alice = await register_and_login(client, f"ea_{uuid.uuid4().hex[:6]}")
    bob = await register_and_login(client, f"eb_{uuid.uuid4().hex[:6]}")
    project = await create_project(client, alice)
    pid = project["id"]
    await add_member(client, alice, pid, bob, "editor")
    created = await client.post(
        TASKS, json={"title": "t", "project_id": pid, "assignee_id": bob.id}, headers=bob.headers
    )
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]

    async def edit(n: int) -> int:
        await asyncio.sleep(random.uniform(0, 0.004))
        response = await client.patch(
            task_url(task_id), json={"title": f"edit {n}"}, headers=bob.headers
        )
        return response.status_code

    async def remove() -> int:
        await asyncio.sleep(0.01)
        response = await client.delete(member_url(pid, bob.id), headers=alice.headers)
        return response.status_code

    *edits, removed = await asyncio.gather(*(edit(n) for n in range(10)), remove())
    assert removed == 204
    assert set(edits) <= {200, 404}, edits
    # Every request after the removal is a 404: the project, its tasks, its lists.
    assert_problem(await client.get(project_url(pid), headers=bob.headers), 404)
    assert_problem(await client.get(task_url(task_id), headers=bob.headers), 404)
    assert_problem(
        await client.patch(task_url(task_id), json={"title": "late"}, headers=bob.headers), 404
    )
    listed = await client.get(TASKS, params={"project_id": pid}, headers=bob.headers)
    assert_problem(listed, 404, "project_not_found")
    task = (await client.get(task_url(task_id), headers=alice.headers)).json()
    assert task["assignee_id"] is None
    assert not task["title"].startswith("late")


async def test_tasks_created_or_moved_into_a_project_being_deleted_never_fail_oddly(live_client):
    """Creates and moves into a project race its deletion: each is a 201/200 (and then deleted
    with the project) or a 404 project_not_found, never a 500 from the foreign key."""
    client = live_client
    rng = random.Random(23)
    alice = await register_and_login(client, f"da_{uuid.uuid4().hex[:6]}")
    for _round in range(5):
        pid = (await create_project(client, alice))["id"]
        personal = [
            (await client.post(TASKS, json={"title": f"p{n}"}, headers=alice.headers)).json()["id"]
            for n in range(4)
        ]

        async def create(n: int, pid: int = pid) -> httpx.Response:
            await asyncio.sleep(rng.uniform(0, 0.02))
            body = {"title": f"c{n}", "project_id": pid}
            return await client.post(TASKS, json=body, headers=alice.headers)

        async def move(task_id: int, pid: int = pid) -> httpx.Response:
            await asyncio.sleep(rng.uniform(0, 0.02))
            body = {"project_id": pid}
            return await client.patch(task_url(task_id), json=body, headers=alice.headers)

        async def delete(pid: int = pid) -> httpx.Response:
            await asyncio.sleep(rng.uniform(0, 0.02))
            return await client.delete(project_url(pid), headers=alice.headers)

        *writes, deleted = await asyncio.gather(
            *(create(n) for n in range(6)), *(move(t) for t in personal), delete()
        )
        assert deleted.status_code == 204, deleted.text
        for response in writes:
            assert response.status_code in (200, 201, 404), response.text
            if response.status_code == 404:
                assert response.json()["code"] == "project_not_found"
        # Nothing is left in the deleted project; a move that lost the race left its task personal.
        listed = await client.get(TASKS, params={"limit": 100}, headers=alice.headers)
        assert all(item["project_id"] is None for item in listed.json()["items"])


async def test_concurrent_moves_and_edits_with_if_match_lose_no_update(live_client):
    """Editors move one task between two projects and edit it at once, each with the ETag they
    read: exactly one write per version succeeds, the others get 412, and the final task holds
    the last successful write of every field."""
    client = live_client
    rng = random.Random(29)
    alice = await register_and_login(client, f"ma_{uuid.uuid4().hex[:6]}")
    bob = await register_and_login(client, f"mb_{uuid.uuid4().hex[:6]}")
    first = (await create_project(client, alice))["id"]
    second = (await create_project(client, alice))["id"]
    for pid in (first, second):
        await add_member(client, alice, pid, bob, "editor")
    created = await client.post(
        TASKS, json={"title": "moving", "project_id": first}, headers=alice.headers
    )
    task_id = created.json()["id"]
    applied: list[dict[str, Any]] = []
    for _round in range(15):
        read = await client.get(task_url(task_id), headers=alice.headers)
        tag = read.headers["ETag"]

        async def write(
            actor: UserHandle, body: dict[str, Any], tag: str = tag
        ) -> tuple[httpx.Response, dict[str, Any]]:
            await asyncio.sleep(rng.uniform(0, 0.005))
            headers = {**actor.headers, "If-Match": tag}
            return await client.patch(task_url(task_id), json=body, headers=headers), body

        target = second if read.json()["project_id"] == first else first
        current = read.json()["priority"]
        results = await asyncio.gather(
            write(alice, {"project_id": target}),
            write(bob, {"title": f"title {_round}"}),
            # (a real change: a write that changes nothing is a 200 that leaves the version)
            write(bob, {"priority": rng.choice([p for p in PRIORITIES if p != current])}),
        )
        statuses = sorted(response.status_code for response, _ in results)
        assert statuses == [200, 412, 412], [r.text for r, _ in results]
        applied.extend(body for response, body in results if response.status_code == 200)
    final = (await client.get(task_url(task_id), headers=alice.headers)).json()
    expected = {"title": "moving", "project_id": first, "priority": "medium"}
    for body in applied:
        expected.update(body)
    assert {key: final[key] for key in expected} == expected
    assert final["version"] == 1 + len(applied)
