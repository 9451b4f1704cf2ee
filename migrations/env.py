"""Alembic environment, async (asyncpg). The URL comes from taskapi's settings unless the caller
passes one in `config.attributes["database_url"]` (the CLI and the tests do)."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from taskapi import models  # noqa: F401  (registers every table on the metadata)
from taskapi.kit.config import Settings
from taskapi.kit.db import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _database_url() -> str:
    url = config.attributes.get("database_url")
    return str(url) if url else Settings().database_url


def _configure(connection: Connection | None = None, **kwargs: object) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        compare_server_default=True,
        **kwargs,  # type: ignore[arg-type]
    )


def run_migrations_offline() -> None:
    _configure(url=_database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    # Honour DATABASE_STATEMENT_CACHE_SIZE=0, so migrations also run through pgbouncer in
    # transaction mode, where asyncpg's prepared statements would break.
    cache_size = Settings().database_statement_cache_size
    engine = create_async_engine(
        _database_url(),
        poolclass=pool.NullPool,
        connect_args={"prepared_statement_cache_size": cache_size},
    )
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
