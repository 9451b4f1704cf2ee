from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response, status

from taskapi.auth.dependencies import CurrentUser
from taskapi.db import DbSession
from taskapi.openapi import problem_responses
from taskapi.tasks import service
from taskapi.tasks.conditional import IfMatchDep, etag_for, none_match
from taskapi.tasks.dependencies import VisibleTask, VisibleTaskForUpdate
from taskapi.tasks.schemas import (
    TaskCreate,
    TaskOut,
    TaskPage,
    TaskPatch,
    TaskReplace,
    TransitionIn,
)

router = APIRouter(prefix="/tasks", tags=["tasks"], responses=problem_responses(401))

_SINGLE = problem_responses(404, 422)
_WRITE = problem_responses(403, 404, 409, 412, 422)


def _with_etag(response: Response, task_version: int) -> None:
    response.headers["ETag"] = etag_for(task_version)


@router.get("", responses=problem_responses(422), summary="List the tasks you can see")
async def list_tasks(
    user: CurrentUser,
    session: DbSession,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
) -> TaskPage:
    """Tasks you own or are assigned, newest first."""
    return await service.list_tasks(session, user, limit=limit, offset=offset)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(422),
    summary="Create a task",
)
async def create_task(
    data: TaskCreate, user: CurrentUser, session: DbSession, response: Response
) -> TaskOut:
    task = await service.create_task(session, user, data)
    response.headers["Location"] = f"/api/v1/tasks/{task.id}"
    _with_etag(response, task.version)
    return TaskOut.model_validate(task)


@router.get(
    "/{task_id}",
    response_model=TaskOut,
    responses={**_SINGLE, 304: {"description": "Not modified (If-None-Match matched)"}},
    summary="Get a task",
)
async def get_task(
    task: VisibleTask,
    response: Response,
    if_none_match: Annotated[str | None, Header()] = None,
) -> TaskOut | Response:
    if none_match(if_none_match, task.version):
        return Response(status_code=304, headers={"ETag": etag_for(task.version)})
    _with_etag(response, task.version)
    return TaskOut.model_validate(task)


@router.patch("/{task_id}", responses=_WRITE, summary="Update some fields of a task")
async def update_task(
    data: TaskPatch,
    task: VisibleTaskForUpdate,
    user: CurrentUser,
    session: DbSession,
    if_match: IfMatchDep,
    response: Response,
) -> TaskOut:
    """Only the fields sent change; `null` clears `description`, `due_date` or `assignee_id`.
    A status change must follow the workflow (409 otherwise)."""
    task = await service.update_task(session, user, task, data, if_match)
    _with_etag(response, task.version)
    return TaskOut.model_validate(task)


@router.put("/{task_id}", responses=_WRITE, summary="Replace a task")
async def replace_task(
    data: TaskReplace,
    task: VisibleTaskForUpdate,
    user: CurrentUser,
    session: DbSession,
    if_match: IfMatchDep,
    response: Response,
) -> TaskOut:
    """A full replacement: omitted fields take their defaults."""
    task = await service.replace_task(session, user, task, data, if_match)
    _with_etag(response, task.version)
    return TaskOut.model_validate(task)


@router.delete(
    "/{task_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(403, 404, 412, 422),
    summary="Delete a task",
)
async def delete_task(
    task: VisibleTaskForUpdate, user: CurrentUser, session: DbSession, if_match: IfMatchDep
) -> None:
    """Owner only; an assignee gets 403."""
    await service.delete_task(session, user, task, if_match)


@router.post("/{task_id}/transition", responses=_WRITE, summary="Change a task's status")
async def transition_task(
    data: TransitionIn,
    task: VisibleTaskForUpdate,
    user: CurrentUser,
    session: DbSession,
    if_match: IfMatchDep,
    response: Response,
) -> TaskOut:
    """Workflow: todo → in_progress | done | cancelled; in_progress → todo | done | cancelled;
    done → todo; cancelled → todo. Anything else is 409 `invalid_transition`."""
    task = await service.transition_task(session, user, task, data.status, if_match)
    _with_etag(response, task.version)
    return TaskOut.model_validate(task)
