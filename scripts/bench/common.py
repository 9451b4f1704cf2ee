"""What the benchmark scripts of scripts/bench/ share: a free port, their own database's URL on
the server DATABASE_URL names, and statements run on that server's `postgres` database."""

from __future__ import annotations

import os
import socket

import asyncpg
from sqlalchemy.engine import make_url

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/taskapi"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def database_url(database: str) -> str:
    """`database` on the server of DATABASE_URL (or the local default), for SQLAlchemy."""
    url = make_url(os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL)
    return url.set(drivername="postgresql+asyncpg", database=database).render_as_string(
        hide_password=False
    )


async def admin(statement: str) -> None:
    """One statement on the server's `postgres` database (creating or dropping ours)."""
    url = make_url(database_url("postgres")).set(drivername="postgresql")
    conn = await asyncpg.connect(url.render_as_string(hide_password=False), timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()
