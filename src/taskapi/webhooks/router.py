"""/webhooks: thin HTTP over taskapi.webhooks.service (API.md part 2, "Webhooks"; delivery,
signatures and retries: docs/webhooks.md)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, status

from taskapi.auth.dependencies import CurrentUser, requires
from taskapi.auth.scopes import Scope
from taskapi.jobs.queue import utcnow
from taskapi.kit.conditional import IfNoneMatch, conditional_json
from taskapi.kit.db import DbSession
from taskapi.kit.openapi import problem_responses
from taskapi.kit.services import services_of
from taskapi.kit.strict_query import NoQueryParameters
from taskapi.kit.validation import MAX_ID
from taskapi.models import Webhook
from taskapi.webhooks import service
from taskapi.webhooks.schemas import (
    Accepted,
    DeliveryPage,
    DeliveryParams,
    SecretOut,
    WebhookCreate,
    WebhookList,
    WebhookOut,
    WebhookPatch,
    WebhookWithSecret,
)

router = APIRouter(prefix="/webhooks", tags=["webhooks"], responses=problem_responses(401, 429))

WebhookId = Annotated[int, Path(ge=1, le=MAX_ID, description="The webhook's id")]
DeliveryId = Annotated[int, Path(ge=1, le=MAX_ID, description="The delivery's id")]
IfMatchHeader = Annotated[
    str | None,
    Header(description="Only apply the change if the webhook's current ETag is listed (else 412)"),
]

_ETAG: dict[str, Any] = {
    "ETag": {
        "description": "The entity tag of the webhook as shown",
        "required": True,
        "schema": {"type": "string"},
    }
}


async def owned_webhook(webhook_id: WebhookId, user: CurrentUser, session: DbSession) -> Webhook:
    """The caller's webhook, or 404 `webhook_not_found` (also for someone else's)."""
    return await service.get_owned(session, user, webhook_id)


OwnedWebhook = Annotated[Webhook, Depends(owned_webhook)]


def _shown(response: Response, webhook: Webhook) -> WebhookOut:
    response.headers["ETag"] = service.etag_of(webhook)
    return service.out(webhook)


@router.get(
    "",
    dependencies=[requires(Scope.WEBHOOKS_WRITE)],
    response_model=WebhookList,
    summary="List your webhooks",
)
async def list_webhooks(
    user: CurrentUser,
    session: DbSession,
    request: Request,
    _strict: NoQueryParameters,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """All of them (at most 25), oldest first."""
    page = await service.list_webhooks(session, user)
    return await conditional_json(request, if_none_match, page.model_dump_json().encode())


@router.post(
    "",
    dependencies=[requires(Scope.WEBHOOKS_WRITE)],
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookWithSecret,
    responses={201: {"headers": _ETAG}, **problem_responses(404, 409, 422)},
    summary="Subscribe a URL to events",
)
async def create_webhook(
    data: WebhookCreate,
    user: CurrentUser,
    session: DbSession,
    request: Request,
    response: Response,
) -> WebhookWithSecret:
    """The answer holds the signing `secret`, shown this once. Events from now on that you may
    see and that match `events` (and `project_id`, a project you are a member of: else 404
    `project_not_found`) are POSTed to `url`, signed (Standard Webhooks). 422
    `invalid_webhook_url` for a URL that is not https (outside development), has credentials
    or names a private address; 409 `webhook_limit_reached` beyond 25 webhooks."""
    settings = services_of(request.app).settings
    webhook, secret = await service.create_webhook(session, user, data, settings)
    response.headers["Location"] = f"/api/v1/webhooks/{webhook.id}"
    shown = _shown(response, webhook)
    return WebhookWithSecret(**shown.model_dump(), secret=secret)


@router.get(
    "/{webhook_id}",
    dependencies=[requires(Scope.WEBHOOKS_WRITE)],
    response_model=WebhookOut,
    responses={200: {"headers": _ETAG}, **problem_responses(404, 422)},
    summary="Get a webhook",
)
async def get_webhook(webhook: OwnedWebhook, response: Response) -> WebhookOut:
    return _shown(response, webhook)


@router.patch(
    "/{webhook_id}",
    dependencies=[requires(Scope.WEBHOOKS_WRITE)],
    response_model=WebhookOut,
    responses={200: {"headers": _ETAG}, **problem_responses(404, 412, 422)},
    summary="Change a webhook's URL, events, description, or switch it on or off",
)
async def update_webhook(
    data: WebhookPatch,
    webhook: OwnedWebhook,
    user: CurrentUser,
    session: DbSession,
    request: Request,
    response: Response,
    if_match: IfMatchHeader = None,
) -> WebhookOut:
    """`active: true` re-enables a webhook deactivated after days of failures."""
    settings = services_of(request.app).settings
    webhook = await service.update_webhook(session, user, webhook, data, settings, if_match)
    return _shown(response, webhook)


@router.delete(
    "/{webhook_id}",
    dependencies=[requires(Scope.WEBHOOKS_WRITE)],
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(404, 412, 422),
    summary="Delete a webhook",
)
async def delete_webhook(
    webhook: OwnedWebhook, session: DbSession, if_match: IfMatchHeader = None
) -> None:
    """Its delivery log goes with it; nothing more is sent."""
    await service.delete_webhook(session, webhook, if_match)


@router.post(
    "/{webhook_id}/rotate-secret",
    dependencies=[requires(Scope.WEBHOOKS_WRITE)],
    response_model=SecretOut,
    responses=problem_responses(404, 422),
    summary="Replace the signing secret",
)
async def rotate_webhook_secret(
    webhook: OwnedWebhook, session: DbSession, request: Request
) -> SecretOut:
    """The new secret signs from now on; the previous one keeps signing beside it for 24 h
    (`webhook-signature` then carries both), so receivers can switch without losing events."""
    settings = services_of(request.app).settings
    return await service.rotate_secret(session, webhook, settings, utcnow())


@router.post(
    "/{webhook_id}/ping",
    dependencies=[requires(Scope.WEBHOOKS_WRITE)],
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    responses=problem_responses(404, 422),
    summary="Send a test event",
)
async def ping_webhook(webhook: OwnedWebhook, session: DbSession) -> Accepted:
    """Queues a `ping` event (`{"type": "ping", "webhook_id", ...}`) to the URL, signed like any
    other; follow it in `/deliveries`."""
    return Accepted(delivery_id=await service.ping(session, webhook, utcnow()))


@router.get(
    "/{webhook_id}/deliveries",
    dependencies=[requires(Scope.WEBHOOKS_WRITE)],
    response_model=DeliveryPage,
    responses=problem_responses(404, 422),
    summary="The webhook's delivery log",
)
async def list_webhook_deliveries(
    webhook: OwnedWebhook,
    session: DbSession,
    params: Annotated[DeliveryParams, Query()],
    request: Request,
) -> DeliveryPage:
    """Newest first: each event's delivery, its status (`pending` until a 2xx or until 24 h of
    retries are over, then `delivered` or `failed`), attempts, the last answer and when the
    next attempt is due."""
    codec = services_of(request.app).cursor_codec
    return await service.list_deliveries(session, webhook, params, codec)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/redeliver",
    dependencies=[requires(Scope.WEBHOOKS_WRITE)],
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    responses=problem_responses(404, 422),
    summary="Send a delivery again",
)
async def redeliver_webhook_delivery(
    webhook: OwnedWebhook, delivery_id: DeliveryId, session: DbSession
) -> Accepted:
    """Queued now, with the same `webhook-id` and a fresh 24 h of retries; 404
    `delivery_not_found` if this webhook has no such delivery."""
    return Accepted(delivery_id=await service.redeliver(session, webhook, delivery_id, utcnow()))
