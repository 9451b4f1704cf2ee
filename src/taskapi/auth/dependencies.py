"""Request dependencies that authenticate the caller and check what it may do.

Two kinds of bearer credential reach the API: a login's access token (a JWT from /auth, which
may do everything) and a personal access token (`tap_...`, limited to its scopes). `get_caller`
recognises either; every route declares what it needs with `requires(...)` or `login_only`
(tests/api/test_token_scopes.py fails for a route that declares neither).

`get_caller` reads the header itself rather than through `bearer_scheme`: FastAPI caches a
dependency per set of security scopes when it uses a security scheme, and the caller must be
resolved once per request (one rate-limit token) whichever scopes the route declares. The
scheme still documents every route, through `requires` and `login_only`.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.params import Security as SecurityParam
from fastapi.security import OAuth2PasswordBearer, SecurityScopes

from taskapi.auth.personal_tokens import PERSONAL_TOKENS
from taskapi.auth.principal_cache import PRINCIPAL_CACHE, PrincipalCache
from taskapi.auth.scopes import SCOPE_DESCRIPTIONS, Scope
from taskapi.auth.service import AUTH_SERVICE, AuthService, Principal
from taskapi.kit.db import DbSession
from taskapi.kit.errors import Unauthorized
from taskapi.kit.ratelimit import client_ip
from taskapi.kit.security import is_personal_token
from taskapi.kit.services import services_of
from taskapi.kit.token_errors import InsufficientScope
from taskapi.models import User

# auto_error=False: a missing token is reported by our own problem+json 401, not FastAPI's.
bearer_scheme = OAuth2PasswordBearer(
    tokenUrl="/api/v1/auth/token",
    scopes=SCOPE_DESCRIPTIONS,
    auto_error=False,
    description=(
        "Log in with your username (or email) and password: a login may do everything, "
        "whatever scopes are ticked. Scripts send a personal access token (`tap_...`, "
        "POST /api/v1/tokens) as the bearer token instead; it may do what its scopes allow."
    ),
)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling, and with what: `scopes` is None for a login (no limit), else the personal
    access token's scopes."""

    user: User
    scopes: frozenset[str] | None
    token_id: int | None = None  # the personal access token's
    session_id: uuid.UUID | None = None  # the login's


async def get_auth_service(request: Request) -> AuthService:
    return services_of(request.app).get(AUTH_SERVICE)


AuthServiceDep = Annotated[AuthService, Depends(get_auth_service)]


def bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def get_caller(request: Request, session: DbSession) -> Caller:
    """The caller, from the principal cache when it holds the login or token (no database round
    trip; the lookup shares the rate limiter's Redis call), else from the database.

    The user is a snapshot for reading; handlers that change the account use
    `CurrentPrincipal`, which is loaded from the database."""
    token = bearer_token(request)
    if token is None:
        raise Unauthorized()
    services = services_of(request.app)
    auth = services.get(AUTH_SERVICE)
    if is_personal_token(token):
        tokens = services.get(PERSONAL_TOKENS)
        identity = await tokens.identify(session, token)
        user = await _principal(
            request,
            identity.user_id,
            identity.login_key,
            lambda: tokens.load_user(session, identity),
        )
        tokens.note_use(identity.token_id)
        return Caller(user, identity.scopes, identity.token_id)
    claims = auth.tokens.decode(token, expected_type="access")

    async def load() -> User:
        return (await auth.current_principal(session, claims)).user

    user = await _principal(request, claims.user_id, claims.session_id.hex, load)
    return Caller(user, None, session_id=claims.session_id)


async def _principal(
    request: Request, user_id: int, login_key: str, load: Callable[[], Awaitable[User]]
) -> User:
    services = services_of(request.app)
    limiter = services.rate_limiter
    cache = services.get(PRINCIPAL_CACHE)
    read = cache.read_for(user_id, login_key) if await cache.usable() else None
    # Spend from the user's bucket before touching the database.
    await limiter.enforce(request, limiter.user_policy, str(user_id), read)
    user = PrincipalCache.decode(read.entry) if read is not None and read.entry else None
    if user is None:
        user = await load()
        if read is not None:
            await cache.store(read, user)
    request.state.user_id = user.id
    return user


CurrentCaller = Annotated[Caller, Depends(get_caller)]


async def get_current_user(caller: CurrentCaller) -> User:
    return caller.user


async def _check_scopes(
    security_scopes: SecurityScopes,
    caller: CurrentCaller,
    _documented: Annotated[str | None, Security(bearer_scheme)],
) -> None:
    if caller.scopes is None:
        return  # a login may do everything
    for needed in security_scopes.scopes:
        if needed not in caller.scopes:
            raise InsufficientScope(needed)


def requires(*scopes: Scope) -> SecurityParam:
    """A route's declaration of what a personal access token needs to call it (a login needs
    nothing more); with no scope, any valid token will do."""
    declaration: SecurityParam = Security(_check_scopes, scopes=[str(scope) for scope in scopes])
    return declaration


async def _refuse_personal_tokens(
    caller: CurrentCaller, _documented: Annotated[str | None, Security(bearer_scheme)]
) -> None:
    if caller.session_id is None:
        raise InsufficientScope(None)


login_only = Security(_refuse_personal_tokens)
"""The declaration of a route only a login may call: managing tokens, the password or email,
deleting the account, logging out."""


async def get_principal(request: Request, session: DbSession, caller: CurrentCaller) -> Principal:
    """The caller and their login, the user loaded from the database (never the cache): for
    handlers that change the account (which declare `login_only`)."""
    if caller.session_id is None:
        raise InsufficientScope(None)
    auth = services_of(request.app).get(AUTH_SERVICE)
    return await auth.live_principal(session, caller.user.id, caller.session_id)


async def limit_auth_by_ip(request: Request) -> None:
    """The small per-client-IP bucket of login, token and register: slows password guessing
    without locking the account's real owner out from elsewhere."""
    limiter = services_of(request.app).rate_limiter
    await limiter.enforce(request, limiter.auth_policy, client_ip(request, limiter.trusted_proxies))


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]
CurrentUser = Annotated[User, Depends(get_current_user)]
