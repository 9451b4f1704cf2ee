"""Password hashing (Argon2id, off the event loop), JWTs (HS256, pinned) and the format of
personal access tokens."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
import string
import threading
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from taskapi.kit.config import Settings
from taskapi.kit.errors import InvalidToken, TokenExpired

JWT_ALGORITHM = "HS256"
TokenType = Literal["access", "refresh"]
_T = TypeVar("_T")


# Hashing threads run this much nicer than the event loop: under a login storm the scheduler
# gives the loop (and PostgreSQL) the CPU first, so logins slow down rather than every request.
HASH_THREAD_NICENESS = 10


def _lower_thread_priority() -> None:
    # On Linux, nice is per thread (a new thread starts at its creator's): this one goes
    # HASH_THREAD_NICENESS below the event loop's. Elsewhere, or if refused, it keeps it.
    with contextlib.suppress(AttributeError, OSError):
        thread = threading.get_native_id()
        niceness = os.getpriority(os.PRIO_PROCESS, thread) + HASH_THREAD_NICENESS
        os.setpriority(os.PRIO_PROCESS, thread, min(19, niceness))


class PasswordHashing:
    """Argon2id hashing in a bounded thread pool of low-priority threads.

    Hashing inside `async def` would freeze the worker for its whole duration; the pool's size
    caps concurrent hashes (and their memory) so a login storm queues instead of starving others.
    `admission` also caps how many password checks may be under way at once (looking the user
    up included), so queued logins wait without holding database connections the rest of the
    traffic needs.
    """

    def __init__(self, settings: Settings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_cost_kib,
            parallelism=settings.argon2_parallelism,
        )
        self._executor = ThreadPoolExecutor(
            max_workers=settings.password_hash_threads,
            thread_name_prefix="argon2",
            initializer=_lower_thread_priority,
        )
        # Two per thread: one hashing, one ready to start the moment a thread frees up.
        self.admission = asyncio.Semaphore(2 * settings.password_hash_threads)
        self._dummy_hash: str | None = None

    async def _run(self, func: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    async def hash(self, password: str) -> str:
        return await self._run(self._hasher.hash, password)

    def _verify_sync(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def verify(self, password_hash: str, password: str) -> bool:
        return await self._run(self._verify_sync, password_hash, password)

    async def verify_against_dummy(self, password: str) -> None:
        """Spend the same time as a real verify, so responses don't reveal which users exist."""
        if self._dummy_hash is None:
            self._dummy_hash = await self.hash(secrets.token_urlsafe(16))
        await self.verify(self._dummy_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: int
    session_id: uuid.UUID
    token_id: str
    expires_at: datetime


# Access tokens whose signature and claims were checked, by their exact text: a client sends the
# same token for many requests, and PyJWT's checks cost more than the rest of authentication.
VERIFIED_TOKENS_MAX = 4096


class TokenCodec:
    """Issues and checks JWTs; the `type` claim keeps refresh and access tokens apart."""

    def __init__(self, settings: Settings) -> None:
        self._verified: OrderedDict[str, TokenClaims] = OrderedDict()
        self._key = settings.signing_key
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self.access_ttl = timedelta(seconds=settings.access_token_ttl_seconds)
        self.refresh_ttl = timedelta(seconds=settings.refresh_token_ttl_seconds)
        self.refresh_reuse_grace = timedelta(seconds=settings.refresh_reuse_grace_seconds)

    def encode(
        self, *, token_type: TokenType, user_id: int, session_id: uuid.UUID, now: datetime
    ) -> tuple[str, TokenClaims]:
        ttl = self.access_ttl if token_type == "access" else self.refresh_ttl
        claims = TokenClaims(
            user_id=user_id,
            session_id=session_id,
            token_id=uuid.uuid4().hex,
            expires_at=now + ttl,
        )
        payload = {
            "sub": str(user_id),
            "sid": str(session_id),
            "jti": claims.token_id,
            "type": token_type,
            "iat": int(now.timestamp()),
            "exp": int(claims.expires_at.timestamp()),
            "iss": self._issuer,
            "aud": self._audience,
        }
        return jwt.encode(payload, self._key, algorithm=JWT_ALGORITHM), claims

    def decode(self, token: str, *, expected_type: TokenType) -> TokenClaims:
        if expected_type == "access":
            claims = self._verified.get(token)
            if claims is not None:
                # The same text was verified before, so only time can have changed its validity
                # (revocation is the principal lookup's business).
                if claims.expires_at.timestamp() <= time.time():
                    del self._verified[token]
                    raise TokenExpired()
                self._verified.move_to_end(token)
                return claims
        claims = self._verify(token, expected_type=expected_type)
        if expected_type == "access":
            self._verified[token] = claims
            if len(self._verified) > VERIFIED_TOKENS_MAX:
                self._verified.popitem(last=False)
        return claims

    def _verify(self, token: str, *, expected_type: TokenType) -> TokenClaims:
        try:
            payload = jwt.decode(
                token,
                self._key,
                algorithms=[JWT_ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iat", "sub", "jti", "iss", "aud", "type", "sid"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenExpired() from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken() from exc
        if payload.get("type") != expected_type:
            raise InvalidToken(f"This is not an {expected_type} token.")
        try:
            user_id = int(payload["sub"])
            session_id = uuid.UUID(str(payload["sid"]))
            expires_at = datetime.fromtimestamp(int(payload["exp"]), tz=UTC)
        except (TypeError, ValueError) as exc:
            raise InvalidToken() from exc
        return TokenClaims(
            user_id=user_id,
            session_id=session_id,
            token_id=str(payload["jti"]),
            expires_at=expires_at,
        )


def fingerprint_token(token: str) -> str:
    """What is stored for a refresh token: its SHA-256, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


PERSONAL_TOKEN_PREFIX = "tap_"
_BASE62 = string.digits + string.ascii_letters
_SECRET_CHARS = 32  # 32 base62 characters: 190 random bits
_CHECKSUM_CHARS = 6  # CRC32 in base62
PERSONAL_TOKEN_LENGTH = len(PERSONAL_TOKEN_PREFIX) + _SECRET_CHARS + _CHECKSUM_CHARS


def _base62(number: int, width: int) -> str:
    digits = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        digits.append(_BASE62[digit])
    return "".join(reversed(digits))


def _checksum(secret: str) -> str:
    return _base62(zlib.crc32(secret.encode()), _CHECKSUM_CHARS)


def new_personal_token() -> str:
    """`tap_` + 32 random base62 characters + a CRC32 of them (as GitHub's tokens): the prefix
    lets secret scanners and our log redaction find leaked tokens; the checksum lets both tell a
    real token from a look-alike without asking the database."""
    secret = "".join(secrets.choice(_BASE62) for _ in range(_SECRET_CHARS))
    return PERSONAL_TOKEN_PREFIX + secret + _checksum(secret)


def is_personal_token(token: str) -> bool:
    """Which kind of bearer credential this claims to be (JWTs never start with `tap_`)."""
    return token.startswith(PERSONAL_TOKEN_PREFIX)


def well_formed_personal_token(token: str) -> bool:
    if len(token) != PERSONAL_TOKEN_LENGTH or not is_personal_token(token):
        return False
    body = token[len(PERSONAL_TOKEN_PREFIX) :]
    secret, checksum = body[:_SECRET_CHARS], body[_SECRET_CHARS:]
    if any(char not in _BASE62 for char in body):
        return False
    return hmac.compare_digest(checksum, _checksum(secret))


class PersonalTokenHasher:
    """What is stored and looked up for a personal access token: HMAC-SHA256 under a key derived
    from the server secret. A random 190-bit token needs no slow hash (nothing to guess), and the
    key means a leaked table cannot even confirm a token found elsewhere."""

    def __init__(self, signing_key: str) -> None:
        self._key = hmac.new(
            signing_key.encode(), b"taskapi personal access token", hashlib.sha256
        ).digest()

    def digest(self, token: str) -> bytes:
        return hmac.new(self._key, token.encode(), hashlib.sha256).digest()
