"""The process's services in one typed container, built once by the application's lifespan.

`Services` holds what every request may need from the infrastructure (settings, the database,
Redis, the rate limiter, the token and cursor codecs) as typed fields. The domain packages'
own services (the stats cache, the auth service, storage, ...) cannot be fields here, since
nothing in `kit` imports a domain package: each domain declares a `ServiceKey` for its service,
the composition root (`taskapi.app`) provides it under that key, and the domain reads it back,
typed, with `services.get(KEY)`.

Reached from a request, a middleware or a test with `services_of(app)`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.applications import Starlette

from taskapi.kit.cache import RedisGuard
from taskapi.kit.config import Settings
from taskapi.kit.pagination import CursorCodec
from taskapi.kit.ratelimit import RateLimiter
from taskapi.kit.security import PasswordHashing, TokenCodec

_T = TypeVar("_T")

AfterCommitHook = Callable[[dict[str, Any]], Awaitable[None]]
"""Runs right after a request's transaction commits, with the session's `info` (e.g. to drop the
cache entries the transaction made stale)."""


class ServiceKey(Generic[_T]):
    """Names one domain service held by `Services`, and carries its type."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"ServiceKey({self.name!r})"


@dataclass(kw_only=True, eq=False)
class Services:
    settings: Settings
    engine: AsyncEngine
    # Writes, and reads that need one snapshot across statements.
    sessionmaker: async_sessionmaker[AsyncSession]
    # Reads: the same pool in autocommit (see `db.read_only_engine`).
    read_sessionmaker: async_sessionmaker[AsyncSession]
    redis: RedisGuard
    rate_limiter: RateLimiter
    tokens: TokenCodec
    password_hashing: PasswordHashing
    cursor_codec: CursorCodec
    after_commit: list[AfterCommitHook] = field(default_factory=list)
    _domain: dict[ServiceKey[Any], object] = field(default_factory=dict, init=False, repr=False)

    def provide(self, key: ServiceKey[_T], service: _T) -> None:
        if key in self._domain:
            raise ValueError(f"{key!r} is already provided")
        self._domain[key] = service

    def get(self, key: ServiceKey[_T]) -> _T:
        # Typed by `provide`, the only way in.
        return cast(_T, self._domain[key])


_STATE_NAME = "services"


def install_services(app: Starlette, services: Services) -> None:
    setattr(app.state, _STATE_NAME, services)


def services_of(app: Starlette) -> Services:
    """The app's services (`request.app`, `scope["app"]`); only while its lifespan runs."""
    services: Services = getattr(app.state, _STATE_NAME)
    return services
