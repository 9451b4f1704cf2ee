"""GET /api/v1/tasks/{id}/activity: a task's events, newest first (API.md part 2).

Served by the tasks package because it needs the one visibility rule (the task must be visible
now: 404 otherwise); the events themselves are the event log's (taskapi.events)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from taskapi.auth.dependencies import CurrentUser, requires
from taskapi.auth.scopes import Scope
from taskapi.events import service as events
from taskapi.events.schemas import ActivityPage, ActivityParams, activity_json
from taskapi.kit.db import DbSession
from taskapi.kit.openapi import problem_responses
from taskapi.kit.pagination import next_link
from taskapi.kit.services import services_of
from taskapi.tasks.dependencies import VisibleTask

router = APIRouter(prefix="/tasks", tags=["tasks"], responses=problem_responses(401, 429))


@router.get(
    "/{task_id}/activity",
    dependencies=[requires(Scope.EVENTS_READ)],
    response_model=ActivityPage,
    responses=problem_responses(404, 422),
    summary="A task's history",
)
async def task_activity(
    task: VisibleTask,
    user: CurrentUser,
    session: DbSession,
    params: Annotated[ActivityParams, Query()],
    request: Request,
) -> Response:
    """Who changed what and when: the task's events you were shown, newest first. Paginate with
    `limit` and `cursor` (the `next_cursor` of the previous page); a `Link: <...>; rel="next"`
    header points at the next page."""
    codec = services_of(request.app).cursor_codec
    page = await events.activity(session, user.id, task.id, params, codec)
    response = Response(activity_json(page), media_type="application/json")
    if page.next_cursor is not None:
        response.headers["Link"] = next_link(request, page.next_cursor)
    return response
