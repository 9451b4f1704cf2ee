"""Load-or-404 for a task the caller can see."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path

from taskapi.auth.dependencies import CurrentUser
from taskapi.kit.db import DbSession
from taskapi.kit.errors import TaskNotFound
from taskapi.kit.validation import MAX_ID
from taskapi.models import Task
from taskapi.tasks import access, repository

TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="The task's id")]


async def load_visible_task(task_id: TaskId, user: CurrentUser, session: DbSession) -> Task:
    task = await repository.get_visible(session, user.id, task_id)
    if task is None:
        raise TaskNotFound()
    return task


async def load_visible_task_for_update(
    task_id: TaskId, user: CurrentUser, session: DbSession
) -> Task:
    task = await repository.get_visible(session, user.id, task_id, for_update=True)
    if task is None:
        raise TaskNotFound()
    return task


async def load_editable_task(task_id: TaskId, user: CurrentUser, session: DbSession) -> Task:
    """A task the caller can see and may change (403/409 otherwise: taskapi.tasks.access)."""
    task = await load_visible_task(task_id, user, session)
    await access.require_edit(session, user, task)
    return task


VisibleTask = Annotated[Task, Depends(load_visible_task)]
EditableTask = Annotated[Task, Depends(load_editable_task)]
VisibleTaskForUpdate = Annotated[Task, Depends(load_visible_task_for_update)]
