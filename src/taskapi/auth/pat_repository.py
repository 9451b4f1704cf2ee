"""Queries on personal access tokens."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import BigInteger, DateTime, bindparam, delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from taskapi.auth.principal_cache import mark_principal_stale
from taskapi.models import PersonalAccessToken, User


def _live(now: datetime) -> ColumnElement[bool]:
    return or_(PersonalAccessToken.expires_at.is_(None), PersonalAccessToken.expires_at > now)


async def find_by_hash(session: AsyncSession, token_hash: bytes) -> PersonalAccessToken | None:
    """The token (expired or not: the caller tells the two apart)."""
    return await session.scalar(
        select(PersonalAccessToken).where(PersonalAccessToken.token_hash == token_hash)
    )


async def user_with_live_token(
    session: AsyncSession, user_id: int, token_id: int, now: datetime
) -> User | None:
    """The user behind a personal access token, provided the token still exists (not revoked)
    and has not expired — one round trip."""
    live = (
        select(PersonalAccessToken.id)
        .where(
            PersonalAccessToken.id == token_id,
            PersonalAccessToken.user_id == User.id,
            _live(now),
        )
        .exists()
    )
    return await session.scalar(select(User).where(User.id == user_id, live))


async def lock_owner(session: AsyncSession, user_id: int) -> None:
    """Serialise one user's token creations, so two at once cannot pass the limit together (FOR
    NO KEY UPDATE: the foreign-key checks of their other writes are not blocked)."""
    await session.execute(select(User.id).where(User.id == user_id).with_for_update(key_share=True))


async def count_of(session: AsyncSession, user_id: int) -> int:
    query = select(func.count()).where(PersonalAccessToken.user_id == user_id)
    return int(await session.scalar(query) or 0)


async def list_of(session: AsyncSession, user_id: int) -> Sequence[PersonalAccessToken]:
    query = (
        select(PersonalAccessToken)
        .where(PersonalAccessToken.user_id == user_id)
        .order_by(PersonalAccessToken.id)
    )
    return (await session.scalars(query)).all()


async def revoke(session: AsyncSession, user_id: int, token_id: int) -> bool:
    """Delete the token (a revoked token has nothing left worth keeping); its cached principals
    are dropped right after the commit, so every process refuses it on its next request."""
    deleted = await session.scalar(
        delete(PersonalAccessToken)
        .where(PersonalAccessToken.id == token_id, PersonalAccessToken.user_id == user_id)
        .returning(PersonalAccessToken.id)
    )
    if deleted is None:
        return False
    mark_principal_stale(session, user_id)
    return True


async def record_last_used(session: AsyncSession, last_used: Mapping[int, datetime]) -> None:
    """One statement for every token used since the last flush; never moves a time backwards
    (another process may have written a later one)."""
    if not last_used:
        return
    ids = list(last_used)
    times = [last_used[token_id] for token_id in ids]
    used = select(
        func.unnest(bindparam("ids", ids, type_=ARRAY(BigInteger))).label("id"),
        func.unnest(bindparam("times", times, type_=ARRAY(DateTime(timezone=True)))).label("at"),
    ).subquery()
    await session.execute(
        update(PersonalAccessToken)
        .where(
            PersonalAccessToken.id == used.c.id,
            or_(
                PersonalAccessToken.last_used_at.is_(None),
                PersonalAccessToken.last_used_at < used.c.at,
            ),
        )
        .values(last_used_at=used.c.at)
        .execution_options(synchronize_session=False)
    )
