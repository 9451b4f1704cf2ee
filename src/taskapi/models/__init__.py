"""Every table of the service, in one package so Alembic sees them all (importing
`taskapi.models` loads every module of it).

Relationships are `lazy="raise"`: loading related rows is always an explicit decision.
"""

from __future__ import annotations

from taskapi.models.accounts import PersonalAccessToken, RefreshToken, User
from taskapi.models.enums import (
    SEARCH_CONFIG,
    SEARCH_VECTOR_SQL,
    NotificationKind,
    ProjectRole,
    TaskPriority,
    TaskStatus,
    enum_values,
)
from taskapi.models.events import Event, EventRecipient
from taskapi.models.infra import IdempotencyKey, Job, Notification
from taskapi.models.projects import Project, ProjectMember
from taskapi.models.tasks import Attachment, Task, TaskStatDelta
from taskapi.models.webhooks import Webhook, WebhookDelivery, WebhookFanout

__all__ = [
    "SEARCH_CONFIG",
    "SEARCH_VECTOR_SQL",
    "Attachment",
    "Event",
    "EventRecipient",
    "IdempotencyKey",
    "Job",
    "Notification",
    "NotificationKind",
    "PersonalAccessToken",
    "Project",
    "ProjectMember",
    "ProjectRole",
    "RefreshToken",
    "Task",
    "TaskPriority",
    "TaskStatDelta",
    "TaskStatus",
    "User",
    "Webhook",
    "WebhookDelivery",
    "WebhookFanout",
    "enum_values",
]
