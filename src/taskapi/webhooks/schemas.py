"""The bodies of /webhooks and what it answers (API.md part 2, "Webhooks")."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from taskapi.events import schemas as events
from taskapi.kit.strict_query import StrictQuery
from taskapi.kit.validation import MAX_ID, reject_nul
from taskapi.tasks.schemas import JsonBool

MAX_WEBHOOKS_PER_USER: Final = 25
MAX_URL_LENGTH: Final = 2048
MAX_DELIVERY_LIMIT: Final = 100

# Every event type a webhook can ask for, a family of them, or all.
EVENT_TYPES: Final = (
    events.TASK_CREATED,
    events.TASK_UPDATED,
    events.TASK_DELETED,
    events.TASK_RESTORED,
    events.TASK_PURGED,
    events.TASK_ACCESS_LOST,
    events.ATTACHMENT_ADDED,
    events.ATTACHMENT_DELETED,
    events.PROJECT_UPDATED,
    events.PROJECT_DELETED,
    events.PROJECT_MEMBER_ADDED,
    events.PROJECT_MEMBER_REMOVED,
    events.PROJECT_MEMBER_ROLE_CHANGED,
)
EVENT_FILTERS: Final = ("*", "task.*", "attachment.*", "project.*", *EVENT_TYPES)
EventFilter = Literal[EVENT_FILTERS]  # type: ignore[valid-type]

PING: Final = "ping"


_OCTET: Final = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_PORT: Final = (
    r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
)
# Labels of letters and digits joined by single hyphens ("xn--" labels are IDNA, decoded first).
_NAME: Final = r"[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*(?:\.[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*)*\.?"
# What the server accepts, stated: http(s), a host name or IPv4 address, an optional port, and
# printable ASCII after it; no credentials. Whether the address is public is decided when
# connecting (and for IP literals when saving): no pattern can say that.
URL_PATTERN: Final = (
    rf"^https?://(?:{_OCTET}(?:\.{_OCTET}){{3}}|{_NAME})(?::{_PORT})?(?:[/?#][!-~]*)?$"
)

WebhookUrl = Annotated[
    str,
    StringConstraints(max_length=MAX_URL_LENGTH, pattern=URL_PATTERN),
    Field(
        description="Where events are POSTed: https (http only in development and test), a host "
        "name or IPv4 address; every address it resolves to must be public (unless "
        "WEBHOOK_ALLOW_PRIVATE_NETWORKS): else 422 `invalid_webhook_url`",
        examples=["https://example.com/hooks/taskapi"],
    ),
]
EventFilters = Annotated[
    list[EventFilter],
    Field(
        min_length=1,
        max_length=len(EVENT_FILTERS),
        description='Event types, a family ("task.*") or "*" for every event',
    ),
]
WebhookDescription = Annotated[
    str,
    StringConstraints(max_length=500),
    AfterValidator(reject_nul),
    Field(description="Free text"),
]


class WebhookCreate(BaseModel):
    """A new subscription. Unknown fields are ignored."""

    url: WebhookUrl
    events: EventFilters
    project_id: Annotated[int, Field(ge=1, le=MAX_ID)] | None = Field(
        default=None, description="Only events of this project (you must be a member)"
    )
    description: WebhookDescription = ""


class WebhookPatch(BaseModel):
    """Only the fields sent change. `active: true` re-enables a disabled webhook."""

    url: WebhookUrl | SkipJsonSchema[None] = None
    events: EventFilters | SkipJsonSchema[None] = None
    description: WebhookDescription | SkipJsonSchema[None] = None
    active: JsonBool | SkipJsonSchema[None] = None

    @model_validator(mode="after")
    def _no_nulls(self) -> WebhookPatch:
        for name in self.model_fields_set:
            if getattr(self, name) is None:
                raise ValueError(f"`{name}` cannot be null")
        return self


class WebhookOut(BaseModel):
    id: int
    url: str
    events: list[str]
    project_id: int | None
    description: str
    active: bool
    created_at: datetime
    last_delivery_at: datetime | None = Field(description="The last successful delivery")
    disabled_reason: str | None = Field(description="Why it was deactivated (null while active)")


class WebhookWithSecret(WebhookOut):
    secret: str = Field(
        description="`whsec_` + base64 of the signing key: shown only in this response"
    )


class WebhookList(BaseModel):
    items: list[WebhookOut]
    total: int


class SecretOut(BaseModel):
    secret: str = Field(
        description="The new signing secret; the previous one keeps signing beside it for 24 h"
    )
    previous_secret_expires_at: datetime


class Accepted(BaseModel):
    delivery_id: int = Field(description="The delivery queued (see /deliveries)")


class DeliveryOut(BaseModel):
    id: int
    event_id: int | None = Field(description="null for a ping")
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    response_status: int | None = Field(description="The last attempt's HTTP status")
    duration_ms: int | None = Field(description="The last attempt's duration")
    last_error: str | None = Field(description="Why the last attempt failed, if it did")
    next_attempt_at: datetime | None = Field(description="null once delivered or failed")
    created_at: datetime


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    limit: int
    next_cursor: str | None = Field(description="Pass as `cursor` for older deliveries")


class DeliveryParams(StrictQuery):
    limit: Annotated[int, Field(ge=1, le=MAX_DELIVERY_LIMIT)] = 20
    cursor: Annotated[
        str | None,
        Field(min_length=1, max_length=2048, description="The `next_cursor` of the previous page"),
    ] = None
    status: Literal["pending", "delivered", "failed"] | None = None
