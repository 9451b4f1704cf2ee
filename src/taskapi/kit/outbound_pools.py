"""One connection pool per origin for outbound HTTP (taskapi.kit.outbound uses it).

httpcore's pool walks every connection it holds, twice per request (when a request is assigned
a connection and when its response is closed), checking each for expiry with a poll of its
socket, and counts the idle ones once per idle connection. With the 64 deliveries a webhook
worker keeps in flight spread over many receivers, one shared pool holds some 64 connections:
measured on loopback, the client then spends 1.8-2.0 ms of CPU per request against 0.8 ms with
8 connections (scripts/bench/webhooks.py; docs/performance.md). A pool per origin holds only
what that receiver has in flight (at most 8 per webhook), and one slow receiver's connections
are never walked for another's requests.

A pool unused for `idle_seconds` is closed (its connections, idle since, with it), so a worker
that has delivered to thousands of origins does not keep thousands of pools: the caller sets
`idle_seconds` above the longest exchange it allows, so no request is in flight on a pool when
it goes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx

Origin = tuple[bytes, bytes, int | None]  # scheme, host, port


class PerOriginTransport(httpx.AsyncBaseTransport):
    """Routes each request to the transport of its origin, made by `make` on first use."""

    def __init__(
        self, make: Callable[[], httpx.AsyncBaseTransport], *, idle_seconds: float
    ) -> None:
        self._make = make
        self._idle_seconds = idle_seconds
        # Each origin's transport and when it last started a request.
        self._transports: dict[Origin, tuple[httpx.AsyncBaseTransport, float]] = {}
        self._swept_at = time.monotonic()

    @property
    def origins(self) -> int:
        """How many origins have a pool now."""
        return len(self._transports)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        now = time.monotonic()
        if now - self._swept_at >= self._idle_seconds:
            await self._close_idle(now)
        origin = (request.url.raw_scheme, request.url.raw_host, request.url.port)
        found = self._transports.get(origin)
        transport = found[0] if found is not None else self._make()
        self._transports[origin] = (transport, now)
        return await transport.handle_async_request(request)

    async def _close_idle(self, now: float) -> None:
        self._swept_at = now
        idle = [o for o, (_, used) in self._transports.items() if now - used >= self._idle_seconds]
        for origin in idle:
            transport, _ = self._transports.pop(origin)
            await transport.aclose()

    async def aclose(self) -> None:
        transports = [transport for transport, _ in self._transports.values()]
        self._transports.clear()
        for transport in transports:
            await transport.aclose()
