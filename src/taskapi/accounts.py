"""Operator commands on accounts (`taskapi create-user`), sharing the API's validation and
AuthService.register so an account made here is indistinguishable from a registered one."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

from taskapi.auth.schemas import RegisterIn
from taskapi.auth.service import AuthService
from taskapi.kit.config import Settings
from taskapi.kit.db import create_engine, create_sessionmaker
from taskapi.kit.errors import AppError
from taskapi.kit.security import PasswordHashing, TokenCodec


class CommandError(RuntimeError):
    """A refusal meant for the operator: one sentence, no traceback."""


def describe_validation_error(error: ValidationError) -> str:
    """Pydantic's report folded into one line: `field: problem; field: problem`."""
    parts = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "input"
        parts.append(f"{field}: {item['msg'].rstrip('.')}")
    return "; ".join(parts)


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """An engine for one command; connection and schema problems become one sentence."""
    url = make_url(settings.database_url)
    where = f"{url.host or 'localhost'}:{url.port or 5432}/{url.database}"
    # One connection is all a command needs; the API's pool sizes would only hold sockets open.
    engine = create_engine(settings, pool_size=2, max_overflow=0)
    try:
        yield engine
    except (OSError, TimeoutError, OperationalError, InterfaceError) as error:
        raise CommandError(
            f"PostgreSQL is not reachable at {where} ({type(error).__name__}); "
            "start it or set DATABASE_URL to a running server."
        ) from error
    except ProgrammingError as error:
        if "does not exist" in str(error.orig):
            raise CommandError(
                f"The database at {where} has no schema yet: run `taskapi migrate` first."
            ) from error
        raise
    except DBAPIError as error:
        if "does not exist" in str(error.orig):
            raise CommandError(
                f"The database at {where} does not exist: run `taskapi migrate` first."
            ) from error
        raise
    finally:
        await engine.dispose()


@dataclass(frozen=True, slots=True)
class CreatedUser:
    id: int
    username: str
    email: str


async def create_user(
    settings: Settings, username: str, email: str, password: str, full_name: str | None
) -> CreatedUser:
    try:
        data = RegisterIn(username=username, email=email, password=password, full_name=full_name)
    except ValidationError as error:
        raise CommandError(f"Invalid input: {describe_validation_error(error)}.") from error
    hashing = PasswordHashing(settings)
    try:
        async with database(settings) as engine, create_sessionmaker(engine)() as session:
            service = AuthService(hashing, TokenCodec(settings))
            try:
                user = await service.register(session, data)
            except AppError as error:
                # UsernameTaken / EmailTaken: the same sentence the API sends as `detail`.
                raise CommandError(error.detail) from error
            await session.commit()
            return CreatedUser(user.id, user.username, user.email)
    finally:
        hashing.close()
