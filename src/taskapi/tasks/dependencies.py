"""Load-or-404 for a task the caller can see."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path

from taskapi.auth.dependencies import CurrentUser
from taskapi.kit.db import DbSession
from taskapi.kit.errors import TaskNotFound
from taskapi.kit.validation import MAX_ID
from taskapi.models import Task
from taskapi.tasks import repository

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


VisibleTask = Annotated[Task, Depends(load_visible_task)]
VisibleTaskForUpdate = Annotated[Task, Depends(load_visible_task_for_update)]
