"""The trash's endpoints: GET /trash, POST /tasks/{id}/restore, DELETE /tasks/{id}/force
(`DELETE /tasks/{id}`, which moves a task here, is with the other task routes)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from taskapi.auth.dependencies import CurrentUser, requires
from taskapi.auth.scopes import Scope
from taskapi.kit.conditional import IfNoneMatch, conditional_json
from taskapi.kit.db import DbSession
from taskapi.kit.openapi import problem_responses
from taskapi.kit.pagination import NEXT_PAGE_LINK, next_link
from taskapi.kit.services import services_of
from taskapi.tasks import trash
from taskapi.tasks.conditional import etag_for
from taskapi.tasks.dependencies import TaskId
from taskapi.tasks.overdue import today
from taskapi.tasks.schemas import TaskOut
from taskapi.tasks.trash_schemas import TrashListParams, TrashPage

router = APIRouter(tags=["trash"], responses=problem_responses(401, 429))


@router.get(
    "/trash",
    dependencies=[requires(Scope.TASKS_READ)],
    response_model=TrashPage,
    responses={**NEXT_PAGE_LINK, **problem_responses(422)},
    summary="List the tasks you may restore",
)
async def list_trash(
    user: CurrentUser,
    session: DbSession,
    params: Annotated[TrashListParams, Query()],
    request: Request,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """Tasks in the trash that you may restore (your personal ones; those of projects where you
    are an editor or admin), most recently deleted first, each with `deleted_at` and
    `purge_at`. Paginate with `limit` plus either `offset` or `cursor`."""
    services = services_of(request.app)
    page = await trash.list_trash(
        session, user, params, services.cursor_codec, services.settings.trash_retention_days
    )
    headers = {}
    if page.next_cursor is not None:
        headers["Link"] = next_link(request, page.next_cursor)
    return await conditional_json(request, if_none_match, page.model_dump_json().encode(), headers)


@router.post(
    "/tasks/{task_id}/restore",
    dependencies=[requires(Scope.TASKS_WRITE)],
    responses=problem_responses(403, 404, 409, 422),
    summary="Restore a task from the trash",
)
async def restore_task(
    task_id: TaskId, user: CurrentUser, session: DbSession, response: Response
) -> TaskOut:
    """The task as it was, its files too; 404 if it is not in your trash. A project task whose
    assignee has left the project meanwhile comes back unassigned."""
    task = await trash.restore_task(session, user, task_id)
    response.headers["ETag"] = etag_for(task.version)
    return TaskOut.of(task, today())


@router.delete(
    "/tasks/{task_id}/force",
    dependencies=[requires(Scope.TASKS_WRITE)],
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(403, 404, 409, 422),
    summary="Delete a task for good",
)
async def force_delete_task(task_id: TaskId, user: CurrentUser, session: DbSession) -> None:
    """At once and for good, from the trash or not; its stored files are deleted too (by the
    durable job queue). Who may: as for `DELETE /tasks/{id}`."""
    await trash.force_delete_task(session, user, task_id)
