"""The per-user stats cache: `GET /tasks/stats` answers from Redis until a commit changes one of
the user's counts (`mark_stats_stale` in the writing transaction, `after_commit` right after it)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.kit import metrics
from taskapi.kit.cache import READ_GENERATIONAL, Generations, RedisGuard
from taskapi.kit.services import ServiceKey

_STATS_STALE = "taskapi.stats_stale"


def mark_stats_stale(session: AsyncSession, *user_ids: int | None) -> None:
    """Record users whose stats this transaction changes; invalidated right after the commit."""
    session.info.setdefault(_STATS_STALE, set()).update(u for u in user_ids if u is not None)


@dataclass(frozen=True, slots=True)
class CachedStats:
    generation: bytes | None  # None: Redis unavailable, don't try to store
    payload: bytes | None


class StatsCache:
    """Per-user stats, invalidated by bumping a per-user generation after each commit.

    A reader stores what it computed under the generation it read *before* computing, so a
    computation racing a write can only land under a generation nobody reads any more: a read
    after a write never sees the old value.
    """

    def __init__(self, guard: RedisGuard, prefix: str, ttl_seconds: int) -> None:
        self._guard = guard
        self._prefix = prefix
        self._ttl = ttl_seconds
        self._get_script = guard.client.register_script(READ_GENERATIONAL)
        self._generations = Generations(guard, self._generation_key)

    def _generation_key(self, user_id: int) -> str:
        return f"{self._prefix}stats:gen:{user_id}"

    def _payload_prefix(self, user_id: int) -> str:
        # The UTC date is part of the key: "overdue" changes at midnight without any write.
        return f"{self._prefix}stats:{user_id}:{datetime.now(UTC).date().isoformat()}:"

    @property
    def enabled(self) -> bool:
        return self._ttl > 0

    async def get(self, user_id: int) -> CachedStats:
        if not self.enabled:
            metrics.STATS_CACHE_MISSES.inc()
            return CachedStats(generation=None, payload=None)
        if not await self._generations.settled():
            # Invalidations missed during an outage are still outstanding: bypass the cache.
            metrics.STATS_CACHE_MISSES.inc()
            return CachedStats(generation=None, payload=None)
        keys = [self._generation_key(user_id), self._payload_prefix(user_id)]
        ok, reply = await self._guard.run(lambda _client: self._get_script(keys=keys))
        if not ok or not isinstance(reply, list):
            metrics.STATS_CACHE_MISSES.inc()
            return CachedStats(generation=None, payload=None)
        generation, payload = reply
        (metrics.STATS_CACHE_MISSES if payload is None else metrics.STATS_CACHE_HITS).inc()
        return CachedStats(generation=generation, payload=payload)

    async def put(self, user_id: int, generation: bytes, payload: bytes) -> None:
        key = self._payload_prefix(user_id) + generation.decode()
        await self._guard.run(lambda client: client.set(key, payload, ex=self._ttl))

    async def invalidate(self, user_ids: Iterable[int]) -> None:
        if self.enabled:
            await self._generations.bump(user_ids)

    async def after_commit(self, info: dict[str, Any]) -> None:
        stale = info.pop(_STATS_STALE, None)
        if stale:
            await self.invalidate(stale)


STATS_CACHE = ServiceKey[StatsCache]("stats cache")
