"""Registration, login, refresh-token rotation with reuse detection (and its grace), logout."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.auth import repository
from taskapi.auth.schemas import RegisterIn, TokenPair
from taskapi.kit.errors import (
    EmailTaken,
    InvalidCredentials,
    InvalidToken,
    RefreshTokenReused,
    TokenExpired,
    UsernameTaken,
)
from taskapi.kit.security import PasswordHashing, TokenClaims, TokenCodec, fingerprint_token
from taskapi.kit.services import ServiceKey
from taskapi.models import RefreshToken, User


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the user and the login (refresh-token family) the access token belongs to."""

    user: User
    session_id: uuid.UUID


def utcnow() -> datetime:
    return datetime.now(UTC)


def raise_for_duplicate(error: IntegrityError) -> None:
    """Map a lost uniqueness race on users to the same 409 the pre-check gives."""
    message = str(error.orig)
    if "uq_users_username_lower" in message:
        raise UsernameTaken() from error
    if "uq_users_email_lower" in message:
        raise EmailTaken() from error
    raise error


class AuthService:
    def __init__(self, hashing: PasswordHashing, tokens: TokenCodec) -> None:
        self.hashing = hashing
        self.tokens = tokens

    async def register(self, session: AsyncSession, data: RegisterIn) -> User:
        async with self.hashing.admission:
            return await self._register(session, data)

    async def _register(self, session: AsyncSession, data: RegisterIn) -> User:
        if await repository.username_exists(session, data.username):
            raise UsernameTaken()
        if await repository.email_exists(session, data.email):
            raise EmailTaken()
        user = User(
            username=data.username,
            email=data.email,
            full_name=data.full_name,
            password_hash=await self.hashing.hash(data.password),
        )
        session.add(user)
        try:
            await session.flush()
        except IntegrityError as error:
            raise_for_duplicate(error)
        return user

    async def authenticate(self, session: AsyncSession, identifier: str, password: str) -> User:
        async with self.hashing.admission:
            return await self._authenticate(session, identifier, password)

    async def _authenticate(self, session: AsyncSession, identifier: str, password: str) -> User:
        user = await repository.find_user_by_login(session, identifier)
        if user is None:
            await self.hashing.verify_against_dummy(password)
            raise InvalidCredentials()
        if not await self.hashing.verify(user.password_hash, password):
            raise InvalidCredentials()
        if self.hashing.needs_rehash(user.password_hash):
            user.password_hash = await self.hashing.hash(password)
        return user

    async def login(self, session: AsyncSession, identifier: str, password: str) -> TokenPair:
        user = await self.authenticate(session, identifier, password)
        return await self.issue_tokens(session, user.id, family_id=uuid.uuid4())

    async def issue_tokens(
        self, session: AsyncSession, user_id: int, *, family_id: uuid.UUID
    ) -> TokenPair:
        now = utcnow()
        access, _ = self.tokens.encode(
            token_type="access", user_id=user_id, session_id=family_id, now=now
        )
        refresh, refresh_claims = self.tokens.encode(
            token_type="refresh", user_id=user_id, session_id=family_id, now=now
        )
        session.add(
            RefreshToken(
                user_id=user_id,
                family_id=family_id,
                token_hash=fingerprint_token(refresh),
                expires_at=refresh_claims.expires_at,
            )
        )
        await session.flush()
        return TokenPair(
            access_token=access,
            refresh_token=refresh,
            expires_in=int(self.tokens.access_ttl.total_seconds()),
        )

    async def refresh(self, session: AsyncSession, refresh_token: str) -> TokenPair:
        claims = self.tokens.decode(refresh_token, expected_type="refresh")
        now = utcnow()
        token_hash = fingerprint_token(refresh_token)
        current = await repository.rotate(session, token_hash, now)
        if current is None:
            current = await self._rotated_a_moment_ago(session, token_hash, now)
        if current.user_id != claims.user_id or current.family_id != claims.session_id:
            raise InvalidToken()
        return await self.issue_tokens(session, current.user_id, family_id=current.family_id)

    async def _rotated_a_moment_ago(
        self, session: AsyncSession, token_hash: str, now: datetime
    ) -> RefreshToken:
        """A token that is no longer live, presented again: if it was rotated within the grace,
        a client of the same login lost a race to refresh (several tabs or workers holding one
        token, a retry after a lost answer), so it gets a pair of that login too (RFC 9700
        section 4.14.2). Later, it was stolen or replayed: the whole login ends. A token whose
        login ended (logout, reuse) is never revived."""
        known = await repository.find_by_hash(session, token_hash, for_update=True)
        if known is None or known.revoked_at is not None or known.rotated_at is None:
            raise InvalidToken()  # unknown, ended, or expired while live
        grace = self.tokens.refresh_reuse_grace
        if grace and now - known.rotated_at < grace:
            if known.expires_at <= now:
                raise TokenExpired()
            return known
        await repository.revoke_family(session, known.family_id, now)
        raise RefreshTokenReused()

    async def logout(self, session: AsyncSession, user_id: int, refresh_token: str) -> None:
        """End the login a refresh token belongs to. Like RFC 7009 revocation, an unknown or
        foreign token is not an error: there is nothing the client could do about it."""
        known = await repository.find_by_hash(session, fingerprint_token(refresh_token))
        if known is not None and known.user_id == user_id:
            await repository.revoke_family(session, known.family_id, utcnow())

    async def current_principal(self, session: AsyncSession, claims: TokenClaims) -> Principal:
        return await self.live_principal(session, claims.user_id, claims.session_id)

    async def live_principal(
        self, session: AsyncSession, user_id: int, session_id: uuid.UUID
    ) -> Principal:
        """The user of a login that has not ended, from the database; else 401."""
        user = await repository.get_user_with_live_session(session, user_id, session_id)
        if user is None:
            raise InvalidToken()
        return Principal(user=user, session_id=session_id)


AUTH_SERVICE = ServiceKey[AuthService]("auth service")
