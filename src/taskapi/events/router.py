"""GET /api/v1/events: the change feed (API.md part 2, "Change feed and activity")."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from taskapi.auth.dependencies import CurrentUser, requires
from taskapi.auth.scopes import Scope
from taskapi.events import service
from taskapi.events.schemas import EventPage, FeedParams
from taskapi.kit.db import DbSession
from taskapi.kit.openapi import problem_responses
from taskapi.kit.services import services_of

router = APIRouter(prefix="/events", tags=["events"], responses=problem_responses(401, 429))


@router.get(
    "",
    dependencies=[requires(Scope.EVENTS_READ)],
    response_model=EventPage,
    response_model_exclude_none=True,
    responses=problem_responses(410, 422),
    summary="Follow the changes you may see",
)
async def list_events(
    user: CurrentUser,
    session: DbSession,
    params: Annotated[FeedParams, Query()],
    request: Request,
) -> EventPage:
    """The events you may see after `since`, oldest first. Without `since`: no events and a
    `next_cursor` marking now: take it, list what you need, then follow from it. Exact: no event
    is ever skipped (even when transactions commit out of order) and none is served twice.
    A cursor older than the retention period (`EVENT_RETENTION_DAYS`) answers 410
    `cursor_expired`: list again and follow from a new cursor. See docs/sync.md."""
    services = services_of(request.app)
    return await service.feed(
        session,
        user.id,
        params,
        services.cursor_codec,
        services.settings.event_retention_days,
    )
