"""Outbound HTTP that cannot be turned against internal networks (webhook delivery uses it).

A webhook URL is chosen by a user, so sending to it is request forgery waiting to happen: the
URL (or a name it resolves to, or a redirect it answers with) may point at loopback, the
private network, or the cloud metadata service. The defence lives where the connection is
made, not only where the URL is saved:

* `check_url` is the save-time check (the API answers 422 with its reason);
* `GuardedBackend` resolves every host once, refuses if any address it got is forbidden
  (`address_refusal`; both rules live in taskapi.kit.addresses), and connects to the very
  address it checked, so a second DNS answer (rebinding) is never used; TLS still verifies
  the original hostname;
* `outbound_client` never follows redirects, ignores the environment's proxies, keeps no cookies;
* `post_bounded` reads at most a few KiB of any answer and never raises for network failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy

import httpcore
import httpx

from taskapi.kit.addresses import (
    Resolver,
    SystemResolver,
    address_refusal,
    check_url,
    host_literal,
)
from taskapi.kit.outbound_pools import PerOriginTransport

__all__ = [
    "ForbiddenDestination",
    "GuardedBackend",
    "OutboundResult",
    "OutboundTransport",
    "Resolver",
    "SystemResolver",
    "address_refusal",
    "check_url",
    "outbound_client",
    "post_bounded",
]

USER_AGENT = "taskapi-webhooks/1"


class ForbiddenDestination(httpcore.ConnectError):
    """A connection refused by the guard; `reason` says which address and why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that only ever connects to addresses it has judged.

    `connect_tcp` resolves the host once, refuses the whole host if any answer is forbidden
    (an attacker controlling DNS picks which answer a client tries, so one bad answer taints
    the name), then hands `connector` the IP literal itself. httpcore layers TLS over the
    returned stream with the request's own hostname as server name, so certificates are still
    verified against the name in the URL, not the address.
    """

    def __init__(
        self,
        *,
        allow_private_networks: bool,
        resolver: Resolver | None = None,
        connector: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._allow_private = allow_private_networks
        self._resolver = resolver if resolver is not None else SystemResolver()
        self._connector = connector if connector is not None else httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        deadline = None if timeout is None else time.monotonic() + timeout
        addresses = await self._resolve(host, port, timeout)
        if not self._allow_private:
            for address in addresses:
                reason = address_refusal(address)
                if reason is not None:
                    suffix = "" if host_literal(host) else f" ({host} resolves to it)"
                    raise ForbiddenDestination(reason + suffix)
        # The checked addresses in the resolver's order: one that fails gives way to the next,
        # a timeout (not a ConnectError) ends it all, as the time budget is shared.
        failure: httpcore.ConnectError | None = None
        for address in addresses:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await self._connector.connect_tcp(
                    address,
                    port,
                    timeout=remaining,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except httpcore.ConnectError as exc:
                failure = exc
        assert failure is not None  # _resolve never returns an empty list
        raise failure

    async def _resolve(self, host: str, port: int, budget: float | None) -> list[str]:
        literal = host_literal(host)
        if literal is not None:
            # Any spelling of an address (2130706433, 0x7f.1) is read here, as the system
            # resolver would, so what is judged is what is connected to, whatever the resolver.
            return [str(literal)]
        try:
            async with asyncio.timeout(budget):
                answers = await self._resolver.resolve(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"could not resolve {host}: {exc}") from exc
        unique = list(dict.fromkeys(answers))
        if not unique:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        return unique

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # A Unix socket is local by definition (the Docker socket, a database's): never a
        # destination for a user-supplied URL.
        raise ForbiddenDestination(f"unix socket {path} is local")

    async def sleep(self, seconds: float) -> None:
        await self._connector.sleep(seconds)


# httpcore's exceptions and the httpx ones each stands for; of the entries matching an
# exception, the most specific (ConnectTimeout over TimeoutException) is used.
_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProtocolError, httpx.ProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
)


@contextlib.contextmanager
def _httpx_exceptions() -> Iterator[None]:
    """Re-raise httpcore's exceptions as httpx's, the original kept as `__cause__` (where
    `post_bounded` finds a ForbiddenDestination)."""
    try:
        yield
    except Exception as exc:
        mapped: type[httpx.TransportError] | None = None
        for source, target in _EXCEPTIONS:
            if isinstance(exc, source) and (mapped is None or issubclass(target, mapped)):
                mapped = target
        if mapped is None:
            raise
        raise mapped(str(exc)) from exc


class _ResponseStream(httpx.AsyncByteStream):
    """httpcore's response body as an httpx stream, its errors mapped too."""

    def __init__(self, stream: httpcore.Response) -> None:
        self._response = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_exceptions():
            async for part in self._response.aiter_stream():
                yield part

    async def aclose(self) -> None:
        with _httpx_exceptions():
            await self._response.aclose()


class OutboundTransport(httpx.AsyncBaseTransport):
    """An httpx transport over an httpcore connection pool whose every connection is made by
    a `GuardedBackend` (HTTP/1.1, no proxy)."""

    def __init__(
        self,
        *,
        allow_private_networks: bool,
        resolver: Resolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 100,
        max_keepalive_connections: int = 20,
        keepalive_expiry: float = 5.0,
        connector: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        backend = GuardedBackend(
            allow_private_networks=allow_private_networks, resolver=resolver, connector=connector
        )
        self._connections = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context if ssl_context is not None else httpx.create_ssl_context(),
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive_connections,
            keepalive_expiry=keepalive_expiry,
            network_backend=backend,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(request.stream, httpx.AsyncByteStream):
            raise TypeError("an async transport needs an async request body")
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_exceptions():
            # Returns once the head is in: the body is read only as the caller iterates it.
            response = await self._connections.handle_async_request(core_request)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._connections.aclose()


def outbound_client(
    *,
    allow_private_networks: bool,
    resolver: Resolver | None = None,
    timeout: float = 10.0,
    max_connections: int = 100,
    ssl_context: ssl.SSLContext | None = None,
    connector: httpcore.AsyncNetworkBackend | None = None,
) -> httpx.AsyncClient:
    """The client for user-chosen URLs: guarded connections, one pool per origin (see
    taskapi.kit.outbound_pools), redirects not followed (a 3xx is an answer like any other), no
    proxies or .netrc from the environment.

    `ssl_context` is for a private CA (httpx's default trust store otherwise); `connector` is
    what opens the connections to already-checked addresses (httpcore's AnyIO backend
    otherwise; tests pass one that records every connection attempt).
    """
    # One trust store for every origin (loading one costs milliseconds of CPU).
    context = ssl_context if ssl_context is not None else httpx.create_ssl_context()

    def pool() -> OutboundTransport:
        return OutboundTransport(
            allow_private_networks=allow_private_networks,
            resolver=resolver,
            ssl_context=context,
            max_connections=max_connections,
            connector=connector,
        )

    # post_bounded ends an exchange by the read timeout: a pool unused for three has none.
    transport = PerOriginTransport(pool, idle_seconds=max(60.0, 3 * timeout))
    return httpx.AsyncClient(
        transport=transport,
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        # No cookies: a receiver's Set-Cookie would stay in the process for good (one jar for all
        # receivers, growing with each new name) and go back with every later delivery to it.
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        # identity: a compressed answer would be inflated before the body bound applies.
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
    )


@dataclass(frozen=True)
class OutboundResult:
    """What one request came to. `status` is set once a response head arrived (even if
    reading the body then failed); `error` is set whenever something failed; `body` holds at
    most the bound, the rest of the answer never read."""

    status: int | None
    body: bytes
    duration_ms: int
    error: str | None


async def post_bounded(
    client: httpx.AsyncClient,
    url: str,
    *,
    content: bytes,
    headers: dict[str, str],
    max_body_bytes: int = 4096,
    deadline: float | None = None,
) -> OutboundResult:
    """POST `content` to `url` and read at most `max_body_bytes` of the answer.

    Never raises for network failures, timeouts or forbidden destinations: they become
    `error`. The whole exchange ends by `deadline` seconds (the client's read timeout by
    default): httpx's timeouts are per operation, so a receiver dribbling one byte at a time
    could otherwise hold a delivery for ever.
    """
    started = time.monotonic()
    limit = deadline if deadline is not None else client.timeout.read
    status: int | None = None
    body = b""
    error: str | None = None
    try:
        async with asyncio.timeout(limit):
            async with client.stream("POST", url, content=content, headers=headers) as response:
                status = response.status_code
                body = await _read_bounded(response, max_body_bytes)
    except (TimeoutError, httpx.TimeoutException):
        error = "timeout"
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        error = _describe(exc)
    duration_ms = int((time.monotonic() - started) * 1000)
    return OutboundResult(status=status, body=body, duration_ms=duration_ms, error=error)


async def _read_bounded(response: httpx.Response, limit: int) -> bytes:
    """The first `limit` bytes of the body as sent (raw: nothing inflated); leaving the
    stream early makes httpcore drop the connection instead of draining it."""
    parts: list[bytes] = []
    size = 0
    if limit <= 0:
        return b""
    chunks = response.aiter_raw()
    try:
        async for chunk in chunks:
            parts.append(chunk[: limit - size])
            size += len(parts[-1])
            if size >= limit:
                break
    finally:
        # Closed now rather than whenever the garbage collector gets to it.
        if isinstance(chunks, AsyncGenerator):
            await chunks.aclose()
    return b"".join(parts)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and everything it was raised from or during, exception groups opened."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)


def _describe(exc: Exception) -> str:
    """A short reason for a delivery log: the forbidden address, or the kind of failure."""
    causes = list(_causes(exc))
    for cause in causes:
        if isinstance(cause, ForbiddenDestination):
            return f"forbidden destination: {cause.reason}"
    if isinstance(exc, httpx.InvalidURL):
        return f"invalid url: {exc}"
    if isinstance(exc, httpx.ConnectError):
        for cause in causes:
            if isinstance(cause, ConnectionRefusedError):
                return "connection refused"
            if isinstance(cause, ssl.SSLError):
                return f"tls error: {cause}"
        return f"connection failed: {exc}"
    if isinstance(exc, httpx.ProtocolError):
        return f"protocol error: {exc}"
    return f"request failed: {type(exc).__name__}: {exc}"
