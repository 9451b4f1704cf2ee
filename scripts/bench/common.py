"""What the benchmark scripts of scripts/bench/ share: a free port, their own database's URL on
the server DATABASE_URL names, statements run on that server's `postgres` database, and a fresh
database migrated by `taskapi migrate`."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv the script runs in
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


class BenchError(RuntimeError):
    """The run cannot go on; the message says why."""


def fresh_database(database: str, env: Mapping[str, str]) -> None:
    """`database` dropped, then created and migrated by `taskapi migrate` (DATABASE_URL in
    `env` names it)."""
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    migrate = subprocess.run(  # noqa: S603 - our own venv's executable
        [str(BIN / "taskapi"), "migrate"],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
    )
    if migrate.returncode != 0:
        raise BenchError(f"taskapi migrate failed:\n{(migrate.stdout + migrate.stderr)[-3000:]}")
