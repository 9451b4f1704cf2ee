"""The process's Redis client, guarded so Redis can make the service faster but never make it fail,
and the generational-cache primitives the stats and principal caches are built on."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import redis.asyncio as redis
from redis.exceptions import RedisError

from taskapi.kit.config import Settings
from taskapi.kit.metrics import REDIS_CALLS

logger = logging.getLogger("taskapi.cache")
# Bound once: every guarded call counts one.
_CALLS_OK = REDIS_CALLS.labels("ok")
_CALLS_FAILED = REDIS_CALLS.labels("failed")
_CALLS_SKIPPED = REDIS_CALLS.labels("skipped")
_T = TypeVar("_T")


def create_redis(settings: Settings) -> redis.Redis:
    # hiredis is installed, so redis-py parses replies with it automatically.
    return redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.redis_connect_timeout_seconds,
        socket_timeout=settings.redis_socket_timeout_seconds,
        health_check_interval=30,
    )


class RedisGuard:
    """Runs Redis calls with a circuit breaker: after a failure, calls are skipped (the caller
    falls back) for a cool-down, then tried again; recovery needs no restart."""

    def __init__(self, client: redis.Redis, cooldown_seconds: float) -> None:
        self.client = client
        self._cooldown = cooldown_seconds
        self._retry_at = 0.0
        self._recovery_hooks: list[Callable[[], Awaitable[None]]] = []
        self._down = False

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._retry_at

    def on_recovery(self, hook: Callable[[], Awaitable[None]]) -> None:
        self._recovery_hooks.append(hook)

    def _mark_down(self, error: BaseException) -> None:
        if not self._down:
            logger.warning("redis unavailable, degrading: %s", error)
        self._down = True
        self._retry_at = time.monotonic() + self._cooldown

    async def run(self, call: Callable[[redis.Redis], Awaitable[_T]]) -> tuple[bool, _T | None]:
        """(True, result) on success; (False, None) when Redis is down or the call failed."""
        if not self.available:
            _CALLS_SKIPPED.inc()
            return False, None
        try:
            result = await call(self.client)
        except (RedisError, OSError, TimeoutError) as error:
            _CALLS_FAILED.inc()
            self._mark_down(error)
            return False, None
        _CALLS_OK.inc()
        if self._down:
            self._down = False
            logger.warning("redis is back")
            for hook in self._recovery_hooks:
                await hook()
        return True, result

    async def ping(self) -> bool:
        ok, _ = await self.run(lambda client: client.ping())
        return ok


# The generational read, in Lua, written once: a generation and the entry stored under it
# (entry prefix .. generation) in one round trip. A missing generation (never set, or evicted)
# gets a new one from Redis' clock rather than a default, so an entry stored before an eviction
# can never become current again. `clock` is a TIME reply the caller already has, or nil.
GENERATIONAL_READ_LUA = """
local function read_generational(generation_key, entry_prefix, clock)
  local generation = redis.call('GET', generation_key)
  if not generation then
    clock = clock or redis.call('TIME')
    generation = 'n' .. clock[1] .. '.' .. clock[2]
    redis.call('SET', generation_key, generation)
  end
  return generation, redis.call('GET', entry_prefix .. generation)
end
"""

# KEYS[1] generation key, KEYS[2] entry prefix; returns {generation, entry or nil}. For the stats
# cache, and for the principal cache when rate limiting is off (the rate limiter's bucket script
# composes the same read otherwise: ratelimit.py).
READ_GENERATIONAL = (
    GENERATIONAL_READ_LUA
    + """
local generation, entry = read_generational(KEYS[1], KEYS[2], nil)
return {generation, entry}
"""
)


class Generations:
    """The invalidation half of a generational cache: per-user random generations in Redis.

    `bump` replaces users' generations, right after the commit that made their entries stale.
    Bumps that could not reach Redis are kept and replayed, on recovery and before any read
    (`settled`), so entries are never trusted while a bump is outstanding.
    """

    def __init__(self, guard: RedisGuard, key_of: Callable[[int], str]) -> None:
        self._guard = guard
        self.key_of = key_of
        self._pending: set[int] = set()
        guard.on_recovery(self._replay)

    async def bump(self, user_ids: Iterable[int]) -> None:
        ids = set(user_ids) | self._pending
        if not ids:
            return

        async def replace(client: redis.Redis) -> Any:
            async with client.pipeline(transaction=False) as pipe:
                for user_id in ids:
                    # Random, not a counter: after Redis loses its data a counter would restart
                    # and could meet an entry a slow reader stored under the same number.
                    pipe.set(self.key_of(user_id), secrets.token_hex(8))
                return await pipe.execute()

        ok, _ = await self._guard.run(replace)
        if ok:
            self._pending -= ids
        else:
            self._pending |= ids

    async def settled(self) -> bool:
        """Whether entries may be read: no bump outstanding (any are replayed first; the
        guard's recovery hook runs only after a first successful call, which could otherwise
        be the very read they were meant to precede)."""
        if self._pending:
            await self.bump(())
        return not self._pending

    async def _replay(self) -> None:
        if self._pending:
            await self.bump(())
