from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from taskapi.auth.dependencies import CurrentPrincipal, CurrentUser, login_only, requires
from taskapi.auth.schemas import UserOut
from taskapi.kit.db import DbSession
from taskapi.kit.openapi import problem_responses
from taskapi.kit.services import services_of
from taskapi.users import service
from taskapi.users.schemas import UserSearchPage, UserSearchParams, UserUpdate

router = APIRouter(prefix="/users", tags=["users"], responses=problem_responses(401, 429))


@router.get("/me", dependencies=[requires()], summary="Your account")
async def get_me(user: CurrentUser) -> UserOut:
    return UserOut.model_validate(user)


@router.patch(
    "/me",
    dependencies=[login_only],
    responses=problem_responses(403, 409, 422),
    summary="Update your account",
)
async def update_me(
    data: UserUpdate, principal: CurrentPrincipal, session: DbSession, request: Request
) -> UserOut:
    """Change `full_name` or `email`; changing `password` needs `current_password` and ends every
    other login of the account."""
    hashing = services_of(request.app).password_hashing
    return UserOut.model_validate(await service.update_me(session, hashing, principal, data))


@router.delete(
    "/me",
    dependencies=[login_only],
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(409),
    summary="Delete your account",
)
async def delete_me(user: CurrentUser, session: DbSession) -> None:
    """Deletes the account and everything it owns. A project you are the only member of is
    deleted; in any other your tasks pass to its earliest-added admin, and if you are its last
    admin the deletion is refused (409 `last_admin`: promote another admin first)."""
    await service.delete_me(session, user)


@router.get(
    "",
    dependencies=[requires()],
    responses=problem_responses(422),
    summary="Find users by username prefix",
)
async def search_users(
    _user: CurrentUser,
    session: DbSession,
    params: Annotated[UserSearchParams, Query()],
) -> UserSearchPage:
    """Case-insensitive username prefix search, ordered by username; id and username only, to
    pick an assignee."""
    return await service.search_by_username_prefix(
        session, params.search, limit=params.limit, offset=params.offset
    )
