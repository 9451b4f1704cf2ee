"""Request dependencies that authenticate the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import OAuth2PasswordBearer

from taskapi.auth.principal_cache import PRINCIPAL_CACHE, PrincipalCache
from taskapi.auth.service import AUTH_SERVICE, AuthService, Principal
from taskapi.kit.db import DbSession
from taskapi.kit.errors import Unauthorized
from taskapi.kit.ratelimit import client_ip
from taskapi.kit.security import TokenClaims
from taskapi.kit.services import services_of
from taskapi.models import User

# auto_error=False: a missing token is reported by our own problem+json 401, not FastAPI's.
bearer_scheme = OAuth2PasswordBearer(
    tokenUrl="/api/v1/auth/token",
    auto_error=False,
    description="Log in with your username (or email) and password.",
)


async def get_auth_service(request: Request) -> AuthService:
    return services_of(request.app).get(AUTH_SERVICE)


AuthServiceDep = Annotated[AuthService, Depends(get_auth_service)]


def _bearer_claims(request: Request, token: str | None) -> tuple[AuthService, TokenClaims]:
    if not token:
        raise Unauthorized()
    auth = services_of(request.app).get(AUTH_SERVICE)
    return auth, auth.tokens.decode(token, expected_type="access")


async def get_current_user(
    request: Request,
    session: DbSession,
    token: Annotated[str | None, Security(bearer_scheme)],
) -> User:
    """The caller, from the principal cache when it holds the login (no database round trip;
    the lookup shares the rate limiter's Redis call), else from the database.

    The user is a snapshot for reading; handlers that change the account use
    `CurrentPrincipal`, which is loaded from the database."""
    auth, claims = _bearer_claims(request, token)
    services = services_of(request.app)
    limiter = services.rate_limiter
    cache = services.get(PRINCIPAL_CACHE)
    read = cache.read_for(claims.user_id, claims.session_id) if await cache.usable() else None
    # Spend from the user's bucket before touching the database.
    await limiter.enforce(request, limiter.user_policy, str(claims.user_id), read)
    user = PrincipalCache.decode(read.entry) if read is not None and read.entry else None
    if user is None:
        user = (await auth.current_principal(session, claims)).user
        if read is not None:
            await cache.store(read, user)
    request.state.user_id = user.id
    return user


async def get_principal(
    request: Request,
    session: DbSession,
    token: Annotated[str | None, Security(bearer_scheme)],
) -> Principal:
    """The caller and their login, loaded from the database (never the cache): for handlers that
    change the account."""
    auth, claims = _bearer_claims(request, token)
    limiter = services_of(request.app).rate_limiter
    await limiter.enforce(request, limiter.user_policy, str(claims.user_id))
    principal = await auth.current_principal(session, claims)
    request.state.user_id = principal.user.id
    return principal


async def limit_auth_by_ip(request: Request) -> None:
    """The small per-client-IP bucket of login, token and register: slows password guessing
    without locking the account's real owner out from elsewhere."""
    limiter = services_of(request.app).rate_limiter
    await limiter.enforce(request, limiter.auth_policy, client_ip(request, limiter.trusted_proxies))


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
CurrentUser = Annotated[User, Depends(get_current_user)]
