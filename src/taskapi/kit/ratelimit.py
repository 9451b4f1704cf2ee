"""Token-bucket rate limits, shared by every process through one Redis Lua script, with
per-process in-memory buckets while Redis is unavailable.

Headers follow the IETF RateLimit fields draft: `RateLimit-Policy: "user";q=<burst>;w=<seconds to
refill it>` and `RateLimit: "user";r=<tokens left>;t=<seconds until full>`.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from fastapi import Request

from taskapi.kit import metrics
from taskapi.kit.cache import GENERATIONAL_READ_LUA, READ_GENERATIONAL, RedisGuard
from taskapi.kit.config import Settings
from taskapi.kit.errors import AppError

# KEYS[1] bucket; ARGV[1] capacity; ARGV[2] refill in tokens per millisecond; ARGV[3] the cost
# (tokens taken together or not at all). Redis' own clock, so every process agrees on time.
# Returns {allowed, tokens left}.
# With KEYS[2] (a generation key) and KEYS[3] (an entry prefix) it also makes the generational
# read of cache.py in the same round trip (auth/principal_cache.py): {..., generation, entry}.
_TOKEN_BUCKET = (
    GENERATIONAL_READ_LUA
    + """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local last = tonumber(state[2])
if tokens == nil or last == nil then
  tokens = capacity
  last = now
end
tokens = math.min(capacity, tokens + math.max(0, now - last) * rate)
local allowed = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate) + 1000)
if KEYS[3] then
  local generation, entry = read_generational(KEYS[2], KEYS[3], clock)
  return {allowed, tostring(tokens), generation, entry}
end
return {allowed, tostring(tokens)}
"""
)


# A token given back (a 304: see `RateLimiter.refund`). KEYS[1] bucket; ARGV as above. Atomic, so
# it composes with concurrent takes from every process; a bucket that has expired is full already.
_REFUND = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local last = tonumber(state[2])
if tokens == nil or last == nil then
  return tostring(capacity)
end
tokens = math.min(capacity, tokens + math.max(0, now - last) * rate + 1)
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate) + 1000)
return tostring(tokens)
"""

_LOCAL_BUCKETS_MAX = 100_000


class RateLimited(AppError):
    status, code, title = 429, "rate_limited", "Too many requests"
    default_detail = "Rate limit exceeded; retry after the number of seconds in Retry-After."


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    burst: int
    per_minute: int

    @property
    def per_second(self) -> float:
        return self.per_minute / 60

    @property
    def window_seconds(self) -> int:
        """Seconds an empty bucket takes to fill up again."""
        return max(1, math.ceil(self.burst / self.per_second))


@dataclass(frozen=True, slots=True)
class Decision:
    policy: Policy
    allowed: bool
    tokens: float
    # The bucket a token was taken from, and whether it is the in-memory one: where a refund
    # goes. Empty once refunded (or when nothing was taken), so a token is given back once.
    key: str = ""
    local: bool = False
    cost: int = 1  # tokens asked for (a refused request took none)

    @property
    def remaining(self) -> int:
        return max(0, math.floor(self.tokens))

    @property
    def seconds_until_full(self) -> int:
        return max(0, math.ceil((self.policy.burst - self.tokens) / self.policy.per_second))

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil((self.cost - self.tokens) / self.policy.per_second))

    def headers(self) -> list[tuple[bytes, bytes]]:
        name = self.policy.name
        policy = f'"{name}";q={self.policy.burst};w={self.policy.window_seconds}'
        state = f'"{name}";r={self.remaining};t={self.seconds_until_full}'
        return [(b"ratelimit-policy", policy.encode()), (b"ratelimit", state.encode())]


class CachedRead:
    """A generational cache entry to fetch along with the bucket: `generation` stays None when
    Redis could not be asked (then nothing may be stored either)."""

    __slots__ = ("entry", "entry_prefix", "generation", "generation_key")

    def __init__(self, generation_key: str, entry_prefix: str) -> None:
        self.generation_key = generation_key
        self.entry_prefix = entry_prefix
        self.generation: bytes | None = None
        self.entry: bytes | None = None

    def found(self, generation: bytes, entry: bytes | None) -> None:
        self.generation = generation
        self.entry = entry


class LocalBuckets:
    """The same arithmetic in process memory, for when Redis is down."""

    def __init__(self) -> None:
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, policy: Policy, cost: int = 1) -> Decision:
        now = time.monotonic()
        tokens, last = self._buckets.pop(key, (float(policy.burst), now))
        tokens = min(policy.burst, tokens + (now - last) * policy.per_second)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > _LOCAL_BUCKETS_MAX:
            self._buckets.popitem(last=False)
        return Decision(policy, allowed, tokens, key if allowed else "", local=True, cost=cost)

    def refund(self, key: str, policy: Policy) -> float:
        """Give one token back (no await in here: atomic within the process)."""
        now = time.monotonic()
        if key not in self._buckets:  # evicted: counted as full, as a new bucket would be
            return float(policy.burst)
        tokens, last = self._buckets.pop(key)
        tokens = min(policy.burst, tokens + (now - last) * policy.per_second + 1)
        self._buckets[key] = (tokens, now)
        return tokens


class RateLimiter:
    def __init__(self, guard: RedisGuard, settings: Settings) -> None:
        self.enabled = settings.rate_limit_enabled
        self._guard = guard
        self._prefix = f"{settings.redis_key_prefix}rl:"
        self._script = guard.client.register_script(_TOKEN_BUCKET)
        self._refund = guard.client.register_script(_REFUND)
        self._read = guard.client.register_script(READ_GENERATIONAL)
        self._local = LocalBuckets()
        self.user_policy = Policy(
            "user", settings.rate_limit_user_burst, settings.rate_limit_user_per_minute
        )
        self.auth_policy = Policy(
            "auth", settings.rate_limit_auth_burst, settings.rate_limit_auth_per_minute
        )
        self.trusted_proxies = [
            ipaddress.ip_network(proxy, strict=False) for proxy in settings.trusted_proxies
        ]

    async def take(
        self, policy: Policy, identity: str, read: CachedRead | None = None, *, cost: int = 1
    ) -> Decision:
        """Take `cost` tokens from the bucket, all of them or none. A cost above the burst could
        never be paid: it is capped there (the request then needs a full bucket)."""
        cost = min(cost, policy.burst)
        key = f"{self._prefix}{policy.name}:{identity}"
        args = [policy.burst, policy.per_second / 1000, cost]
        keys = [key] if read is None else [key, read.generation_key, read.entry_prefix]
        ok, reply = await self._guard.run(lambda _client: self._script(keys=keys, args=args))
        if ok and isinstance(reply, list):
            if read is not None:
                read.found(reply[2], reply[3] if len(reply) > 3 else None)
            allowed = bool(int(reply[0]))
            return Decision(policy, allowed, float(reply[1]), key if allowed else "", cost=cost)
        return self._local.take(key, policy, cost)

    async def refund(self, request: Request) -> None:
        """Give back the token this request took (it turned out to cost nothing: a 304), to the
        bucket it came from, and make the response's RateLimit headers say so. The one place
        tokens are given back; a no-op with limits off, or once done.

        Race-safe: in Redis one atomic script (refill, plus one, capped at the burst) composes
        with concurrent takes of every process; the in-memory bucket is changed without an
        await. If Redis fails in between, the token stays spent (never credited to a bucket
        it was not taken from)."""
        decision: Decision | None = getattr(request.state, "rate_limit", None)
        if decision is None or not decision.key:
            return
        policy, key = decision.policy, decision.key
        if decision.local:
            tokens = self._local.refund(key, policy)
        else:
            args = [policy.burst, policy.per_second / 1000]
            ok, reply = await self._guard.run(lambda _client: self._refund(keys=[key], args=args))
            if not ok or reply is None:
                return
            tokens = float(reply)
        request.state.rate_limit = Decision(policy, True, tokens)

    async def enforce(
        self,
        request: Request,
        policy: Policy,
        identity: str,
        read: CachedRead | None = None,
        *,
        cost: int = 1,
    ) -> None:
        """Spend `cost` tokens (one per request, unless the request weighs more) or raise 429;
        the RateLimit headers go on the response either way.

        `read`, if given, is filled from the same Redis round trip (even with limits off)."""
        if cost < 1 and read is None:
            return  # nothing to pay, nothing to read
        if not self.enabled:
            if read is not None:
                keys = [read.generation_key, read.entry_prefix]
                ok, reply = await self._guard.run(lambda _client: self._read(keys=keys))
                if ok and isinstance(reply, list):
                    read.found(reply[0], reply[1] if len(reply) > 1 else None)
            return
        decision = await self.take(policy, identity, read, cost=cost)
        request.state.rate_limit = decision
        if not decision.allowed:
            metrics.RATE_LIMITED.labels(policy=policy.name).inc()
            raise RateLimited(headers={"Retry-After": str(decision.retry_after)})


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_ip(request: Request, networks: list[Network]) -> str:
    """The socket peer, unless it is a trusted proxy: then the nearest untrusted hop of
    X-Forwarded-For (the left part of that header is the client's to forge)."""
    peer = request.client.host if request.client else "unknown"
    if not networks:
        return peer

    def trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in networks)

    if not trusted(peer):
        return peer
    hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not trusted(hop):
            return hop
    return hops[0] if hops else peer
