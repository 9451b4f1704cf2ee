"""Request dependencies that authenticate the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import OAuth2PasswordBearer

from taskapi.auth.service import AuthService, Principal
from taskapi.db import DbSession
from taskapi.errors import Unauthorized
from taskapi.models import User
from taskapi.ratelimit import RateLimiter, get_rate_limiter

# auto_error=False: a missing token is reported by our own problem+json 401, not FastAPI's.
bearer_scheme = OAuth2PasswordBearer(
    tokenUrl="/api/v1/auth/token",
    auto_error=False,
    description="Log in with your username (or email) and password.",
)


def get_auth_service(request: Request) -> AuthService:
    service: AuthService = request.app.state.auth_service
    return service


AuthServiceDep = Annotated[AuthService, Depends(get_auth_service)]


async def get_principal(
    request: Request,
    session: DbSession,
    auth: AuthServiceDep,
    limiter: Annotated[RateLimiter, Depends(get_rate_limiter)],
    token: Annotated[str | None, Security(bearer_scheme)],
) -> Principal:
    if not token:
        raise Unauthorized()
    claims = auth.tokens.decode(token, expected_type="access")
    # Spend from the user's bucket before touching the database.
    await limiter.enforce(request, limiter.user_policy, str(claims.user_id))
    principal = await auth.current_principal(session, claims)
    request.state.user_id = principal.user.id
    return principal


async def get_current_user(principal: Annotated[Principal, Depends(get_principal)]) -> User:
    return principal.user


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
CurrentUser = Annotated[User, Depends(get_current_user)]
