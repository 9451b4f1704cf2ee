"""Create the database named in DATABASE_URL; say in one sentence when PostgreSQL is down."""

from __future__ import annotations

import asyncpg
from sqlalchemy.engine import make_url


class DatabaseUnreachable(RuntimeError):
    pass


def _asyncpg_dsn(database_url: str, database: str) -> str:
    url = make_url(database_url).set(drivername="postgresql", database=database)
    return url.render_as_string(hide_password=False)


async def ensure_database(database_url: str) -> str | None:
    """Create the database if it does not exist; return its name when it was created."""
    url = make_url(database_url)
    name = url.database
    if not name:
        raise DatabaseUnreachable("DATABASE_URL names no database.")
    where = f"{url.host or 'localhost'}:{url.port or 5432}"
    try:
        conn = await asyncpg.connect(_asyncpg_dsn(database_url, "postgres"), timeout=5)
    except (OSError, TimeoutError) as error:
        raise DatabaseUnreachable(
            f"PostgreSQL is not reachable at {where} ({type(error).__name__}: {error}); "
            "start it (e.g. `pg_ctlcluster --skip-systemctl-redirect 15 main start`) "
            "or set DATABASE_URL to a running server."
        ) from error
    except asyncpg.PostgresError as error:
        # The server is up but refused us (role, password, permissions): starting it won't help.
        raise DatabaseUnreachable(
            f"PostgreSQL at {where} refused the connection ({error}); "
            "check the user and password in DATABASE_URL."
        ) from error
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return None
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            await conn.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.DuplicateDatabaseError:
            return None  # created concurrently by another process
        return name
    finally:
        await conn.close()


async def schema_revisions(database_url: str) -> frozenset[str]:
    """The Alembic revisions the database is at: empty when it was never migrated."""
    url = make_url(database_url)
    try:
        conn = await asyncpg.connect(_asyncpg_dsn(database_url, url.database or ""), timeout=5)
    except (OSError, TimeoutError, asyncpg.PostgresError) as error:
        raise DatabaseUnreachable(f"{type(error).__name__}: {error}") from error
    try:
        rows = await conn.fetch("SELECT version_num FROM alembic_version")
    except asyncpg.UndefinedTableError:
        return frozenset()
    finally:
        await conn.close()
    return frozenset(row["version_num"] for row in rows)
