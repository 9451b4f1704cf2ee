"""An account is deleted while another user assigns it a task (real commits, real parallel
transactions): the assignment waits for the deletion and then answers 422 `unknown_assignee`,
never a 500 from the foreign key, and no task is left pointing at the deleted account."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from taskapi.tasks import stat_counts
from tests.conftest import register_and_login
from tests.lock_helpers import until_waiting
from tests.task_helpers import TASKS, assert_problem, task_url


@pytest.mark.parametrize("how", ["patch", "assign", "create"])
async def test_assigning_to_an_account_being_deleted_is_422_not_500(
    live_app: FastAPI, live_client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    alice = await register_and_login(live_client)
    bob = await register_and_login(live_client)
    task = await live_client.post(TASKS, json={"title": "t"}, headers=alice.headers)
    assert task.status_code == 201, task.text
    task_id = task.json()["id"]

    # Bob's deletion is held open after its DELETE, before its commit.
    reached, release = asyncio.Event(), asyncio.Event()
    forget = stat_counts.forget

    async def held_forget(session: Any, subject: str, subject_id: int) -> None:
        await forget(session, subject, subject_id)
        if subject_id == bob.id:
            reached.set()
            await release.wait()

    monkeypatch.setattr(stat_counts, "forget", held_forget)
    deletion = asyncio.create_task(live_client.delete("/api/v1/users/me", headers=bob.headers))
    await asyncio.wait_for(reached.wait(), 10)

    if how == "patch":
        request = live_client.patch(
            task_url(task_id), json={"assignee_id": bob.id}, headers=alice.headers
        )
    elif how == "assign":
        request = live_client.post(
            f"{task_url(task_id)}/assign", json={"assignee_id": bob.id}, headers=alice.headers
        )
    else:
        request = live_client.post(
            TASKS, json={"title": "for bob", "assignee_id": bob.id}, headers=alice.headers
        )
    assignment = asyncio.create_task(request)
    await until_waiting(live_app)  # the assignment waits for the deletion
    release.set()
    deleted, assigned = await deletion, await assignment

    assert deleted.status_code == 204, deleted.text
    assert_problem(assigned, 422, "unknown_assignee")
    shown = await live_client.get(task_url(task_id), headers=alice.headers)
    assert shown.json()["assignee_id"] is None
    listed = await live_client.get(TASKS, headers=alice.headers)
    assert [t["assignee_id"] for t in listed.json()["items"]] == [None]
