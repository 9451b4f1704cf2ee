"""Who an access token belongs to, cached in Redis, so an authenticated request needs no database
round trip: the lookup rides in the same Redis call as the rate-limit bucket (kit/ratelimit.py).

Correctness follows the stats cache's pattern. Each user has a random *generation*; an entry is
stored under the generation read *before* the database was asked, and every change that could
end a login or alter the account (logout, token reuse, password change, profile update, account
deletion) replaces the generation right after its commit. A lookup racing such a change can
only store under a generation nobody reads any more, so a revoked token is refused by the very
next request. Changes that could not reach Redis are replayed before the cache is trusted again;
the TTL bounds what a process cut off from Redis could leave behind.

The cached user is a snapshot without the password hash: handlers that change the account load
it from the database (`CurrentPrincipal`).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.kit.cache import Generations, RedisGuard
from taskapi.kit.ratelimit import CachedRead
from taskapi.kit.services import ServiceKey
from taskapi.models import User

_PRINCIPAL_STALE = "taskapi.principal_stale"

# Decoded entries by their exact bytes: a changed account is a new entry (new bytes), so nothing
# here can be stale; the bound only caps memory.
_DECODED_MAX = 4096
_decoded: dict[bytes, User] = {}


def mark_principal_stale(session: AsyncSession, *user_ids: int) -> None:
    """Record users whose logins or account this transaction changes; their cached principals are
    dropped right after the commit."""
    session.info.setdefault(_PRINCIPAL_STALE, set()).update(user_ids)


class CachedUser(BaseModel):
    id: int
    username: str
    email: str
    full_name: str | None
    created_at: datetime
    updated_at: datetime

    def to_user(self) -> User:
        """A detached User carrying the snapshot (no password hash; never added to a session)."""
        return User(**self.model_dump())


class PrincipalCache:
    def __init__(self, guard: RedisGuard, prefix: str, ttl_seconds: int) -> None:
        self._guard = guard
        self._prefix = f"{prefix}auth:"
        self._ttl = ttl_seconds
        self._generations = Generations(guard, lambda user_id: f"{self._prefix}gen:{user_id}")

    @property
    def enabled(self) -> bool:
        return self._ttl > 0

    def read_for(self, user_id: int, login_key: str) -> CachedRead:
        """The entry of one login (its session id in hex) or personal access token of a user."""
        return CachedRead(
            self._generations.key_of(user_id), f"{self._prefix}{user_id}:{login_key}:"
        )

    async def usable(self) -> bool:
        """False while invalidations are waiting for Redis: the cache must not be read then."""
        return self.enabled and await self._generations.settled()

    @staticmethod
    def decode(payload: bytes) -> User | None:
        """The User an entry holds. One entry is read on every request of its login, so each
        distinct entry is decoded once per process and its (read-only, detached) User shared:
        validating JSON and building an ORM instance cost more than the Redis call."""
        user = _decoded.get(payload)
        if user is None:
            try:
                user = CachedUser.model_validate_json(payload).to_user()
            except ValueError:
                return None  # a foreign or outdated entry: ask the database
            if len(_decoded) >= _DECODED_MAX:
                _decoded.pop(next(iter(_decoded)))  # the oldest: entries change with the account
            _decoded[payload] = user
        return user

    async def store(self, read: CachedRead, user: User) -> None:
        if read.generation is None:
            return  # Redis was not reachable: nothing to store under
        payload = CachedUser.model_validate(user, from_attributes=True).model_dump_json()
        key = read.entry_prefix + read.generation.decode()
        await self._guard.run(lambda client: client.set(key, payload, ex=self._ttl))

    async def invalidate(self, user_ids: Iterable[int]) -> None:
        await self._generations.bump(user_ids)

    async def after_commit(self, info: dict[str, Any]) -> None:
        stale = info.pop(_PRINCIPAL_STALE, None)
        if stale:
            await self.invalidate(stale)


PRINCIPAL_CACHE = ServiceKey[PrincipalCache]("principal cache")
