"""`Idempotency-Key` on POST requests (API.md, "Conditional and retried requests").

The same key from the same caller with the same request within 24 h replays the first response
(status, body, Content-Type, Location, ETag, plus `Idempotent-Replayed: true`) and does nothing
again; another request under a used key is 422 `idempotency_key_reused`; while the first one is
still running, 409 `idempotency_key_in_use`.

A pure ASGI middleware rather than a dependency, because it must see the raw body before the
route reads it and capture the finished response, and cost nothing for requests that do not use
it. Keys live in PostgreSQL (`idempotency_keys`), so every process and replica shares them:

1. claim: `INSERT ... ON CONFLICT DO UPDATE ... WHERE <expired, or a crashed claim>` in its own
   short transaction, committed before the request runs, so a concurrent duplicate sees it;
2. run the app, passing the response through while keeping a bounded copy of it;
3. store the response before the last body chunk goes out, so a client holding the whole
   response that retries at once gets the replay, never a 409; or release the key (delete the
   row) on a 5xx, 401, 408, 429 or an exception, so the client can simply try again.

The request's own transaction and the stored response are two commits: a crash between them
leaves the claim `in_progress`, and once its lease runs out a retry runs the request again.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import anyio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fastapi import FastAPI
from sqlalchemy import LargeBinary, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from taskapi.kit import metrics
from taskapi.kit.errors import AppError, ServiceUnavailable, app_error_response
from taskapi.kit.ratelimit import RateLimited, RateLimiter, client_ip

logger = logging.getLogger("taskapi.idempotency")

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
TTL = timedelta(hours=24)
# A claim not renewed for this long belongs to a process that died; a retry may take it over.
# Running requests renew it every third of it, so a slow upload is never taken over.
LEASE = timedelta(seconds=60)
# Larger bodies (file uploads) are streamed through untouched: their fingerprint is the method,
# path, query, content type and declared length, so memory stays bounded.
BODY_BUFFER_LIMIT = 1024 * 1024
# A response larger than this is not kept (the key is released); no POST here comes close.
RESPONSE_LIMIT = 1024 * 1024

_KEY_HEADER = HEADER.lower().encode()
_KEPT_HEADERS = frozenset({b"content-type", b"location", b"etag"})
# The unauthenticated POSTs: scoped by client IP. The value is the rate-limit bucket a replay
# spends from, the same one the endpoint itself uses (refresh has none).
_PUBLIC_PATHS: dict[str, str | None] = {
    "/api/v1/auth/register": "auth",
    "/api/v1/auth/login": "auth",
    "/api/v1/auth/token": "auth",
    "/api/v1/auth/refresh": None,
}


class InvalidIdempotencyKey(AppError):
    status, code, title = 400, "invalid_idempotency_key", "Invalid Idempotency-Key"
    default_detail = "Idempotency-Key must be one header of 1-255 visible ASCII characters."


class IdempotencyKeyInUse(AppError):
    status, code, title = 409, "idempotency_key_in_use", "Idempotency key in use"
    default_detail = "A request with this Idempotency-Key is still being processed; retry shortly."


class IdempotencyKeyReused(AppError):
    status, code, title = 422, "idempotency_key_reused", "Idempotency key reused"
    default_detail = (
        "This Idempotency-Key was already used with a different request; use a new key."
    )


def _is_transient(status: int) -> bool:
    """Outcomes that mean "try again", not "this is what happened": never replayed."""
    return status >= 500 or status in (401, 408, 429)


@dataclass(frozen=True, slots=True)
class _Caller:
    scope: str  # stored: `user:<id>` or `ip:<address>`
    policy: str | None  # the rate-limit bucket a replay spends from
    identity: str
    user_id: int | None


@dataclass(frozen=True, slots=True)
class _Existing:
    fingerprint: str
    state: str
    status: int | None
    headers: list[list[str]] | None
    body: bytes | None


def _parse_key(values: list[bytes]) -> str:
    if len(values) != 1:
        raise InvalidIdempotencyKey()
    raw = values[0]
    # Visible ASCII only: the key is echoed nowhere, but it is stored and compared as text.
    if not 1 <= len(raw) <= 255 or any(byte < 0x21 or byte > 0x7E for byte in raw):
        raise InvalidIdempotencyKey()
    return raw.decode("ascii")


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _multipart_boundary(content_type: bytes) -> tuple[bytes, bytes | None]:
    """The content type without its boundary, and the boundary: clients pick a new random one
    for every attempt, so a retried upload must not look like a different request."""
    main, _, params = content_type.partition(b";")
    if main.strip().lower() != b"multipart/form-data":
        return content_type, None
    kept: list[bytes] = []
    boundary: bytes | None = None
    for param in params.split(b";"):
        name, _, value = param.strip().partition(b"=")
        if name.lower() == b"boundary":
            boundary = value.strip(b'"')
        elif param.strip():
            kept.append(param.strip())
    return b"; ".join([main.strip(), *kept]), boundary


def _update(hasher: Any, part: bytes) -> None:
    # Length-prefixed, so no two different requests hash the same concatenation.
    hasher.update(len(part).to_bytes(8, "big"))
    hasher.update(part)


async def _read_request(scope: Scope, receive: Receive) -> tuple[Receive, bytes]:
    """Buffer a bounded body and digest the request: returns a `receive` that replays what was
    read, then the digest (SHA-256 of method, path, query, content type, body or length)."""
    content_type, boundary = _multipart_boundary(_header(scope, b"content-type") or b"")
    hasher = hashlib.sha256()
    for part in (scope["method"].encode(), scope["path"].encode(), scope["query_string"]):
        _update(hasher, part)
    _update(hasher, content_type)
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > BODY_BUFFER_LIMIT:
        _update(hasher, b"length:" + declared)
        return receive, hasher.digest()

    messages: list[Message] = []
    chunks: list[bytes] = []
    size = 0
    complete = False
    while size <= BODY_BUFFER_LIMIT:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break  # the client went away; the app will see it too
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            complete = True
            break
    body = b"".join(chunks)
    if boundary:
        body = body.replace(boundary, b"")
    # A body of unknown length that outgrew the buffer: its prefix stands for it.
    _update(hasher, (b"body:" if complete else b"prefix:") + body)

    pending = iter(messages)

    async def replay_receive() -> Message:
        message = next(pending, None)
        return message if message is not None else await receive()

    return replay_receive, hasher.digest()


def _derive(secret: bytes, purpose: bytes, digest: bytes) -> bytes:
    return hmac.new(secret, purpose + b"\0" + digest, hashlib.sha256).digest()


def _seal(key: bytes, body: bytes) -> bytes:
    """Stored bodies hold tokens (login, refresh) and private task data, while refresh tokens are
    otherwise only stored hashed: encrypt them (AES-256-GCM, key derived from the server secret
    and the request), so the database alone reveals nothing and tampering is detected."""
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, body, None)


def _unseal(key: bytes, sealed: bytes) -> bytes:
    return AESGCM(key).decrypt(sealed[:12], sealed[12:], None)


_CLAIM = text(
    """
    INSERT INTO idempotency_keys AS k
        (scope, key, fingerprint, state, locked_until, created_at, expires_at)
    VALUES (:scope, :key, :fingerprint, 'in_progress',
            now() + make_interval(secs => :lease), clock_timestamp(),
            now() + make_interval(secs => :ttl))
    ON CONFLICT (scope, key) DO UPDATE
    SET fingerprint = EXCLUDED.fingerprint, state = 'in_progress',
        locked_until = EXCLUDED.locked_until, response_status = NULL,
        response_headers = NULL, response_body = NULL,
        created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at
    WHERE k.expires_at <= now()
       OR (k.state = 'in_progress' AND k.locked_until <= now()
           AND k.fingerprint = EXCLUDED.fingerprint)
    RETURNING k.created_at
    """
)
_EXISTING = text(
    """
    SELECT fingerprint, state, response_status, response_headers, response_body
    FROM idempotency_keys WHERE scope = :scope AND key = :key
    """
)
# `created_at` is set from clock_timestamp() by each claim, so it identifies the claim: a
# request whose claim was taken over can no longer store or release anything.
_OWNED = "scope = :scope AND key = :key AND created_at = :claimed AND state = 'in_progress'"
_COMPLETE = text(
    f"""
    UPDATE idempotency_keys
    SET state = 'completed', locked_until = NULL, response_status = :status,
        response_headers = :headers, response_body = :body
    WHERE {_OWNED}
    """  # noqa: S608  (a constant, no input)
).bindparams(bindparam("headers", type_=JSONB), bindparam("body", type_=LargeBinary))
_RELEASE = text(f"DELETE FROM idempotency_keys WHERE {_OWNED}")  # noqa: S608
_RENEW = text(
    f"UPDATE idempotency_keys SET locked_until = now() + make_interval(secs => :lease) "  # noqa: S608
    f"WHERE {_OWNED}"
)


class _Keys:
    """The statements on `idempotency_keys`, each in its own short transaction."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], scope: str, key: str):
        self._sessionmaker = sessionmaker
        self._params: dict[str, Any] = {"scope": scope, "key": key}

    async def _run(self, statement: Any, **params: Any) -> Any:
        async with self._sessionmaker() as session:
            result = await session.execute(statement, {**self._params, **params})
            await session.commit()
            return result

    async def claim(self, fingerprint: str) -> datetime | _Existing:
        # A row deleted between the INSERT and the SELECT (released by a failing request) is
        # simply claimed on the next turn.
        for _ in range(3):
            claimed = (
                await self._run(
                    _CLAIM,
                    fingerprint=fingerprint,
                    lease=LEASE.total_seconds(),
                    ttl=TTL.total_seconds(),
                )
            ).scalar_one_or_none()
            if claimed is not None:
                return claimed  # type: ignore[no-any-return]
            row = (await self._run(_EXISTING)).one_or_none()
            if row is not None:
                return _Existing(*row)
        raise ServiceUnavailable("The idempotency key could not be claimed; try again.")

    async def complete(
        self, claimed: datetime, status: int, headers: list[list[str]], body: bytes
    ) -> None:
        await self._run(_COMPLETE, claimed=claimed, status=status, headers=headers, body=body)

    async def release(self, claimed: datetime) -> None:
        await self._run(_RELEASE, claimed=claimed)

    async def renew(self, claimed: datetime) -> None:
        await self._run(_RENEW, claimed=claimed, lease=LEASE.total_seconds())


class IdempotencyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        values = [value for name, value in scope["headers"] if name == _KEY_HEADER]
        if not values:
            await self.app(scope, receive, send)
            return
        try:
            key = _parse_key(values)
        except AppError as error:
            await app_error_response(error)(scope, receive, send)
            return
        app: FastAPI = scope["app"]
        caller = self._caller(scope, app)
        if caller is None:
            # No valid access token: the endpoint answers 401 itself, and nothing is claimed.
            await self.app(scope, receive, send)
            return
        await self._handle(scope, receive, send, app, caller, key)

    @staticmethod
    def _caller(scope: Scope, app: FastAPI) -> _Caller | None:
        limiter: RateLimiter = app.state.rate_limiter
        path: str = scope["path"]
        if path in _PUBLIC_PATHS:
            ip = client_ip(Request(scope), limiter.trusted_proxies)
            return _Caller(f"ip:{ip}", _PUBLIC_PATHS[path], ip, None)
        authorization = _header(scope, b"authorization")
        if authorization is None:
            return None
        scheme, _, token = authorization.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        try:
            claims = app.state.auth_service.tokens.decode(token.strip(), expected_type="access")
        except AppError:
            return None
        user_id: int = claims.user_id
        return _Caller(f"user:{user_id}", "user", str(user_id), user_id)

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, app: FastAPI, caller: _Caller, key: str
    ) -> None:
        receive, digest = await _read_request(scope, receive)
        secret = app.state.settings.signing_key.encode()
        # Keyed with the server secret: request bodies carry passwords and refresh tokens.
        fingerprint = _derive(secret, b"fingerprint", digest).hex()
        seal_key = _derive(secret, b"seal", digest)
        keys = _Keys(app.state.sessionmaker, caller.scope, key)
        try:
            outcome = await keys.claim(fingerprint)
        except (SQLAlchemyError, OSError, TimeoutError):
            logger.warning("idempotency key claim failed", exc_info=True)
            await app_error_response(ServiceUnavailable())(scope, receive, send)
            return
        except AppError as error:
            await app_error_response(error)(scope, receive, send)
            return
        if isinstance(outcome, _Existing):
            await self._answer_existing(
                scope, receive, send, app, caller, outcome, fingerprint, seal_key
            )
            return
        await self._run_claimed(scope, receive, send, keys, outcome, seal_key)

    async def _answer_existing(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        app: FastAPI,
        caller: _Caller,
        existing: _Existing,
        fingerprint: str,
        seal_key: bytes,
    ) -> None:
        state = scope.setdefault("state", {})
        if caller.user_id is not None:
            state["user_id"] = caller.user_id
        # Answering from storage still spends from the caller's bucket, as the endpoint would:
        # otherwise replays would be a way around the rate limits.
        limiter: RateLimiter = app.state.rate_limiter
        if limiter.enabled and caller.policy is not None:
            policy = limiter.user_policy if caller.policy == "user" else limiter.auth_policy
            decision = await limiter.take(policy, caller.identity)
            state["rate_limit"] = decision
            if not decision.allowed:
                metrics.RATE_LIMITED.labels(policy=policy.name).inc()
                error = RateLimited(headers={"Retry-After": str(decision.retry_after)})
                await app_error_response(error)(scope, receive, send)
                return
        if not hmac.compare_digest(existing.fingerprint, fingerprint):
            await app_error_response(IdempotencyKeyReused())(scope, receive, send)
            return
        if existing.state != "completed" or existing.status is None:
            in_use = IdempotencyKeyInUse(headers={"Retry-After": "1"})
            await app_error_response(in_use)(scope, receive, send)
            return
        body = _unseal(seal_key, existing.body or b"")
        headers = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in existing.headers or []
        ]
        headers.append((b"content-length", str(len(body)).encode()))
        headers.append((REPLAYED_HEADER.lower().encode(), b"true"))
        await send({"type": "http.response.start", "status": existing.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _run_claimed(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        keys: _Keys,
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
                        body = _seal(seal_key, b"".join(chunks))
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
    async def _renew(keys: _Keys, claimed: datetime) -> None:
        interval = LEASE.total_seconds() / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await keys.renew(claimed)
            except Exception:
                logger.warning("idempotency key lease could not be renewed", exc_info=True)


def install_idempotency(app: FastAPI) -> None:
    """Add the middleware (inside CORS and the request context, so replays get their headers)
    and document the header and its errors on every POST operation."""
    app.add_middleware(IdempotencyMiddleware)
    original = app.openapi

    def openapi() -> dict[str, Any]:
        schema = original()
        _document(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


_PARAMETER = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "description": (
        "Makes a retried POST safe: the same key from the same user (the same client IP for "
        "register, login, token and refresh) with the same request within 24 hours replays "
        f"the first response with `{REPLAYED_HEADER}: true` and does nothing again. The same "
        "key with a different request is 422 `idempotency_key_reused`; while the first request "
        "is still running, 409 `idempotency_key_in_use`. Responses with a 5xx, 401, 408 or "
        "429 status are not kept, so such a request can be retried with the same key."
    ),
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
}
_ERROR_DESCRIPTIONS = {
    "400": "Malformed request, or an invalid Idempotency-Key",
    "409": "Conflict, or the Idempotency-Key is still in use",
    "422": "Validation error, or the Idempotency-Key was used with a different request",
}


def _document(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {})
    components.setdefault("parameters", {})["IdempotencyKey"] = _PARAMETER
    reference = {"$ref": "#/components/parameters/IdempotencyKey"}
    problem = {"$ref": "#/components/schemas/Problem"}
    replayed = {
        "description": "`true` when this response is the replay of an earlier one",
        "schema": {"type": "string", "enum": ["true"]},
    }
    for path_item in schema.get("paths", {}).values():
        operation = path_item.get("post")
        if operation is None:
            continue
        parameters = operation.setdefault("parameters", [])
        if reference not in parameters:
            parameters.append(reference)
        responses = operation.setdefault("responses", {})
        for status, response in responses.items():
            if status.startswith("2"):
                response.setdefault("headers", {})[REPLAYED_HEADER] = replayed
        for status, description in _ERROR_DESCRIPTIONS.items():
            responses.setdefault(
                status,
                {
                    "description": description,
                    "content": {"application/problem+json": {"schema": problem}},
                },
            )


# --- expiry (the worker's periodic job) ---------------------------------------------------------

# Batches, so one sweep after a long pause never holds a huge delete (and its locks) at once.
_EXPIRE_BATCH = 5000
_EXPIRE = text(
    """
    DELETE FROM idempotency_keys WHERE id IN (
        SELECT id FROM idempotency_keys WHERE expires_at <= now() LIMIT :batch
    )
    """
)


async def delete_expired_keys(sessionmaker: async_sessionmaker[AsyncSession]) -> int:
    """Delete the records past their 24 hours (they no longer replay), a batch per transaction;
    how many went."""
    removed = 0
    while True:
        async with sessionmaker() as session:
            result = await session.execute(_EXPIRE, {"batch": _EXPIRE_BATCH})
            await session.commit()
        count = int(getattr(result, "rowcount", 0) or 0)
        removed += count
        if count < _EXPIRE_BATCH:
            break
    if removed:
        logger.info("removed %d expired idempotency keys", removed)
    return removed
