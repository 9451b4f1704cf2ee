from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status

from taskapi.auth.dependencies import CurrentUser, requires
from taskapi.auth.scopes import Scope
from taskapi.kit.conditional import IfNoneMatch, conditional_json
from taskapi.kit.db import DbSession
from taskapi.kit.openapi import problem_responses
from taskapi.kit.validation import MAX_ID
from taskapi.notifications import service
from taskapi.notifications.schemas import (
    NotificationListParams,
    NotificationOut,
    NotificationPage,
)

router = APIRouter(
    prefix="/notifications", tags=["notifications"], responses=problem_responses(401, 429)
)


@router.get(
    "",
    dependencies=[requires(Scope.NOTIFICATIONS)],
    response_model=NotificationPage,
    responses=problem_responses(422),
    summary="Your notifications, newest first",
)
async def list_notifications(
    user: CurrentUser,
    session: DbSession,
    params: Annotated[NotificationListParams, Query()],
    request: Request,
    if_none_match: IfNoneMatch = None,
) -> Response:
    page = await service.list_notifications(session, user, params)
    return await conditional_json(request, if_none_match, page.model_dump_json().encode())


@router.post(
    "/read-all",
    dependencies=[requires(Scope.NOTIFICATIONS)],
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Mark every notification read",
)
async def mark_all_read(user: CurrentUser, session: DbSession) -> None:
    await service.mark_all_read(session, user)


@router.post(
    "/{notification_id}/read",
    dependencies=[requires(Scope.NOTIFICATIONS)],
    responses=problem_responses(404, 422),
    summary="Mark one read",
)
async def mark_read(
    notification_id: Annotated[int, Path(ge=1, le=MAX_ID)], user: CurrentUser, session: DbSession
) -> NotificationOut:
    return await service.mark_read(session, user, notification_id)
