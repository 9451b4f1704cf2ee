"""The ASGI middleware: claim the key, then run the request and keep its response, or answer
from the stored one.

A pure ASGI middleware rather than a dependency, because it must see the raw body before the
route reads it and capture the finished response, and cost nothing for requests that do not use
it. For a claimed key:

1. run the app, passing the response through while keeping a bounded copy of it;
2. store the response before the last body chunk goes out, so a client holding the whole
   response that retries at once gets the replay, never a 409; or release the key (delete the
   row) on a 5xx, 401, 408, 429 or an exception, so the client can simply try again.

The request's own transaction and the stored response are two commits: a crash between them
leaves the claim `in_progress`, and once its lease runs out a retry runs the request again.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import anyio
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskapi.kit import metrics
from taskapi.kit.errors import AppError, ServiceUnavailable, app_error_response
from taskapi.kit.idempotency.fingerprint import derive, header, read_request
from taskapi.kit.idempotency.key import (
    HEADER_BYTES,
    REPLAYED_HEADER,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    parse_key,
)
from taskapi.kit.idempotency.sealing import seal, unseal
from taskapi.kit.idempotency.store import LEASE, KeyStore, StoredKey
from taskapi.kit.ratelimit import RateLimited, client_ip
from taskapi.kit.security import is_personal_token
from taskapi.kit.services import ServiceKey, Services, services_of

logger = logging.getLogger("taskapi.idempotency")

# A response larger than this is not kept (the key is released, and a retry runs again). The
# largest answer is a batch's (POST /tasks/batch): 500 tasks at their largest, about 66 KB of
# JSON each (a 10,000-character description of escaped control characters, 200-character
# title, 20 tags of 50 four-byte characters), some 33 MB: every POST's answer is kept.
RESPONSE_LIMIT = 40 * 1024 * 1024

_KEPT_HEADERS = frozenset({b"content-type", b"location", b"etag"})
# The unauthenticated POSTs: scoped by client IP. The value is the rate-limit bucket a replay
# spends from, the same one the endpoint itself uses (refresh has none).
_PUBLIC_PATHS: dict[str, str | None] = {
    "/api/v1/auth/register": "auth",
    "/api/v1/auth/login": "auth",
    "/api/v1/auth/token": "auth",
    "/api/v1/auth/refresh": None,
}


TOKEN_OWNER = ServiceKey[Callable[[str], Awaitable[int | None]]]("personal access token owner")
"""Whose live personal access token a bearer token is (None: not a live one); provided by the
auth domain, which kit cannot import."""


def _is_transient(status: int) -> bool:
    """Outcomes that mean "try again", not "this is what happened": never replayed."""
    return status >= 500 or status in (401, 408, 429)


@dataclass(frozen=True, slots=True)
class _Caller:
    scope: str  # stored: `user:<id>` or `ip:<address>`
    policy: str | None  # the rate-limit bucket a replay spends from
    identity: str
    user_id: int | None


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        values = [value for name, value in scope["headers"] if name == HEADER_BYTES]
        if not values:
            await self.app(scope, receive, send)
            return
        try:
            key = parse_key(values)
        except AppError as error:
            await app_error_response(error)(scope, receive, send)
            return
        services = services_of(scope["app"])
        try:
            caller = await self._caller(scope, services)
        except (SQLAlchemyError, OSError, TimeoutError):
            logger.warning("idempotency caller lookup failed", exc_info=True)
            await app_error_response(ServiceUnavailable())(scope, receive, send)
            return
        if caller is None:
            # No valid access token: the endpoint answers 401 itself, and nothing is claimed.
            await self.app(scope, receive, send)
            return
        await self._handle(scope, receive, send, services, caller, key)

    @staticmethod
    async def _caller(scope: Scope, services: Services) -> _Caller | None:
        path: str = scope["path"]
        if path in _PUBLIC_PATHS:
            ip = client_ip(Request(scope), services.rate_limiter.trusted_proxies)
            return _Caller(f"ip:{ip}", _PUBLIC_PATHS[path], ip, None)
        authorization = header(scope, b"authorization")
        if authorization is None:
            return None
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        token = token.strip()
        if is_personal_token(token):
            owner = await services.get(TOKEN_OWNER)(token)
            if owner is None:
                return None
            user_id = owner
        else:
            try:
                user_id = services.tokens.decode(token, expected_type="access").user_id
            except AppError:
                return None
        return _Caller(f"user:{user_id}", "user", str(user_id), user_id)

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        services: Services,
        caller: _Caller,
        key: str,
    ) -> None:
        receive, digest = await read_request(scope, receive)
        secret = services.settings.signing_key.encode()
        fingerprint = derive(secret, b"fingerprint", digest).hex()
        seal_key = derive(secret, b"seal", digest)
        keys = KeyStore(services.sessionmaker, caller.scope, key)
        try:
            outcome = await keys.claim(fingerprint)
        except (SQLAlchemyError, OSError, TimeoutError):
            logger.warning("idempotency key claim failed", exc_info=True)
            await app_error_response(ServiceUnavailable())(scope, receive, send)
            return
        except AppError as error:
            await app_error_response(error)(scope, receive, send)
            return
        if isinstance(outcome, StoredKey):
            await self._answer_stored(
                scope, receive, send, services, caller, outcome, fingerprint, seal_key
            )
            return
        await self._run_claimed(scope, receive, send, keys, outcome, seal_key)

    async def _answer_stored(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        services: Services,
        caller: _Caller,
        stored: StoredKey,
        fingerprint: str,
        seal_key: bytes,
    ) -> None:
        state = scope.setdefault("state", {})
        if caller.user_id is not None:
            state["user_id"] = caller.user_id
        # Answering from storage still spends from the caller's bucket, as the endpoint would:
        # otherwise replays would be a way around the rate limits.
        limiter = services.rate_limiter
        if limiter.enabled and caller.policy is not None:
            policy = limiter.user_policy if caller.policy == "user" else limiter.auth_policy
            decision = await limiter.take(policy, caller.identity)
            state["rate_limit"] = decision
            if not decision.allowed:
                metrics.RATE_LIMITED.labels(policy=policy.name).inc()
                error = RateLimited(headers={"Retry-After": str(decision.retry_after)})
                await app_error_response(error)(scope, receive, send)
                return
        if not hmac.compare_digest(stored.fingerprint, fingerprint):
            await app_error_response(IdempotencyKeyReused())(scope, receive, send)
            return
        if stored.state != "completed" or stored.status is None:
            in_use = IdempotencyKeyInUse(headers={"Retry-After": "1"})
            await app_error_response(in_use)(scope, receive, send)
            return
        body = unseal(seal_key, stored.body or b"")
        headers = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in stored.headers or []
        ]
        headers.append((b"content-length", str(len(body)).encode()))
        headers.append((REPLAYED_HEADER.lower().encode(), b"true"))
        await send({"type": "http.response.start", "status": stored.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _run_claimed(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        keys: KeyStore,
        claimed: datetime,
        seal_key: bytes,
    ) -> None:
        status = 0
        kept_headers: list[list[str]] = []
        chunks: list[bytes] = []
        size = 0
        settled = False  # stored or released

        async def settle(outcome: Callable[[], Awaitable[None]]) -> None:
            nonlocal settled
            settled = True
            try:
                # Shielded: a client that hangs up must not leave a claim behind.
                with anyio.CancelScope(shield=True):
                    await outcome()
            except Exception:
                logger.warning("idempotency key could not be stored or released", exc_info=True)

        async def capture(message: Message) -> None:
            nonlocal status, size, kept_headers
            if message["type"] == "http.response.start":
                status = message["status"]
                kept_headers = [
                    [name.decode("latin-1"), value.decode("latin-1")]
                    for name, value in message.get("headers", [])
                    if name.lower() in _KEPT_HEADERS
                ]
            elif message["type"] == "http.response.body" and not settled:
                chunk = message.get("body", b"")
                size += len(chunk)
                if size <= RESPONSE_LIMIT:
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    if _is_transient(status) or size > RESPONSE_LIMIT:
                        await settle(lambda: keys.release(claimed))
                    else:
                        body = seal(seal_key, b"".join(chunks))
                        await settle(lambda: keys.complete(claimed, status, kept_headers, body))
            await send(message)

        renewer = asyncio.create_task(self._renew(keys, claimed))
        try:
            await self.app(scope, receive, capture)
        finally:
            renewer.cancel()
            if not settled:
                # An exception, or a response never finished: nothing to replay.
                await settle(lambda: keys.release(claimed))

    @staticmethod
    async def _renew(keys: KeyStore, claimed: datetime) -> None:
        interval = LEASE.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await keys.renew(claimed)
            except Exception:
                logger.warning("idempotency key lease could not be renewed", exc_info=True)
