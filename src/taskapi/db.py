"""The async engine, the session per request and the declarative base.

One engine per process, created in the application's lifespan; one `AsyncSession` per request
whose only commit point is in `get_session`, after the handler returns and before the response
is sent (FastAPI's `scope="function"` for dependencies with yield).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import MetaData, event
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

from taskapi.config import Settings
from taskapi.errors import AppError

# Stable constraint names, so migrations can name what they drop and errors can be mapped by name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def engine_options(settings: Settings) -> dict[str, Any]:
    return {
        "pool_size": settings.database_pool_size,
        "max_overflow": settings.database_max_overflow,
        "pool_timeout": settings.database_pool_timeout_seconds,
        "pool_pre_ping": True,
        "connect_args": {
            "timeout": settings.database_connect_timeout_seconds,
            # A client-side bound too: statement_timeout is enforced by the server, which cannot
            # enforce anything while it is frozen (or the network black-holes).
            "command_timeout": settings.database_statement_timeout_ms / 1000 + 1,
            "prepared_statement_cache_size": settings.database_statement_cache_size,
            "server_settings": {
                "application_name": "taskapi",
                # Dates such as "today" for overdue checks are UTC, whatever the server's zone.
                "timezone": "UTC",
                "statement_timeout": str(settings.database_statement_timeout_ms),
            },
        },
    }


def create_engine(settings: Settings, **overrides: Any) -> AsyncEngine:
    options = engine_options(settings)
    options.update(overrides)
    if overrides.get("poolclass") is not None:
        # Pool sizing only applies to the default QueuePool.
        for key in ("pool_size", "max_overflow", "pool_timeout"):
            options.pop(key, None)
    engine = create_async_engine(make_url(settings.database_url), **options)
    event.listen(engine.sync_engine, "do_connect", _connect)
    event.listen(engine.sync_engine, "handle_error", _drop_timed_out_connection)
    return engine


def _drop_timed_out_connection(context: Any) -> None:
    """A statement that hit asyncpg's command_timeout leaves its connection in an unknown state:
    treat it as a disconnect so the pool replaces it instead of handing it out again."""
    if isinstance(context.original_exception, TimeoutError):
        context.is_disconnect = True


def _connect(dialect: Dialect, _record: Any, cargs: Any, cparams: Any) -> Any:
    """Connect as SQLAlchemy would, but fail with a DBAPI OperationalError.

    asyncpg raises a refused or timed-out connection as a bare OSError/TimeoutError, which
    SQLAlchemy passes through unwrapped; as an OperationalError it is recognisably the database's
    (errors.is_database_unavailable: a 503), not any other OSError (a 500).
    """
    try:
        return dialect.connect(*cargs, **cparams)
    except (OSError, TimeoutError) as error:
        dbapi: Any = dialect.loaded_dbapi
        raise dbapi.OperationalError(
            f"could not connect to PostgreSQL: {type(error).__name__}: {error}"
        ) from error


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # expire_on_commit=False: objects stay readable after the commit point without another query.
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


AfterCommitHook = Callable[[dict[str, Any]], Awaitable[None]]
_ON_ROLLBACK = "taskapi.on_rollback"


def on_rollback(session: AsyncSession, undo: Callable[[], Awaitable[None]]) -> None:
    """Undo an outside effect (a stored object) if this request's transaction does not commit."""
    session.info.setdefault(_ON_ROLLBACK, []).append(undo)


async def _undo(session: AsyncSession) -> None:
    for undo in session.info.pop(_ON_ROLLBACK, []):
        await undo()


async def _commit(session: AsyncSession, hooks: list[AfterCommitHook]) -> None:
    try:
        await session.commit()
    except BaseException:
        await _undo(session)
        raise
    session.info.pop(_ON_ROLLBACK, None)
    # Side effects that must follow the commit (cache invalidation) run before the response is
    # sent, so the client's next read already sees them.
    for hook in hooks:
        await hook(session.info)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.sessionmaker
    hooks: list[AfterCommitHook] = getattr(request.app.state, "after_commit", [])
    async with sessionmaker() as session:
        try:
            yield session
        except AppError as error:
            if error.commit_transaction:
                await _commit(session, hooks)
            else:
                await session.rollback()
                await _undo(session)
            raise
        except BaseException:
            await session.rollback()
            await _undo(session)
            raise
        else:
            await _commit(session, hooks)


DbSession = Annotated[AsyncSession, Depends(get_session, scope="function")]
