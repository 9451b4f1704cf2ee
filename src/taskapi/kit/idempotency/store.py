"""The keys in PostgreSQL (`idempotency_keys`), shared by every process and replica.

A key is claimed before its request runs (in a short transaction of its own, committed before
the request runs, so a concurrent duplicate sees it), completed with the response or released
when there is nothing to replay, and purged by `expire_keys` once past its 24 hours.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import LargeBinary, bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskapi.kit.errors import ServiceUnavailable

TTL = timedelta(hours=24)
# A claim not renewed for this long belongs to a process that died; a retry may take it over.
# Running requests renew it every third of it, so a slow upload is never taken over.
LEASE = timedelta(seconds=60)
# Expired keys are deleted this many at a time, each batch in its own transaction: one sweep
# after a long pause never holds a huge delete (and its locks) at once.
EXPIRE_BATCH = 5000


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A key someone else holds: claimed by a request still running, or completed."""

    fingerprint: str
    state: str
    status: int | None
    headers: list[list[str]] | None
    body: bytes | None  # sealed


_CLAIM = text(
    """
    INSERT INTO idempotency_keys AS k
        (scope, key, fingerprint, state, locked_until, created_at, expires_at)
    VALUES (:scope, :key, :fingerprint, 'in_progress',
            now() + make_interval(secs => :lease), clock_timestamp(),
            now() + make_interval(secs => :ttl))
    ON CONFLICT (scope, key) DO UPDATE
    SET fingerprint = EXCLUDED.fingerprint, state = 'in_progress',
        locked_until = EXCLUDED.locked_until, response_status = NULL,
        response_headers = NULL, response_body = NULL,
        created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at
    WHERE k.expires_at <= now()
       OR (k.state = 'in_progress' AND k.locked_until <= now()
           AND k.fingerprint = EXCLUDED.fingerprint)
    RETURNING k.created_at
    """
)
_EXISTING = text(
    """
    SELECT fingerprint, state, response_status, response_headers, response_body
    FROM idempotency_keys WHERE scope = :scope AND key = :key
    """
)
# `created_at` is set from clock_timestamp() by each claim, so it identifies the claim: a
# request whose claim was taken over can no longer store or release anything.
_OWNED = "scope = :scope AND key = :key AND created_at = :claimed AND state = 'in_progress'"
_COMPLETE = text(
    f"""
    UPDATE idempotency_keys
    SET state = 'completed', locked_until = NULL, response_status = :status,
        response_headers = :headers, response_body = :body
    WHERE {_OWNED}
    """  # noqa: S608  (a constant, no input)
).bindparams(bindparam("headers", type_=JSONB), bindparam("body", type_=LargeBinary))
_RELEASE = text(f"DELETE FROM idempotency_keys WHERE {_OWNED}")  # noqa: S608
_RENEW = text(
    f"UPDATE idempotency_keys SET locked_until = now() + make_interval(secs => :lease) "  # noqa: S608
    f"WHERE {_OWNED}"
)
_EXPIRE = text(
    """
    DELETE FROM idempotency_keys WHERE id IN (
        SELECT id FROM idempotency_keys WHERE expires_at <= :now LIMIT :batch
    )
    """
)


class KeyStore:
    """The statements on one caller's key, each in its own short transaction."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], scope: str, key: str):
        self._sessionmaker = sessionmaker
        self._params: dict[str, Any] = {"scope": scope, "key": key}

    async def _run(self, statement: Any, **params: Any) -> Any:
        async with self._sessionmaker() as session:
            result = await session.execute(statement, {**self._params, **params})
            await session.commit()
            return result

    async def claim(self, fingerprint: str) -> datetime | StoredKey:
        """The new claim (its `created_at`, which identifies it), or the key as someone else
        holds it."""
        # A row deleted between the INSERT and the SELECT (released by a failing request) is
        # simply claimed on the next turn.
        for _ in range(3):
            claimed = (
                await self._run(
                    _CLAIM,
                    fingerprint=fingerprint,
                    lease=LEASE.total_seconds(),
                    ttl=TTL.total_seconds(),
                )
            ).scalar_one_or_none()
            if claimed is not None:
                return claimed  # type: ignore[no-any-return]
            row = (await self._run(_EXISTING)).one_or_none()
            if row is not None:
                return StoredKey(*row)
        raise ServiceUnavailable("The idempotency key could not be claimed; try again.")

    async def complete(
        self, claimed: datetime, status: int, headers: list[list[str]], body: bytes
    ) -> None:
        await self._run(_COMPLETE, claimed=claimed, status=status, headers=headers, body=body)

    async def release(self, claimed: datetime) -> None:
        await self._run(_RELEASE, claimed=claimed)

    async def renew(self, claimed: datetime) -> None:
        await self._run(_RENEW, claimed=claimed, lease=LEASE.total_seconds())


async def expire_keys(session: AsyncSession, now: datetime) -> int:
    """Delete the keys that expired by `now` (they no longer replay anyway), committing every
    EXPIRE_BATCH of them; returns how many were deleted."""
    removed = 0
    while True:
        result = await session.execute(_EXPIRE, {"now": now, "batch": EXPIRE_BATCH})
        await session.commit()
        count = int(getattr(result, "rowcount", 0) or 0)
        removed += count
        if count < EXPIRE_BATCH:
            return removed
