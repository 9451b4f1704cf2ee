"""Whether a database error means PostgreSQL is unreachable (a 503, retryable) or that a statement
failed (a bug, a 500): the rule the error handlers (taskapi.kit.errors) and the last-resort
middleware share."""

from __future__ import annotations

import asyncpg
from sqlalchemy import exc as sa_exc

# asyncpg errors meaning "no usable connection", as opposed to "this statement failed".
_ASYNCPG_UNAVAILABLE: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,  # 08xxx: the connection failed or is gone
    asyncpg.CannotConnectNowError,  # 57P03: starting up, shutting down, in recovery
    asyncpg.AdminShutdownError,  # 57P01: terminated by a fast shutdown or pg_terminate_backend
    asyncpg.CrashShutdownError,  # 57P02: another backend crashed, the server is resetting
    asyncpg.TooManyConnectionsError,  # 53300: max_connections reached
)


def is_database_unavailable(error: BaseException) -> bool:
    """Whether `error` means PostgreSQL cannot be reached or used right now (a 503, retryable),
    rather than that a statement failed (a bug, a 500).

    Raw OSError/TimeoutError from connecting arrive here as OperationalError (db.py converts
    them where their origin is known); looking at every OSError here would also catch storage's.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sa_exc.TimeoutError):  # pool checkout timed out
            return True
        if isinstance(current, sa_exc.OperationalError | sa_exc.InterfaceError):
            return True
        if isinstance(current, _ASYNCPG_UNAVAILABLE):
            return True
        if isinstance(current, TimeoutError) and _raised_by_driver(current):
            # asyncpg's command_timeout (a frozen server), bare even through pool pre-ping.
            return True
        # SQLAlchemy keeps the driver's error in `orig`, whose cause is asyncpg's own.
        orig = current.orig if isinstance(current, sa_exc.DBAPIError) else None
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return False


def _raised_by_driver(error: BaseException) -> bool:
    traceback = error.__traceback__
    while traceback is not None:
        module = traceback.tb_frame.f_globals.get("__name__", "")
        if module.startswith(("asyncpg", "sqlalchemy")):
            return True
        traceback = traceback.tb_next
    return False
