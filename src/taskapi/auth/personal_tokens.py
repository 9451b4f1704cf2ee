"""Personal access tokens: creating, listing and revoking them, and recognising one on a request.

A request's token is recognised in two steps. Its identity (whose it is, its scopes, its expiry)
never changes, so each process keeps it after the first database lookup, by the token's keyed
hash. Whether it is still alive (not revoked) is the principal cache's business, as for a login:
revoking bumps the user's generation after the commit, so the next request on any process finds
no cached principal, asks the database, and is refused.

`last_used_at` is not written per request: each process records uses in memory and writes them
all in one statement every `LAST_USED_FLUSH_SECONDS`, before listing tokens (so a single process
shows them exactly) and on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskapi.auth import pat_repository
from taskapi.auth.schemas import MAX_TOKENS_PER_USER, PersonalTokenCreate
from taskapi.kit.errors import InvalidToken, TokenExpired
from taskapi.kit.security import (
    PersonalTokenHasher,
    new_personal_token,
    well_formed_personal_token,
)
from taskapi.kit.services import ServiceKey
from taskapi.kit.token_errors import TokenLimitReached, TokenNotFound
from taskapi.models import PersonalAccessToken, User

logger = logging.getLogger("taskapi.auth")

LAST_USED_FLUSH_SECONDS = 30.0
_IDENTITIES_MAX = 4096


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class TokenIdentity:
    """What never changes about a token: whose it is, what it may do, until when."""

    digest: bytes
    token_id: int
    user_id: int
    scopes: frozenset[str]
    expires_at: datetime | None

    @property
    def login_key(self) -> str:
        """Its key in the principal cache, beside the logins' session ids."""
        return f"pat{self.token_id}"


class PersonalTokens:
    def __init__(
        self, signing_key: str, sessionmaker: Callable[[], async_sessionmaker[AsyncSession]]
    ) -> None:
        self.hasher = PersonalTokenHasher(signing_key)
        # Asked for each time: the process's session maker (tests bind it to their transaction).
        self._sessionmaker = sessionmaker
        self._identities: OrderedDict[bytes, TokenIdentity] = OrderedDict()
        self._used: dict[int, datetime] = {}
        self._wake = asyncio.Event()
        self._stopping = False

    # --- recognising a token -------------------------------------------------------------

    async def identify(self, session: AsyncSession, token: str) -> TokenIdentity:
        """The token's identity; 401 for a malformed, unknown, revoked or expired one."""
        if not well_formed_personal_token(token):
            raise InvalidToken()
        digest = self.hasher.digest(token)
        now = utcnow()
        identity = self._identities.get(digest)
        if identity is None:
            row = await pat_repository.find_by_hash(session, digest)
            if row is None:
                raise InvalidToken()
            identity = TokenIdentity(
                digest, row.id, row.user_id, frozenset(row.scopes), row.expires_at
            )
            self._identities[digest] = identity
            if len(self._identities) > _IDENTITIES_MAX:
                self._identities.popitem(last=False)
        if identity.expires_at is not None and identity.expires_at <= now:
            self._identities.pop(digest, None)
            raise TokenExpired()
        return identity

    async def load_user(self, session: AsyncSession, identity: TokenIdentity) -> User:
        """The token's user from the database, if the token is still alive."""
        user = await pat_repository.user_with_live_token(
            session, identity.user_id, identity.token_id, utcnow()
        )
        if user is None:
            self._identities.pop(identity.digest, None)
            raise InvalidToken()
        return user

    async def user_id_of(self, token: str) -> int | None:
        """Whose live token this is, straight from the database (no cache); None if it is not a
        live token. For the idempotency middleware, which scopes stored responses by user."""
        if not well_formed_personal_token(token):
            return None
        async with self._sessionmaker()() as session:
            row = await pat_repository.find_by_hash(session, self.hasher.digest(token))
        if row is None or (row.expires_at is not None and row.expires_at <= utcnow()):
            return None
        return row.user_id

    # --- last_used_at, batched -----------------------------------------------------------

    def note_use(self, token_id: int) -> None:
        self._used[token_id] = utcnow()

    async def flush(self) -> None:
        if not self._used:
            return
        used, self._used = self._used, {}
        try:
            async with self._sessionmaker()() as session, session.begin():
                await pat_repository.record_last_used(session, used)
        except (SQLAlchemyError, OSError):
            logger.warning("could not record personal access token use", exc_info=True)
            for token_id, at in used.items():  # kept for the next flush, unless newer arrived
                self._used.setdefault(token_id, at)
            return

    async def run(self) -> None:
        """Flush recorded uses until `stop()`; then a last time."""
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LAST_USED_FLUSH_SECONDS):
                    await self._wake.wait()
            self._wake.clear()
            await self.flush()
        await self.flush()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    # --- managing tokens (logins only: see taskapi.auth.tokens_router) --------------------

    async def create(
        self, session: AsyncSession, user: User, data: PersonalTokenCreate
    ) -> tuple[PersonalAccessToken, str]:
        """The new token's row and the token itself (shown once, stored only as its hash)."""
        await pat_repository.lock_owner(session, user.id)
        if await pat_repository.count_of(session, user.id) >= MAX_TOKENS_PER_USER:
            raise TokenLimitReached()
        token = new_personal_token()
        expires_at = None
        if data.expires_in_days is not None:
            expires_at = utcnow() + timedelta(days=data.expires_in_days)
        row = PersonalAccessToken(
            user_id=user.id,
            name=data.name,
            scopes=[str(scope) for scope in data.scopes],
            token_hash=self.hasher.digest(token),
            expires_at=expires_at,
        )
        session.add(row)
        await session.flush()
        return row, token

    async def list_of(self, session: AsyncSession, user: User) -> list[PersonalAccessToken]:
        await self.flush()  # this process's recent uses are shown
        return list(await pat_repository.list_of(session, user.id))

    async def revoke(self, session: AsyncSession, user: User, token_id: int) -> None:
        if not await pat_repository.revoke(session, user.id, token_id):
            raise TokenNotFound()


PERSONAL_TOKENS = ServiceKey[PersonalTokens]("personal access tokens")
