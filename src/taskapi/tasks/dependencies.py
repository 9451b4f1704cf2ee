"""Load-or-404 for a task the caller can see."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from taskapi.auth.dependencies import CurrentUser
from taskapi.kit.db import DbSession
from taskapi.kit.errors import TaskNotFound
from taskapi.kit.services import services_of
from taskapi.kit.validation import MAX_ID
from taskapi.models import Task
from taskapi.tasks import access, repository, service
from taskapi.tasks.batch_schemas import BatchIn
from taskapi.tasks.schemas import TaskPatch

TaskId = Annotated[int, Path(ge=1, le=MAX_ID, description="The task's id")]


async def load_visible_task(task_id: TaskId, user: CurrentUser, session: DbSession) -> Task:
    task = await repository.get_visible(session, user.id, task_id)
    if task is None:
        raise TaskNotFound()
    return task


async def load_visible_task_for_update(
    task_id: TaskId, user: CurrentUser, session: DbSession
) -> Task:
    return await service.visible_for_update(session, user, task_id)


async def patch_body(data: TaskPatch) -> TaskPatch:
    """PATCH's body, for the handler and for `load_task_to_patch`: a dependency, so FastAPI
    validates it once per request (a body parameter declared by both was validated twice).
    A coroutine, as every dependency here: FastAPI runs a plain function in a thread."""
    return data


PatchBody = Annotated[TaskPatch, Depends(patch_body)]


async def load_task_to_patch(
    task_id: TaskId, data: PatchBody, user: CurrentUser, session: DbSession
) -> Task:
    """`load_visible_task_for_update` for PATCH, which may move the task: the project it names
    is held before the task is locked (the lock order, taskapi.tasks.access)."""
    return await service.visible_for_update(
        session, user, task_id, into=data.changes().get("project_id")
    )


async def load_editable_task(task_id: TaskId, user: CurrentUser, session: DbSession) -> Task:
    """A task the caller can see and may change (403/409 otherwise: taskapi.tasks.access)."""
    task = await load_visible_task(task_id, user, session)
    await access.require_edit(session, user, task)
    return task


VisibleTask = Annotated[Task, Depends(load_visible_task)]
EditableTask = Annotated[Task, Depends(load_editable_task)]
VisibleTaskForUpdate = Annotated[Task, Depends(load_visible_task_for_update)]
TaskToPatch = Annotated[Task, Depends(load_task_to_patch)]


async def paid_batch(batch: BatchIn, user: CurrentUser, request: Request) -> BatchIn:
    """The batch, once paid for: one rate-limit token per 10 operations, the one authentication
    took included; 429 (nothing applied) when the caller's bucket cannot pay the rest."""
    limiter = services_of(request.app).rate_limiter
    await limiter.enforce(request, limiter.user_policy, str(user.id), cost=batch.tokens - 1)
    return batch


PaidBatch = Annotated[BatchIn, Depends(paid_batch)]
