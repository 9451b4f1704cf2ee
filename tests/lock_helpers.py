"""Waiting for a transaction of an app's database to block on a lock: how the race tests put two
requests in a chosen order without sleeping a guessed while."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from sqlalchemy import text

from taskapi.kit.services import services_of

_WAITING = text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
    "AND wait_event_type = 'Lock' AND strpos(query, :fragment) > 0"
)


async def until_waiting(app: FastAPI, fragment: str = "", count: int = 1) -> None:
    """Until `count` transactions of the app's database wait for a lock in statements
    containing `fragment` (by default any statement)."""
    for _ in range(500):
        async with services_of(app).sessionmaker() as session:
            if await session.scalar(_WAITING, {"fragment": fragment}) >= count:
                return
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {count} wait in {fragment!r}")
