"""What the dispatcher does with the delivery queue: claim due deliveries (with the event's
body and the webhook's secrets), the retry schedule, and each attempt's outcome, deactivation
included. Every time is the caller's `now` (the dispatcher's clock): testable without sleeping.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.events.schemas import EventOut
from taskapi.kit.config import Settings
from taskapi.models import NotificationKind
from taskapi.notifications import service as notifications
from taskapi.webhooks import delivery_queries, repository, signing
from taskapi.webhooks.schemas import PING

# Retries: exponential from 5 s (x4 each time, capped at 6 h), each delay jittered by +-20% so
# the retries of an outage's many deliveries spread out; after 24 h of failures the delivery
# fails for good (the attempt that crosses 24 h is the last: about 11 attempts).
FIRST_RETRY: Final = timedelta(seconds=5)
RETRY_FACTOR: Final = 4
MAX_RETRY_DELAY: Final = timedelta(hours=6)
RETRY_WINDOW: Final = timedelta(hours=24)
JITTER: Final = 0.2
# A webhook failing every attempt for this long is deactivated and its owner notified.
DEACTIVATE_AFTER: Final = timedelta(days=3)
FAN_OUT_BATCH: Final = 500


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One claimed delivery, ready to sign and send."""

    delivery_id: int
    webhook_id: int
    url: str
    message_id: str  # webhook-id: the event's id, the same on every attempt
    body: bytes
    secrets: tuple[str, ...]
    attempts: int
    first_attempt_at: datetime
    occurred_at: datetime


def event_body(row: Mapping[str, Any]) -> bytes:
    """The event as GET /events shows it (its model; absent optional fields left out)."""
    return EventOut.model_validate(dict(row)).model_dump_json(exclude_none=True).encode()


def ping_body(webhook_id: int, delivery_id: int, created_at: datetime) -> bytes:
    document = {
        "type": PING,
        "webhook_id": webhook_id,
        "delivery_id": delivery_id,
        "occurred_at": created_at.isoformat().replace("+00:00", "Z"),
    }
    return json.dumps(document, separators=(",", ":")).encode()


def _secrets(target: Mapping[str, Any], settings: Settings, now: datetime) -> tuple[str, ...]:
    current = signing.unseal_secret(settings.signing_key, target["secret_sealed"])
    previous = target["previous_secret_sealed"]
    expires = target["previous_secret_expires_at"]
    if previous is not None and expires is not None and expires > now:
        return (current, signing.unseal_secret(settings.signing_key, previous))
    return (current,)


async def claim(
    session: AsyncSession,
    settings: Settings,
    now: datetime,
    limit: int,
    busy: Mapping[int, int],
) -> list[Outgoing]:
    """Lease up to `limit` due deliveries, keeping each webhook within its in-flight cap
    (`busy`: deliveries already in flight here, by webhook); the caller commits."""
    # Longer than an attempt can take, so a delivery in flight is never sent twice at once;
    # short enough that a crashed worker's deliveries go out again within seconds.
    lease_until = now + timedelta(seconds=2 * settings.webhook_timeout_seconds + 1)
    rows = await delivery_queries.claim(
        session, now, lease_until, limit, settings.webhook_max_in_flight_per_endpoint, busy
    )
    if not rows:
        return []
    events = await delivery_queries.events_by_id(
        session, [row["event_id"] for row in rows if row["event_id"] is not None]
    )
    targets = await delivery_queries.targets_by_id(
        session, list({row["webhook_id"] for row in rows})
    )
    claimed = []
    for row in rows:
        target = targets[row["webhook_id"]]
        if row["event_id"] is None:
            body = ping_body(row["webhook_id"], row["id"], row["created_at"])
            message_id, occurred_at = f"ping_{row['id']}", row["created_at"]
        else:
            event = events[row["event_id"]]
            body, message_id, occurred_at = (
                event_body(event),
                str(event["id"]),
                event["occurred_at"],
            )
        claimed.append(
            Outgoing(
                delivery_id=row["id"],
                webhook_id=row["webhook_id"],
                url=target["url"],
                message_id=message_id,
                body=body,
                secrets=_secrets(target, settings, now),
                attempts=row["attempts"],
                first_attempt_at=row["first_attempt_at"],
                occurred_at=occurred_at,
            )
        )
    return claimed


def retry_at(attempts: int, first_attempt_at: datetime, now: datetime) -> datetime | None:
    """When to try again after failed attempt number `attempts`; None: give up (24 h are over)."""
    if now - first_attempt_at >= RETRY_WINDOW:
        return None
    delay = min(MAX_RETRY_DELAY, FIRST_RETRY * float(RETRY_FACTOR ** max(0, attempts - 1)))
    # Jitter spreads retries out; it protects nothing, so any generator will do.
    return now + delay * random.uniform(1 - JITTER, 1 + JITTER)  # noqa: S311


async def record_successes(
    session: AsyncSession, outcomes: Sequence[tuple[Outgoing, int, int]], now: datetime
) -> None:
    """Deliveries that succeeded: (delivery, response status, duration in ms) each."""
    await delivery_queries.mark_delivered(
        session, [(outgoing.delivery_id, status, ms) for outgoing, status, ms in outcomes], now
    )


async def record_failure(
    session: AsyncSession,
    outgoing: Outgoing,
    *,
    status: int | None,
    duration_ms: int,
    error: str,
    now: datetime,
) -> bool:
    """Schedule the retry (or fail the delivery for good); after 3 days of nothing but failures
    deactivate the webhook and tell its owner. Returns whether it will be retried."""
    retry = retry_at(outgoing.attempts, outgoing.first_attempt_at, now)
    webhook = await delivery_queries.mark_failed(
        session,
        outgoing.delivery_id,
        status=status,
        duration_ms=duration_ms,
        error=error,
        retry_at=retry,
        now=now,
    )
    if (
        webhook is not None
        and webhook["active"]
        and now - webhook["failing_since"] >= DEACTIVATE_AFTER
    ):
        since = webhook["failing_since"].isoformat(timespec="seconds")
        reason = f"every delivery has failed since {since} (last: {error[:200]})"
        if await delivery_queries.deactivate(session, webhook["id"], reason):
            await notifications.notify(
                session,
                [
                    (
                        webhook["owner_id"],
                        NotificationKind.WEBHOOK_DISABLED,
                        None,
                        f"Webhook {webhook['id']} ({webhook['url'][:100]}) was deactivated: "
                        f"{reason}",
                    )
                ],
            )
    return retry is not None


async def fan_out(session: AsyncSession, now: datetime) -> tuple[int, int] | None:
    """One batch of the log into deliveries; None if another process is doing it."""
    return await repository.fan_out(session, now, FAN_OUT_BATCH)


async def purge_pings(session: AsyncSession, older_than: datetime) -> int:
    """Delete ping deliveries made before `older_than`; how many."""
    return await delivery_queries.purge_pings(session, older_than)
