"""The status workflow; every path that sets a status goes through `change_status`."""

from __future__ import annotations

from datetime import datetime
from typing import Final

from taskapi.errors import InvalidTransition
from taskapi.models import Task, TaskStatus

ALLOWED_TRANSITIONS: Final[dict[TaskStatus, frozenset[TaskStatus]]] = {
    TaskStatus.TODO: frozenset({TaskStatus.IN_PROGRESS, TaskStatus.DONE, TaskStatus.CANCELLED}),
    TaskStatus.IN_PROGRESS: frozenset({TaskStatus.TODO, TaskStatus.DONE, TaskStatus.CANCELLED}),
    TaskStatus.DONE: frozenset({TaskStatus.TODO}),
    TaskStatus.CANCELLED: frozenset({TaskStatus.TODO}),
}


def is_allowed(current: TaskStatus, target: TaskStatus) -> bool:
    return target in ALLOWED_TRANSITIONS[current]


def change_status(task: Task, target: TaskStatus, now: datetime, *, explicit: bool) -> None:
    """Move `task` to `target`, keeping `completed_at` in step.

    `explicit` is for requests whose whole point is the transition (the transition endpoint,
    bulk-status): there, asking for the current status is itself an invalid transition. Field
    updates (PATCH, PUT) that repeat the current status simply leave it alone.
    """
    current = task.status
    if target == current and not explicit:
        return
    if not is_allowed(current, target):
        raise InvalidTransition(
            f"A task cannot go from '{current.value}' to '{target.value}'.",
            extra={"from_status": current.value, "to_status": target.value},
        )
    task.status = target
    task.completed_at = now if target == TaskStatus.DONE else None
