"""Refresh-token helpers shared by tests/api/test_auth.py and test_refresh_grace.py."""

from __future__ import annotations

from datetime import timedelta

from fastapi import FastAPI
from sqlalchemy import update

from taskapi.kit.security import fingerprint_token
from taskapi.kit.services import services_of
from taskapi.models import RefreshToken


async def past_the_grace(app: FastAPI, user_id: int, token: str | None = None) -> None:
    """As if REFRESH_REUSE_GRACE_SECONDS had passed since each of the user's rotations (or only
    `token`'s): their recorded times moved back, so a replay from now on is reuse, with no
    waiting out the grace."""
    grace = timedelta(seconds=services_of(app).settings.refresh_reuse_grace_seconds + 1)
    condition = (RefreshToken.user_id == user_id) & RefreshToken.rotated_at.is_not(None)
    if token is not None:
        condition &= RefreshToken.token_hash == fingerprint_token(token)
    async with services_of(app).sessionmaker() as session:
        await session.execute(
            update(RefreshToken).where(condition).values(rotated_at=RefreshToken.rotated_at - grace)
        )
        await session.commit()
