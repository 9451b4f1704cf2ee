"""The status workflow. Every path that sets a status (PATCH, PUT, transition, bulk) checks it
through `check_transition`, via `service.plan_changes`."""

from __future__ import annotations

from typing import Final

from taskapi.kit.errors import InvalidTransition
from taskapi.models import TaskStatus

ALLOWED_TRANSITIONS: Final[dict[TaskStatus, frozenset[TaskStatus]]] = {
    TaskStatus.TODO: frozenset({TaskStatus.IN_PROGRESS, TaskStatus.DONE, TaskStatus.CANCELLED}),
    TaskStatus.IN_PROGRESS: frozenset({TaskStatus.TODO, TaskStatus.DONE, TaskStatus.CANCELLED}),
    TaskStatus.DONE: frozenset({TaskStatus.TODO}),
    TaskStatus.CANCELLED: frozenset({TaskStatus.TODO}),
}


def is_allowed(current: TaskStatus, target: TaskStatus) -> bool:
    return target in ALLOWED_TRANSITIONS[current]


def check_transition(current: TaskStatus, target: TaskStatus) -> None:
    if not is_allowed(current, target):
        raise InvalidTransition(
            f"A task cannot go from '{current.value}' to '{target.value}'.",
            extra={"from_status": current.value, "to_status": target.value},
        )
