from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, status
from fastapi.security import OAuth2PasswordRequestForm

from taskapi.auth.dependencies import (
    AuthServiceDep,
    CurrentUser,
    limit_auth_by_ip,
    login_only,
    requires,
)
from taskapi.auth.schemas import (
    LOGIN_EXAMPLES,
    LoginIn,
    RefreshIn,
    RegisterIn,
    TokenPair,
    UserOut,
)
from taskapi.kit.db import DbSession
from taskapi.kit.openapi import problem_responses

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    dependencies=[Depends(limit_auth_by_ip)],
    responses=problem_responses(409, 422, 429),
    summary="Create an account",
)
async def register(data: RegisterIn, session: DbSession, auth: AuthServiceDep) -> UserOut:
    """Usernames and emails are unique regardless of case."""
    user = await auth.register(session, data)
    return UserOut.model_validate(user)


@router.post(
    "/login",
    dependencies=[Depends(limit_auth_by_ip)],
    responses=problem_responses(401, 422, 429),
    summary="Log in with JSON",
)
async def login(
    data: Annotated[LoginIn, Body(openapi_examples=LOGIN_EXAMPLES)],
    session: DbSession,
    auth: AuthServiceDep,
) -> TokenPair:
    """`{"username", "password"}`, where `username` may also be the account's email address, or
    `{"email", "password"}`: exactly one of `username` and `email` (both or neither: 422)."""
    return await auth.login(session, data.login_name, data.password)


@router.post(
    "/token",
    dependencies=[Depends(limit_auth_by_ip)],
    responses=problem_responses(401, 422, 429),
    summary="Log in with a form (OAuth2 password flow)",
)
async def token(
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    session: DbSession,
    auth: AuthServiceDep,
) -> TokenPair:
    """The OAuth2 password flow; this is what Swagger UI's *Authorize* button uses."""
    return await auth.login(session, form.username, form.password)


@router.post("/refresh", responses=problem_responses(401, 422), summary="Rotate a refresh token")
async def refresh(data: RefreshIn, session: DbSession, auth: AuthServiceDep) -> TokenPair:
    """Returns new tokens; the presented refresh token stops working. Presenting an already
    rotated token again revokes the whole login it belongs to."""
    return await auth.refresh(session, data.refresh_token)


@router.post(
    "/logout",
    dependencies=[login_only],
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(401, 422, 429),
    summary="End a login",
)
async def logout(
    data: RefreshIn, user: CurrentUser, session: DbSession, auth: AuthServiceDep
) -> None:
    """The login the refresh token belongs to ends: its refresh and access tokens stop working."""
    await auth.logout(session, user.id, data.refresh_token)


@router.get(
    "/me",
    dependencies=[requires()],
    responses=problem_responses(401, 429),
    summary="The current user",
)
async def me(user: CurrentUser) -> UserOut:
    return UserOut.model_validate(user)
