"""Tags (add/remove), assignment via POST /tasks/{id}/assign, and what each role may do."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import UserHandle
from tests.task_helpers import TASKS, assert_problem, assert_task_shape, etag, fetch, task_url


def tags_url(task_id: int, tag: str | None = None) -> str:
    url = f"{task_url(task_id)}/tags"
    return url if tag is None else f"{url}/{tag}"


def assign_url(task_id: int) -> str:
    return f"{task_url(task_id)}/assign"


async def listed_ids(client: httpx.AsyncClient, user: UserHandle, **params: Any) -> list[int]:
    response = await client.get(TASKS, params=params, headers=user.headers)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


@pytest.fixture
async def carol(make_user) -> UserHandle:
    return await make_user("carol")


@pytest.fixture
async def shared(alice, bob, make_task) -> dict[str, Any]:
    """A task of alice's assigned to bob."""
    return await make_task(alice, title="shared work", tags=["docs"], assignee_id=bob.id)


# --- adding tags -------------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", [False, True], ids=["bare-array", "object"])
async def test_add_tags_normalises_and_bumps_version(client, alice, make_task, wrap):
    task = await make_task(alice)
    raw = ["  Docs ", "BUG", "docs", "bug "]
    response = await client.post(
        tags_url(task["id"]), json={"tags": raw} if wrap else raw, headers=alice.headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert_task_shape(body)
    assert body["tags"] == ["docs", "bug"]
    assert body["version"] == task["version"] + 1
    assert response.headers["etag"] == etag(body["version"])
    assert await fetch(client, alice, task["id"]) == body


async def test_add_tags_keeps_existing_and_appends_new_ones(client, alice, make_task):
    task = await make_task(alice, tags=["alpha", "beta"])
    response = await client.post(
        tags_url(task["id"]), json=["Gamma", "ALPHA"], headers=alice.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["tags"] == ["alpha", "beta", "gamma"]
    assert await listed_ids(client, alice, tags="gamma,alpha") == [task["id"]]


async def test_adding_existing_tags_is_a_no_op(client, alice, make_task):
    task = await make_task(alice, tags=["docs"])
    for body in (["docs"], ["DOCS", " docs "], [], {"tags": []}):
        response = await client.post(tags_url(task["id"]), json=body, headers=alice.headers)
        assert response.status_code == 200, (body, response.text)
        assert response.json() == task, body
        assert response.headers["etag"] == etag(task["version"])
    assert await fetch(client, alice, task["id"]) == task


async def test_tags_up_to_twenty_in_total(client, alice, make_task):
    task = await make_task(alice, tags=[f"t{i}" for i in range(18)])
    ok = await client.post(tags_url(task["id"]), json=["t0", "x", "y"], headers=alice.headers)
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["tags"]) == 20
    too_many = await client.post(tags_url(task["id"]), json=["z"], headers=alice.headers)
    assert_problem(too_many, 422)
    after = await fetch(client, alice, task["id"])
    assert after == ok.json()
    assert "z" not in after["tags"]


async def test_more_than_twenty_new_tags_in_one_request_is_422(client, alice, make_task):
    task = await make_task(alice)
    response = await client.post(
        tags_url(task["id"]), json=[f"n{i}" for i in range(21)], headers=alice.headers
    )
    assert_problem(response, 422)
    assert await fetch(client, alice, task["id"]) == task


INVALID_TAGS = [
    "",
    "   ",
    "x" * 51,
    "a,b",
    "bell\x07",
    "new\nline",
    "tab\there",
    "nul\x00",
    "\u200b",
]


async def test_invalid_tag_is_422_and_changes_nothing(client, alice, make_task):
    task = await make_task(alice, tags=["keep"])
    for bad in INVALID_TAGS:
        for body in ([bad], {"tags": ["fine", bad]}):
            response = await client.post(tags_url(task["id"]), json=body, headers=alice.headers)
            problem = assert_problem(response, 422)
            assert problem["errors"], (bad, problem)
    assert await fetch(client, alice, task["id"]) == task


async def test_fifty_character_tag_is_accepted(client, alice, make_task):
    task = await make_task(alice)
    tag = "Y" * 50
    response = await client.post(tags_url(task["id"]), json=[f"  {tag}  "], headers=alice.headers)
    assert response.status_code == 200, response.text
    assert response.json()["tags"] == ["y" * 50]


async def test_malformed_tags_body_is_422(client, alice, make_task):
    task = await make_task(alice)
    for body in ("docs", {"tags": "docs"}, {"tag": ["docs"]}, [1, 2], None, {"tags": None}):
        response = await client.post(tags_url(task["id"]), json=body, headers=alice.headers)
        assert response.status_code == 422, (body, response.text)
        assert_problem(response, 422)
    assert await fetch(client, alice, task["id"]) == task


# --- removing tags -----------------------------------------------------------------------------


async def test_remove_tag_case_insensitively(client, alice, make_task):
    task = await make_task(alice, tags=["docs", "bug"])
    response = await client.delete(tags_url(task["id"], "DOCS"), headers=alice.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tags"] == ["bug"]
    assert body["version"] == task["version"] + 1
    assert response.headers["etag"] == etag(body["version"])
    assert await fetch(client, alice, task["id"]) == body
    assert await listed_ids(client, alice, tags="docs") == []


async def test_remove_missing_tag_is_404_tag_not_found(client, alice, make_task):
    task = await make_task(alice, tags=["docs"])
    for tag in ("bug", "doc", "a,b"):
        response = await client.delete(tags_url(task["id"], tag), headers=alice.headers)
        assert_problem(response, 404, "tag_not_found")
    removed = await client.delete(tags_url(task["id"], "docs"), headers=alice.headers)
    assert removed.status_code == 200
    again = await client.delete(tags_url(task["id"], "docs"), headers=alice.headers)
    assert_problem(again, 404, "tag_not_found")
    assert (await fetch(client, alice, task["id"]))["version"] == task["version"] + 1


async def test_remove_tag_on_missing_task_is_task_not_found(client, alice):
    response = await client.delete(tags_url(2**62, "docs"), headers=alice.headers)
    assert_problem(response, 404, "task_not_found")


# --- who may tag -------------------------------------------------------------------------------


async def test_assignee_may_add_and_remove_tags(client, alice, bob, shared):
    added = await client.post(tags_url(shared["id"]), json=["Review"], headers=bob.headers)
    assert added.status_code == 200, added.text
    assert added.json()["tags"] == ["docs", "review"]
    removed = await client.delete(tags_url(shared["id"], "docs"), headers=bob.headers)
    assert removed.status_code == 200, removed.text
    assert removed.json()["tags"] == ["review"]
    assert (await fetch(client, alice, shared["id"]))["tags"] == ["review"]


async def test_stranger_cannot_add_or_remove_tags(client, alice, carol, shared):
    added = await client.post(tags_url(shared["id"]), json=["spam"], headers=carol.headers)
    assert_problem(added, 404, "task_not_found")
    removed = await client.delete(tags_url(shared["id"], "docs"), headers=carol.headers)
    problem = assert_problem(removed, 404, "task_not_found")
    assert "docs" not in problem["detail"]
    assert await fetch(client, alice, shared["id"]) == shared


async def test_tag_changes_honour_if_match(client, alice, make_task):
    task = await make_task(alice, tags=["docs"])
    stale = {**alice.headers, "If-Match": etag(task["version"])}
    first = await client.post(tags_url(task["id"]), json=["new"], headers=stale)
    assert first.status_code == 200, first.text
    assert_problem(await client.post(tags_url(task["id"]), json=["x"], headers=stale), 412)
    assert_problem(await client.delete(tags_url(task["id"], "docs"), headers=stale), 412)
    current = {**alice.headers, "If-Match": first.headers["etag"]}
    removed = await client.delete(tags_url(task["id"], "docs"), headers=current)
    assert removed.status_code == 200, removed.text
    assert removed.json()["tags"] == ["new"]
    assert removed.json()["version"] == task["version"] + 2


# --- assign ------------------------------------------------------------------------------------


async def test_owner_assigns_and_assignee_gains_access(client, alice, bob, make_task):
    task = await make_task(alice, title="to delegate")
    assert_problem(await client.get(task_url(task["id"]), headers=bob.headers), 404)
    response = await client.post(
        assign_url(task["id"]), json={"assignee_id": bob.id}, headers=alice.headers
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert_task_shape(body)
    assert body["assignee_id"] == bob.id
    assert body["owner_id"] == alice.id
    assert body["version"] == task["version"] + 1
    assert response.headers["etag"] == etag(body["version"])

    assert await fetch(client, bob, task["id"]) == body
    assert task["id"] in await listed_ids(client, bob)
    assert await listed_ids(client, bob, scope="assigned") == [task["id"]]
    patched = await client.patch(
        task_url(task["id"]), json={"title": "bob's now"}, headers=bob.headers
    )
    assert patched.status_code == 200, patched.text
    moved = await client.post(
        f"{task_url(task['id'])}/transition", json={"status": "in_progress"}, headers=bob.headers
    )
    assert moved.status_code == 200, moved.text
    tagged = await client.post(tags_url(task["id"]), json=["mine"], headers=bob.headers)
    assert tagged.status_code == 200, tagged.text
    final = await fetch(client, alice, task["id"])
    assert (final["title"], final["status"], final["tags"]) == (
        "bob's now",
        "in_progress",
        ["mine"],
    )


async def test_assign_requires_the_owner(client, alice, bob, carol, shared):
    for assignee_id in (carol.id, None, bob.id, alice.id):
        response = await client.post(
            assign_url(shared["id"]), json={"assignee_id": assignee_id}, headers=bob.headers
        )
        assert_problem(response, 403, "forbidden")
    assert await fetch(client, alice, shared["id"]) == shared


async def test_stranger_assigning_gets_404(client, alice, carol, shared):
    response = await client.post(
        assign_url(shared["id"]), json={"assignee_id": carol.id}, headers=carol.headers
    )
    assert_problem(response, 404, "task_not_found")
    assert await fetch(client, alice, shared["id"]) == shared
    assert await listed_ids(client, carol) == []


async def test_assign_unknown_user_is_422(client, alice, make_task):
    task = await make_task(alice)
    response = await client.post(
        assign_url(task["id"]), json={"assignee_id": 2**62}, headers=alice.headers
    )
    problem = assert_problem(response, 422, "unknown_assignee")
    assert problem["errors"][0]["loc"][-1] == "assignee_id"
    assert await fetch(client, alice, task["id"]) == task


async def test_assign_invalid_body_is_422(client, alice, make_task):
    task = await make_task(alice)
    bodies = [{}, {"assignee_id": 0}, {"assignee_id": -3}, {"assignee_id": "bob"}, [1]]
    for body in [*bodies, {"assignee_id": 2**63}, {"assignee_id": 1.5}]:
        response = await client.post(assign_url(task["id"]), json=body, headers=alice.headers)
        assert response.status_code == 422, (body, response.text)
        assert_problem(response, 422)
    assert await fetch(client, alice, task["id"]) == task


async def test_unassign_removes_access(client, alice, bob, shared):
    response = await client.post(
        assign_url(shared["id"]), json={"assignee_id": None}, headers=alice.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["assignee_id"] is None
    assert response.json()["version"] == shared["version"] + 1
    assert_problem(await client.get(task_url(shared["id"]), headers=bob.headers), 404)
    patch = await client.patch(task_url(shared["id"]), json={"title": "x"}, headers=bob.headers)
    assert_problem(patch, 404, "task_not_found")
    tag = await client.post(tags_url(shared["id"]), json=["x"], headers=bob.headers)
    assert_problem(tag, 404, "task_not_found")
    assert await listed_ids(client, bob) == []
    assert await listed_ids(client, alice, assignee="none") == [shared["id"]]


async def test_reassign_moves_access_to_the_new_assignee(client, alice, bob, carol, shared):
    response = await client.post(
        assign_url(shared["id"]), json={"assignee_id": carol.id}, headers=alice.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["assignee_id"] == carol.id
    assert_problem(await client.get(task_url(shared["id"]), headers=bob.headers), 404)
    assert await listed_ids(client, bob) == []
    assert await fetch(client, carol, shared["id"]) == response.json()
    assert await listed_ids(client, carol) == [shared["id"]]
    assert await listed_ids(client, alice, assignee=str(carol.id)) == [shared["id"]]


async def test_assigning_the_same_user_again_is_a_no_op(client, alice, bob, shared):
    response = await client.post(
        assign_url(shared["id"]), json={"assignee_id": bob.id}, headers=alice.headers
    )
    assert response.status_code == 200, response.text
    assert response.json() == shared
    assert response.headers["etag"] == etag(shared["version"])
    unassigned = await client.post(
        assign_url(shared["id"]), json={"assignee_id": None}, headers=alice.headers
    )
    again = await client.post(
        assign_url(shared["id"]), json={"assignee_id": None}, headers=alice.headers
    )
    assert again.json() == unassigned.json()


async def test_owner_may_assign_themselves(client, alice, make_task):
    task = await make_task(alice)
    response = await client.post(
        assign_url(task["id"]), json={"assignee_id": alice.id}, headers=alice.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["assignee_id"] == alice.id
    assert await listed_ids(client, alice) == [task["id"]]


async def test_assign_honours_if_match(client, alice, bob, make_task):
    task = await make_task(alice)
    stale = {**alice.headers, "If-Match": etag(task["version"] + 1)}
    response = await client.post(
        assign_url(task["id"]), json={"assignee_id": bob.id}, headers=stale
    )
    assert_problem(response, 412, "precondition_failed")
    assert_problem(await client.get(task_url(task["id"]), headers=bob.headers), 404)
    current = {**alice.headers, "If-Match": etag(task["version"])}
    ok = await client.post(assign_url(task["id"]), json={"assignee_id": bob.id}, headers=current)
    assert ok.status_code == 200, ok.text


# --- permissions between owner and assignee ----------------------------------------------------


async def test_assignee_may_not_delete_but_owner_may(client, alice, bob, shared):
    assert_problem(
        await client.delete(task_url(shared["id"]), headers=bob.headers), 403, "forbidden"
    )
    assert await fetch(client, bob, shared["id"]) == shared
    assert (await client.delete(task_url(shared["id"]), headers=alice.headers)).status_code == 204
    assert_problem(await client.get(task_url(shared["id"]), headers=bob.headers), 404)
    assert await listed_ids(client, bob) == []


async def test_assignee_changes_are_visible_to_owner_in_list(client, alice, bob, shared):
    patched = await client.patch(
        task_url(shared["id"]), json={"priority": "urgent"}, headers=bob.headers
    )
    assert patched.status_code == 200, patched.text
    assert await listed_ids(client, alice, priority="urgent") == [shared["id"]]
    assert await listed_ids(client, bob, scope="owned") == []
