"""Who may see and change a task (owner, assignee, stranger, anonymous), and concurrent writers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import register_and_login
from tests.task_helpers import TASKS, assert_problem, etag, fetch, task_url


def _request(kind: str, task_id: int) -> tuple[str, str, dict[str, Any] | None]:
    url = task_url(task_id)
    return {
        "GET": ("GET", url, None),
        "PATCH": ("PATCH", url, {"title": "hijacked", "priority": "urgent"}),
        "PUT": ("PUT", url, {"title": "hijacked"}),
        "DELETE": ("DELETE", url, None),
        "TRANSITION": ("POST", url + "/transition", {"status": "done"}),
    }[kind]


ALL_KINDS = ["GET", "PATCH", "PUT", "DELETE", "TRANSITION"]


# --- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "auth"),
    [
        *[(kind, None) for kind in [*ALL_KINDS, "LIST", "CREATE"]],
        *[
            ("PATCH", auth)
            for auth in ["Bearer not-a-jwt", "Basic YWxpY2U6cGFzc3dvcmQ=", "Bearer "]
        ],
        ("GET", "Bearer not-a-jwt"),
        ("LIST", "Bearer not-a-jwt"),
    ],
)
async def test_unauthenticated_is_401(client, alice, make_task, kind, auth):
    task = await make_task(alice, title="private")
    if kind == "LIST":
        method, url, body = "GET", TASKS, None
    elif kind == "CREATE":
        method, url, body = "POST", TASKS, {"title": "anonymous"}
    else:
        method, url, body = _request(kind, task["id"])
    headers = {} if auth is None else {"Authorization": auth}
    response = await client.request(method, url, json=body, headers=headers)
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "private" not in response.text
    listing = (await client.get(TASKS, headers=alice.headers)).json()
    assert [item["id"] for item in listing["items"]] == [task["id"]]
    assert await fetch(client, alice, task["id"]) == task


# --- strangers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
async def test_stranger_gets_404_and_changes_nothing(client, alice, bob, make_task, kind):
    task = await make_task(alice, title="secret", description="classified")
    method, url, body = _request(kind, task["id"])
    response = await client.request(method, url, json=body, headers=bob.headers)
    problem = assert_problem(response, 404, "task_not_found")
    assert "secret" not in response.text
    assert "classified" not in response.text
    assert "etag" not in response.headers
    # Indistinguishable from a task that does not exist at all.
    method, url, body = _request(kind, 2**62)
    missing = await client.request(method, url, json=body, headers=bob.headers)
    assert missing.status_code == 404
    assert {k: v for k, v in missing.json().items() if k != "request_id"} == {
        k: v for k, v in problem.items() if k != "request_id"
    }
    assert await fetch(client, alice, task["id"]) == task


@pytest.mark.parametrize("kind", ["PATCH", "PUT", "DELETE", "TRANSITION"])
async def test_stranger_with_matching_if_match_still_404(client, alice, bob, make_task, kind):
    task = await make_task(alice)
    method, url, body = _request(kind, task["id"])
    response = await client.request(
        method, url, json=body, headers={**bob.headers, "If-Match": etag(task["version"])}
    )
    assert_problem(response, 404, "task_not_found")
    assert await fetch(client, alice, task["id"]) == task


async def test_stranger_if_none_match_gets_404_not_304(client, alice, bob, make_task):
    task = await make_task(alice)
    response = await client.get(task_url(task["id"]), headers={**bob.headers, "If-None-Match": "*"})
    assert_problem(response, 404, "task_not_found")


async def test_list_shows_only_visible_tasks(client, make_user, make_task):
    owner = await make_user()
    assignee = await make_user()
    stranger = await make_user()
    own = await make_task(owner, title="own")
    shared = await make_task(owner, title="shared", assignee_id=assignee.id)
    theirs = await make_task(assignee, title="assignee's own")
    given = await make_task(stranger, title="given to owner", assignee_id=owner.id)

    async def ids(user) -> tuple[list[int], int]:
        page = (await client.get(TASKS, headers=user.headers)).json()
        return [item["id"] for item in page["items"]], page["total"]

    assert await ids(owner) == ([given["id"], shared["id"], own["id"]], 3)
    assert await ids(assignee) == ([theirs["id"], shared["id"]], 2)
    assert await ids(stranger) == ([given["id"]], 1)


# --- assignee ----------------------------------------------------------------------------------


@pytest.fixture
async def shared_task(alice, bob, make_task) -> dict[str, Any]:
    """A task owned by alice and assigned to bob."""
    return await make_task(alice, title="shared", tags=["team"], assignee_id=bob.id)


async def test_assignee_reads_task(client, bob, shared_task):
    response = await client.get(task_url(shared_task["id"]), headers=bob.headers)
    assert response.status_code == 200
    assert response.json() == shared_task
    assert response.headers["etag"] == '"1"'
    listing = (await client.get(TASKS, headers=bob.headers)).json()
    assert [item["id"] for item in listing["items"]] == [shared_task["id"]]


async def test_assignee_patches_fields_and_status(client, alice, bob, shared_task):
    response = await client.patch(
        task_url(shared_task["id"]),
        json={"title": "by bob", "tags": ["team", "bob"], "status": "in_progress"},
        headers=bob.headers,
    )
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["title"] == "by bob"
    assert updated["tags"] == ["team", "bob"]
    assert updated["status"] == "in_progress"
    assert updated["owner_id"] == alice.id
    assert updated["assignee_id"] == bob.id
    assert await fetch(client, alice, shared_task["id"]) == updated


async def test_assignee_transitions(client, alice, bob, shared_task):
    response = await client.post(
        task_url(shared_task["id"]) + "/transition", json={"status": "done"}, headers=bob.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "done"
    assert (await fetch(client, alice, shared_task["id"]))["status"] == "done"


async def test_assignee_puts_keeping_assignment(client, bob, shared_task):
    response = await client.put(
        task_url(shared_task["id"]),
        json={"title": "replaced by bob", "assignee_id": bob.id},
        headers=bob.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["title"] == "replaced by bob"
    assert response.json()["assignee_id"] == bob.id
    assert response.json()["tags"] == []


async def test_assignee_cannot_delete(client, alice, bob, shared_task):
    response = await client.delete(task_url(shared_task["id"]), headers=bob.headers)
    assert_problem(response, 403, "forbidden")
    assert await fetch(client, alice, shared_task["id"]) == shared_task


async def test_assignee_cannot_delete_even_with_matching_if_match(client, alice, bob, shared_task):
    response = await client.delete(
        task_url(shared_task["id"]), headers={**bob.headers, "If-Match": '"1"'}
    )
    assert_problem(response, 403, "forbidden")
    assert await fetch(client, alice, shared_task["id"]) == shared_task


@pytest.mark.parametrize("target", ["other", None, "self_owner"])
async def test_assignee_cannot_reassign_via_patch(
    client, alice, bob, make_user, shared_task, target
):
    carol = await make_user()
    new_assignee = {"other": carol.id, None: None, "self_owner": alice.id}[target]
    response = await client.patch(
        task_url(shared_task["id"]),
        json={"assignee_id": new_assignee, "title": "also changed"},
        headers=bob.headers,
    )
    assert_problem(response, 403, "forbidden")
    assert await fetch(client, alice, shared_task["id"]) == shared_task


async def test_assignee_cannot_reassign_via_put(client, alice, bob, make_user, shared_task):
    carol = await make_user()
    response = await client.put(
        task_url(shared_task["id"]),
        json={"title": "x", "assignee_id": carol.id},
        headers=bob.headers,
    )
    assert_problem(response, 403, "forbidden")
    assert await fetch(client, alice, shared_task["id"]) == shared_task


async def test_assignee_patch_repeating_own_assignment_is_fine(client, bob, shared_task):
    response = await client.patch(
        task_url(shared_task["id"]),
        json={"assignee_id": bob.id, "priority": "high"},
        headers=bob.headers,
    )
    assert response.status_code == 200, response.text
    assert response.json()["priority"] == "high"
    assert response.json()["assignee_id"] == bob.id


async def test_owner_reassigns_and_unassigns(client, alice, bob, make_user, shared_task):
    carol = await make_user()
    url = task_url(shared_task["id"])
    response = await client.patch(url, json={"assignee_id": carol.id}, headers=alice.headers)
    assert response.status_code == 200, response.text
    assert response.json()["assignee_id"] == carol.id
    assert response.json()["version"] == 2
    # The previous assignee loses sight of it; the new one gains it.
    assert_problem(await client.get(url, headers=bob.headers), 404, "task_not_found")
    assert (await client.get(TASKS, headers=bob.headers)).json()["total"] == 0
    assert (await fetch(client, carol, shared_task["id"]))["assignee_id"] == carol.id
    assert (await client.get(TASKS, headers=carol.headers)).json()["total"] == 1

    response = await client.patch(url, json={"assignee_id": None}, headers=alice.headers)
    assert response.status_code == 200
    assert response.json()["assignee_id"] is None
    assert_problem(await client.get(url, headers=carol.headers), 404, "task_not_found")


async def test_owner_can_assign_to_self(client, alice, shared_task):
    response = await client.patch(
        task_url(shared_task["id"]), json={"assignee_id": alice.id}, headers=alice.headers
    )
    assert response.status_code == 200
    assert response.json()["assignee_id"] == alice.id
    listing = (await client.get(TASKS, headers=alice.headers)).json()
    assert [item["id"] for item in listing["items"]] == [shared_task["id"]]


async def test_unassigned_user_loses_write_access(client, alice, bob, shared_task):
    url = task_url(shared_task["id"])
    await client.patch(url, json={"assignee_id": None}, headers=alice.headers)
    before = await fetch(client, alice, shared_task["id"])
    for kind in ALL_KINDS:
        method, req_url, body = _request(kind, shared_task["id"])
        response = await client.request(method, req_url, json=body, headers=bob.headers)
        assert_problem(response, 404, "task_not_found")
    assert await fetch(client, alice, shared_task["id"]) == before


async def test_create_assigned_to_another_user_makes_it_visible_to_them(
    client, alice, bob, make_task
):
    task = await make_task(alice, assignee_id=bob.id)
    assert (await fetch(client, bob, task["id"]))["owner_id"] == alice.id


# --- concurrency (real commits, real parallelism) ----------------------------------------------


async def test_concurrent_patches_with_same_if_match(live_client):
    owner = await register_and_login(live_client, "race_owner")
    created = await live_client.post(TASKS, json={"title": "race"}, headers=owner.headers)
    task = created.json()
    url = task_url(task["id"])
    headers = {**owner.headers, "If-Match": created.headers["etag"]}

    responses = await asyncio.gather(
        live_client.patch(url, json={"title": "first"}, headers=headers),
        live_client.patch(url, json={"title": "second"}, headers=headers),
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 412], [r.text for r in responses]
    winner = next(r for r in responses if r.status_code == 200).json()
    loser = next(r for r in responses if r.status_code == 412)
    assert loser.json()["code"] == "precondition_failed"

    final = (await live_client.get(url, headers=owner.headers)).json()
    assert final["version"] == task["version"] + 1
    assert final["title"] == winner["title"]


async def test_concurrent_conflicting_transitions(live_client):
    owner = await register_and_login(live_client, "race_transitions")
    task = (await live_client.post(TASKS, json={"title": "race"}, headers=owner.headers)).json()
    url = task_url(task["id"]) + "/transition"

    responses = await asyncio.gather(
        live_client.post(url, json={"status": "done"}, headers=owner.headers),
        live_client.post(url, json={"status": "cancelled"}, headers=owner.headers),
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 409], [r.text for r in responses]
    winner = next(r for r in responses if r.status_code == 200).json()
    loser = next(r for r in responses if r.status_code == 409)
    assert loser.json()["code"] == "invalid_transition"

    final = (await live_client.get(task_url(task["id"]), headers=owner.headers)).json()
    assert final["status"] == winner["status"]
    assert final["version"] == 2
    assert (final["completed_at"] is not None) is (final["status"] == "done")


async def test_concurrent_patches_without_if_match_both_apply(live_client):
    owner = await register_and_login(live_client, "race_fields")
    task = (await live_client.post(TASKS, json={"title": "race"}, headers=owner.headers)).json()
    url = task_url(task["id"])

    responses = await asyncio.gather(
        live_client.patch(url, json={"priority": "urgent"}, headers=owner.headers),
        live_client.patch(url, json={"tags": ["x"]}, headers=owner.headers),
    )
    assert [r.status_code for r in responses] == [200, 200], [r.text for r in responses]
    final = (await live_client.get(url, headers=owner.headers)).json()
    assert final["priority"] == "urgent"
    assert final["tags"] == ["x"]
    assert final["version"] == 3
