"""The async engine, the session per request and the declarative base.

One engine per process, created in the application's lifespan; one `AsyncSession` per request
whose only commit point is in `get_session`, after the handler returns and before the response
is sent (FastAPI's `scope="function"` for dependencies with yield).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, Request
from sqlalchemy import ClauseElement, MetaData, event
from sqlalchemy.dialects.postgresql import asyncpg as postgresql_asyncpg
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import ConnectionPoolEntry, Pool
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.util import greenlet_spawn

from taskapi.kit.config import Settings
from taskapi.kit.errors import AppError
from taskapi.kit.services import AfterCommitHook, services_of

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
        # Not pool_pre_ping: it costs a round trip on every checkout. `_ConnectionChecks` pings
        # only connections that sat idle, the ones a restart or a dropped link may have killed.
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
                # No JIT compilation: it pays off in queries that run for seconds, and this API's
                # run for milliseconds. PostgreSQL compiles any statement whose estimated cost
                # passes jit_above_cost, and an estimate that grows with the table (an array of
                # unknown length is taken as 10 elements) put a 2 ms search over it at 5M tasks:
                # 150-500 ms of compiling each time.
                "jit": "off",
            },
        },
    }


_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def _without_tls_negotiation(url: URL) -> bool:
    """asyncpg's default (`prefer`) first asks every new connection for TLS, creating an SSL
    context each time, and silently continues without it if refused: on loopback that costs a
    connection time and protects nothing. Any ssl/sslmode the URL sets is left alone."""
    return url.host in _LOOPBACK_HOSTS and not ({"ssl", "sslmode"} & set(url.query))


def create_engine(settings: Settings, **overrides: Any) -> AsyncEngine:
    options = engine_options(settings)
    url = make_url(settings.database_url)
    if _without_tls_negotiation(url):
        options["connect_args"]["ssl"] = False
    options.update(overrides)
    if overrides.get("poolclass") is not None:
        # Pool sizing only applies to the default QueuePool.
        for key in ("pool_size", "max_overflow", "pool_timeout"):
            options.pop(key, None)
    engine = create_async_engine(url, **options)
    event.listen(engine.sync_engine, "do_connect", _connect)
    event.listen(engine.sync_engine, "handle_error", _drop_timed_out_connection)
    _ConnectionChecks().listen(engine.sync_engine.pool)
    return engine


def read_only_engine(engine: AsyncEngine) -> AsyncEngine:
    """The same pool in autocommit: a read sends no BEGIN and no COMMIT (two round trips of the
    three a one-query request would otherwise make). Each statement sees its own snapshot, so
    a read that needs one consistent view must be a single statement (as the list page is)."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


# A connection used within this many seconds is taken as alive; one idle longer is pinged first.
# A server restart inside the window costs the next request on that connection a 503 (the
# connection found dead retires every connection opened before it, so only one).
PING_AFTER_IDLE_SECONDS = 2.0
_CONNECTED_AT = "taskapi.connected_at"
_CHECKED_IN_AT = "taskapi.checked_in_at"


class _ConnectionChecks:
    """What the pool checks before it hands out a connection, through its public events.

    A connection that `_fetch` finds dead (statements there bypass SQLAlchemy's own error
    handling) most likely died with the server, and with it every connection opened before it:
    those are replaced at their next checkout, as SQLAlchemy does for a disconnect it sees itself.
    Otherwise each pooled connection would cost a request of its own after a restart.
    """

    def __init__(self) -> None:
        # When the newest connection found dead was found; nothing opened earlier is trusted.
        self._lost_at = float("-inf")

    def listen(self, pool: Pool) -> None:
        event.listen(pool, "connect", self._connected)
        event.listen(pool, "checkin", self._checked_in)
        event.listen(pool, "invalidate", self._discarded)
        event.listen(pool, "checkout", self._vet)

    @staticmethod
    def _connected(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_CONNECTED_AT] = time.monotonic()

    @staticmethod
    def _checked_in(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_CHECKED_IN_AT] = time.monotonic()

    def _discarded(
        self, _dbapi_connection: Any, record: ConnectionPoolEntry, error: BaseException | None
    ) -> None:
        # Only a connection of the current generation starts a new one: an older one was going
        # to be replaced anyway, and must not retire connections opened since.
        if isinstance(error, _ConnectionLost) and self._opened_since_last_loss(record):
            self._lost_at = time.monotonic()

    def _opened_since_last_loss(self, record: ConnectionPoolEntry) -> bool:
        return bool(record.info.get(_CONNECTED_AT, float("inf")) > self._lost_at)

    def _vet(self, dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        # Raising DisconnectionError here makes the pool discard this connection and check out
        # a new one in its place (PoolEvents.checkout).
        if not self._opened_since_last_loss(record):
            raise DisconnectionError("opened before a connection was found dead")
        checked_in_at = record.info.get(_CHECKED_IN_AT)
        if checked_in_at is None or time.monotonic() - checked_in_at < PING_AFTER_IDLE_SECONDS:
            return  # brand new, or in use a moment ago
        try:
            dbapi_connection.ping()
        except Exception as error:
            raise DisconnectionError(f"idle connection failed its ping: {error}") from error


async def fetch_direct(
    connection: AsyncConnection, sql: str, arguments: Sequence[Any]
) -> list[Any]:
    """Run one compiled statement on the asyncpg connection under `connection` (inside its
    transaction, if any), skipping SQLAlchemy's per-execution work; see `_fetch`."""
    raw = await connection.get_raw_connection()
    try:
        return await _fetch(raw, sql, arguments)
    except _ConnectionLost as lost:
        await connection.invalidate(lost)
        raise lost.as_operational_error(sql) from lost.error


async def fetch_borrowed(engine: AsyncEngine, sql: str, arguments: Sequence[Any]) -> list[Any]:
    """Run one compiled statement on a connection borrowed from the pool for it alone (no
    transaction: asyncpg autocommits), without a Connection or Session around it."""
    dbapi: Any = engine.dialect.loaded_dbapi
    try:
        raw = await engine.raw_connection()
    except dbapi.Error as error:
        # Unlike Connection.connect(), the raw checkout leaves the driver's error unwrapped:
        # wrap it as SQLAlchemy would, so an unreachable server is recognised (a 503).
        raise DBAPIError.instance(None, None, error, dbapi.Error) from error
    try:
        return await _fetch(raw, sql, arguments)
    except _ConnectionLost as lost:
        await greenlet_spawn(raw.invalidate, lost)
        raise lost.as_operational_error(sql) from lost.error
    finally:
        # Checking in may close the connection (an overflow one, an invalidated one): I/O,
        # so inside a greenlet like every other SQLAlchemy call that may wait.
        await greenlet_spawn(raw.close)


class _ConnectionLost(Exception):
    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error

    def as_operational_error(self, sql: str) -> OperationalError:
        return OperationalError(sql, None, self.error)


async def _fetch(raw: Any, sql: str, arguments: Sequence[Any]) -> list[Any]:
    """SQLAlchemy's error handling, redone for what matters here: a connection found dead or
    timed out becomes `_ConnectionLost`, for the caller to invalidate it (which retires its
    generation, see `_ConnectionChecks`) and answer with the outage (a 503): never a 500, never
    a dead connection back in the pool."""
    driver: Any = raw.driver_connection
    try:
        records: list[Any] = await driver.fetch(sql, *arguments)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        lost = driver.is_closed() or isinstance(
            error, OSError | TimeoutError | asyncpg.PostgresConnectionError
        )
        if not lost:
            raise
        raise _ConnectionLost(error) from error
    return records


_DIALECT = postgresql_asyncpg.dialect()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class CompiledQuery:
    """SQL text with $n placeholders and how to fill them, compiled once and run directly on the
    asyncpg connection: SQLAlchemy's per-execution work (compile-cache lookup, result
    processing) costs more than PostgreSQL spends on a page."""

    sql: str
    names: tuple[str, ...]  # the parameter behind each $n
    constants: dict[str, Any]  # values fixed in the statement (enum literals)

    @classmethod
    def of(cls, statement: ClauseElement) -> CompiledQuery:
        compiled = statement.compile(dialect=_DIALECT)
        assert isinstance(compiled, SQLCompiler)
        names = tuple(compiled.positiontup or ())
        constants = {
            name: compiled.binds[name].effective_value
            for name in names
            if not compiled.binds[name].required
        }
        return cls(compiled.string, names, constants)

    def arguments(self, values: dict[str, Any]) -> list[Any]:
        return [values[name] if name in values else self.constants[name] for name in self.names]

    async def fetch(self, session: AsyncSession, values: dict[str, Any]) -> list[Any]:
        bind = session.bind
        if isinstance(bind, AsyncEngine) and not session.in_transaction():
            # One statement needs no transaction: borrow a pooled connection for it alone,
            # without the session's bookkeeping.
            return await fetch_borrowed(bind, self.sql, self.arguments(values))
        # Inside the session's transaction (or the tests' rolled-back connection).
        return await fetch_direct(await session.connection(), self.sql, self.arguments(values))


def _drop_timed_out_connection(context: Any) -> None:
    """A statement that hit asyncpg's command_timeout leaves its connection in an unknown state:
    treat it as a disconnect so the pool replaces it instead of handing it out again."""
    if isinstance(context.original_exception, TimeoutError):
        context.is_disconnect = True


def _connect(dialect: Dialect, _record: Any, cargs: Any, cparams: Any) -> Any:
    """Connect as SQLAlchemy would, but fail with a DBAPI OperationalError.

    asyncpg raises a refused or timed-out connection as a bare OSError/TimeoutError, which
    SQLAlchemy passes through unwrapped; as an OperationalError it is recognisably the database's
    (db_errors.is_database_unavailable: a 503), not any other OSError (a 500).
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


_ON_ROLLBACK = "taskapi.on_rollback"


def on_rollback(session: AsyncSession, undo: Callable[[], Awaitable[None]]) -> None:
    """Undo an outside effect (a stored object) if this request's transaction does not commit."""
    session.info.setdefault(_ON_ROLLBACK, []).append(undo)


async def _undo(session: AsyncSession) -> None:
    for undo in session.info.pop(_ON_ROLLBACK, []):
        await undo()


def _has_work(session: AsyncSession) -> bool:
    # A request that never touched the database (a cached read) skips the commit's machinery.
    return session.in_transaction() or bool(session.new or session.dirty or session.deleted)


async def _commit(session: AsyncSession, hooks: list[AfterCommitHook]) -> None:
    try:
        if _has_work(session):
            await session.commit()
    except BaseException:
        await _undo(session)
        raise
    session.info.pop(_ON_ROLLBACK, None)
    # Side effects that must follow the commit (cache invalidation) run before the response is
    # sent, so the client's next read already sees them.
    for hook in hooks:
        await hook(session.info)


READ_METHODS = frozenset({"GET", "HEAD"})


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    services = services_of(request.app)
    sessionmaker = (
        services.read_sessionmaker if request.method in READ_METHODS else services.sessionmaker
    )
    hooks = services.after_commit
    session = sessionmaker()
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
    finally:
        if _was_used(session):
            await session.close()


def _was_used(session: AsyncSession) -> bool:
    """Whether closing `session` has anything to release. Most reads never touch it (their one
    statement borrows a pooled connection directly, or the answer is cached), and closing an
    untouched session still costs a greenlet switch per request."""
    sync = session.sync_session
    return sync.in_transaction() or bool(sync.identity_map) or bool(sync.new or sync.deleted)


DbSession = Annotated[AsyncSession, Depends(get_session, scope="function")]
