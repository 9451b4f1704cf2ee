"""Shared helpers for the single-task endpoint tests (tests/api/test_tasks_*.py)."""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.conftest import UserHandle

TASKS = "/api/v1/tasks"

TASK_FIELDS = frozenset(
    {
        "id",
        "title",
        "description",
        "status",
        "completed",
        "priority",
        "due_date",
        "is_overdue",
        "tags",
        "owner_id",
        "assignee_id",
        "project_id",
        "attachment_count",
        "created_at",
        "updated_at",
        "completed_at",
        "version",
    }
)

STATUSES = ("todo", "in_progress", "done", "cancelled")

ALLOWED = {
    ("todo", "in_progress"),
    ("todo", "done"),
    ("todo", "cancelled"),
    ("in_progress", "todo"),
    ("in_progress", "done"),
    ("in_progress", "cancelled"),
    ("done", "todo"),
    ("cancelled", "todo"),
}

ALL_PAIRS = [(a, b) for a in STATUSES for b in STATUSES]

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def task_url(task_id: int | str) -> str:
    return f"{TASKS}/{task_id}"


def etag(version: int) -> str:
    return f'"{version}"'


def assert_problem(response: httpx.Response, status: int, code: str | None = None) -> dict:
    """An RFC 9457 problem with the given status (and code), carrying the request id."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    if code is not None:
        assert body["code"] == code, body
    assert body["request_id"]
    assert body["request_id"] == response.headers["x-request-id"]
    for key in ("type", "title", "detail"):
        assert key in body
    return body


def assert_task_shape(task: dict[str, Any]) -> None:
    assert set(task) == TASK_FIELDS
    for name in ("created_at", "updated_at"):
        assert RFC3339_UTC.match(task[name]), task[name]
    if task["completed_at"] is not None:
        assert RFC3339_UTC.match(task["completed_at"]), task["completed_at"]
    assert task["completed"] == (task["status"] == "done")


async def fetch(client: httpx.AsyncClient, user: UserHandle, task_id: int) -> dict[str, Any]:
    response = await client.get(task_url(task_id), headers=user.headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result
