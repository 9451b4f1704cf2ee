"""Queries on users and refresh tokens used by authentication."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.auth.principal_cache import mark_principal_stale
from taskapi.models import RefreshToken, User


async def find_user_by_login(session: AsyncSession, identifier: str) -> User | None:
    key = identifier.strip().lower()
    if "\x00" in key:
        return None  # no account has it, and PostgreSQL text cannot hold U+0000 (an error, a 500)
    column = User.email if "@" in key else User.username
    return await session.scalar(select(User).where(func.lower(column) == key))


async def username_exists(session: AsyncSession, username: str) -> bool:
    query = select(exists().where(func.lower(User.username) == username.lower()))
    return bool(await session.scalar(query))


async def email_exists(
    session: AsyncSession, email: str, *, except_user_id: int | None = None
) -> bool:
    condition = func.lower(User.email) == email.lower()
    if except_user_id is not None:
        condition = condition & (User.id != except_user_id)
    return bool(await session.scalar(select(exists().where(condition))))


async def get_user_with_live_session(
    session: AsyncSession, user_id: int, session_id: uuid.UUID
) -> User | None:
    """The user behind an access token, provided its login has not been ended (logout, reuse,
    password change) — one round trip."""
    live = exists().where(
        RefreshToken.family_id == session_id,
        RefreshToken.user_id == User.id,
        RefreshToken.revoked_at.is_(None),
    )
    return await session.scalar(select(User).where(User.id == user_id, live))


async def rotate(session: AsyncSession, token_hash: str, now: datetime) -> RefreshToken | None:
    """Mark a live token rotated and return it; None if it was not live.

    A single conditional UPDATE: of two concurrent refreshes of one token, the second blocks on
    the row lock and then finds `rotated_at` set, so exactly one wins.
    """
    statement = (
        update(RefreshToken)
        .where(
            RefreshToken.token_hash == token_hash,
            RefreshToken.rotated_at.is_(None),
            RefreshToken.revoked_at.is_(None),
            RefreshToken.expires_at > now,
        )
        .values(rotated_at=now)
        .returning(RefreshToken)
    )
    return (await session.scalars(statement)).one_or_none()


async def find_by_hash(
    session: AsyncSession, token_hash: str, *, for_update: bool = False
) -> RefreshToken | None:
    """The token's row; `for_update` locks it until commit, so a revocation of its login waits
    for (or is seen by) whoever answers it within the reuse grace."""
    statement = select(RefreshToken).where(RefreshToken.token_hash == token_hash)
    if for_update:
        statement = statement.with_for_update()
    return await session.scalar(statement)


async def revoke_family(session: AsyncSession, family_id: uuid.UUID, now: datetime) -> None:
    # The login's rows locked first: a refresh of it under way holds one of them, so this waits
    # for its commit, and the UPDATE's snapshot (taken after) sees the token it issued: none
    # escapes the revocation, whether rotated or answered within the reuse grace.
    lock = select(RefreshToken.id).where(RefreshToken.family_id == family_id)
    await session.execute(lock.order_by(RefreshToken.id).with_for_update())
    owners = await session.scalars(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
        .returning(RefreshToken.user_id)
    )
    mark_principal_stale(session, *set(owners))


async def revoke_user_families(
    session: AsyncSession, user_id: int, now: datetime, *, keep: uuid.UUID | None = None
) -> None:
    condition = (RefreshToken.user_id == user_id) & RefreshToken.revoked_at.is_(None)
    if keep is not None:
        condition = condition & (RefreshToken.family_id != keep)
    await session.execute(update(RefreshToken).where(condition).values(revoked_at=now))
    mark_principal_stale(session, user_id)
