"""The webhooks' rules on the API's side: who owns what, which URLs are accepted, secrets and
their rotation, pings, redeliveries and the delivery log (the dispatcher's side: queue.py)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.kit.config import Settings
from taskapi.kit.errors import Conflict, NotFound, ValidationFailed
from taskapi.kit.outbound import check_url
from taskapi.kit.pagination import CursorCodec, InvalidCursor
from taskapi.models import User, Webhook
from taskapi.tasks import service as tasks
from taskapi.tasks.conditional import IfMatch
from taskapi.webhooks import repository, signing
from taskapi.webhooks.schemas import (
    MAX_WEBHOOKS_PER_USER,
    DeliveryOut,
    DeliveryPage,
    DeliveryParams,
    SecretOut,
    WebhookCreate,
    WebhookList,
    WebhookOut,
    WebhookPatch,
)
from taskapi.webhooks.status import STATUS_NAMES, DeliveryStatus

SECRET_OVERLAP: Final = timedelta(hours=24)

DELIVERIES_FINGERPRINT: Final = "webhook-deliveries"


class WebhookNotFound(NotFound):
    code, title = "webhook_not_found", "Webhook not found"
    default_detail = "No webhook with this id exists or it is not yours."


class DeliveryNotFound(NotFound):
    code, title = "delivery_not_found", "Delivery not found"
    default_detail = "This webhook has no delivery with this id."


class InvalidWebhookUrl(ValidationFailed):
    code, title = "invalid_webhook_url", "Invalid webhook URL"


class WebhookLimitReached(Conflict):
    code, title = "webhook_limit_reached", "Too many webhooks"
    default_detail = f"You already have {MAX_WEBHOOKS_PER_USER} webhooks; delete one first."


# --- the API's side -------------------------------------------------------------------------


def etag_of(webhook: Webhook) -> str:
    """Changes with every edit and every successful delivery (`last_delivery_at` is shown)."""
    delivered = webhook.last_delivery_at
    stamp = int(delivered.timestamp() * 1_000_000) if delivered else 0
    return f'"{webhook.version}.{stamp}"'


def check_if_match(webhook: Webhook, if_match: str | None) -> None:
    IfMatch(if_match).check_tag(etag_of(webhook))


def out(webhook: Webhook) -> WebhookOut:
    return WebhookOut.model_validate(webhook, from_attributes=True)


def _check_url(settings: Settings, url: str) -> None:
    reason = check_url(
        url,
        require_https=settings.environment not in ("development", "test"),
        allow_private=settings.webhook_allow_private_networks,
    )
    if reason is not None:
        raise InvalidWebhookUrl(reason)


async def create_webhook(
    session: AsyncSession, user: User, data: WebhookCreate, settings: Settings
) -> tuple[Webhook, str]:
    """The new webhook and its secret (shown once). It gets events from now on."""
    _check_url(settings, data.url)
    if data.project_id is not None:
        await tasks.member_or_404(session, user, data.project_id)
    if await repository.count_owned(session, user.id) >= MAX_WEBHOOKS_PER_USER:
        raise WebhookLimitReached()
    secret = signing.new_secret()
    webhook = Webhook(
        owner_id=user.id,
        url=data.url,
        events=sorted(set(data.events)),
        project_id=data.project_id,
        description=data.description,
        secret_sealed=signing.seal_secret(settings.signing_key, secret),
        start_xid=await repository.current_horizon(session),
    )
    session.add(webhook)
    await session.flush()
    return webhook, secret


async def get_owned(session: AsyncSession, user: User, webhook_id: int) -> Webhook:
    webhook = await session.scalar(
        select(Webhook).where(Webhook.id == webhook_id, Webhook.owner_id == user.id)
    )
    if webhook is None:
        raise WebhookNotFound()
    return webhook


async def list_webhooks(session: AsyncSession, user: User) -> WebhookList:
    found = await session.scalars(
        select(Webhook).where(Webhook.owner_id == user.id).order_by(Webhook.id)
    )
    items = [out(webhook) for webhook in found]
    return WebhookList(items=items, total=len(items))


async def update_webhook(
    session: AsyncSession,
    user: User,
    webhook: Webhook,
    data: WebhookPatch,
    settings: Settings,
    if_match: str | None,
) -> Webhook:
    check_if_match(webhook, if_match)
    if data.url is not None:
        _check_url(settings, data.url)
        webhook.url = data.url
    if data.events is not None:
        webhook.events = sorted(set(data.events))
    if data.description is not None:
        webhook.description = data.description
    if data.active is not None and data.active != webhook.active:
        webhook.active = data.active
        if data.active:  # re-enabled: a fresh start
            webhook.disabled_reason = None
            webhook.failing_since = None
    await session.flush()
    return webhook


async def delete_webhook(session: AsyncSession, webhook: Webhook, if_match: str | None) -> None:
    """Its deliveries, delivered or pending, go with it."""
    check_if_match(webhook, if_match)
    await session.delete(webhook)
    await session.flush()


async def rotate_secret(
    session: AsyncSession, webhook: Webhook, settings: Settings, now: datetime
) -> SecretOut:
    """A new secret; the current one keeps signing beside it for 24 h (a secret older than that
    is dropped even if its overlap had not ended: only two ever sign)."""
    secret = signing.new_secret()
    webhook.previous_secret_sealed = webhook.secret_sealed
    webhook.previous_secret_expires_at = now + SECRET_OVERLAP
    webhook.secret_sealed = signing.seal_secret(settings.signing_key, secret)
    await session.flush()
    return SecretOut(secret=secret, previous_secret_expires_at=now + SECRET_OVERLAP)


async def ping(session: AsyncSession, webhook: Webhook, now: datetime) -> int:
    return await repository.queue_ping(session, webhook.id, now)


async def redeliver(
    session: AsyncSession, webhook: Webhook, delivery_id: int, now: datetime
) -> int:
    """Queue the delivery again now, with a fresh 24 hours of retries."""
    if not await repository.redeliver(session, webhook.id, delivery_id, now):
        raise DeliveryNotFound()
    return delivery_id


def _delivery_out(row: Mapping[str, Any]) -> DeliveryOut:
    status = DeliveryStatus(row["status"])
    return DeliveryOut(
        id=row["id"],
        event_id=row["event_id"],
        event_type=row["event_type"],
        status=STATUS_NAMES[status],
        attempts=row["attempts"],
        response_status=row["response_status"],
        duration_ms=row["duration_ms"],
        last_error=row["last_error"],
        next_attempt_at=row["next_attempt_at"] if status is DeliveryStatus.PENDING else None,
        created_at=row["created_at"],
    )


async def list_deliveries(
    session: AsyncSession, webhook: Webhook, params: DeliveryParams, codec: CursorCodec
) -> DeliveryPage:
    before = 2**63 - 1
    if params.cursor is not None:
        (before,) = codec.decode(params.cursor, DELIVERIES_FINGERPRINT)
        if not isinstance(before, int) or isinstance(before, bool):
            raise InvalidCursor()
    status = None
    if params.status is not None:
        status = int(DeliveryStatus[params.status.upper()])
    rows = await repository.deliveries(session, webhook.id, before, status, params.limit + 1)
    items = [_delivery_out(row) for row in rows[: params.limit]]
    next_cursor = None
    if len(rows) > params.limit:
        next_cursor = codec.encode([items[-1].id], DELIVERIES_FINGERPRINT)
    return DeliveryPage(items=items, limit=params.limit, next_cursor=next_cursor)


async def operator_deliveries(
    session: AsyncSession, webhook_id: int | None, status: DeliveryStatus | None, limit: int
) -> list[Any]:
    """Every webhook's deliveries, newest first (`taskapi webhooks deliveries`)."""
    return await repository.operator_deliveries(
        session, webhook_id, None if status is None else int(status), limit
    )


async def operator_redeliver(
    session: AsyncSession,
    ids: list[int],
    all_failed: bool,
    webhook_id: int | None,
    now: datetime,
) -> list[int]:
    """Queue the given deliveries (and, with `all_failed`, every failed one of an active
    webhook) again now (`taskapi webhooks redeliver`); the ids queued."""
    return await repository.operator_redeliver(session, ids, all_failed, webhook_id, now)
