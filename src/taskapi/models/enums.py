"""The enumerated types of the tables, and the full-text search configuration."""

from __future__ import annotations

import enum


class TaskStatus(enum.StrEnum):
    TODO = "todo"
    IN_PROGRESS = "in_progress"
    DONE = "done"
    CANCELLED = "cancelled"


class TaskPriority(enum.StrEnum):
    # Declaration order is the PostgreSQL enum order, so ORDER BY priority is semantic.
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    URGENT = "urgent"


class NotificationKind(enum.StrEnum):
    TASK_ASSIGNED = "task_assigned"
    TASK_UPDATED = "task_updated"
    TASK_DUE_SOON = "task_due_soon"
    PROJECT_SHARED = "project_shared"
    WEBHOOK_DISABLED = "webhook_disabled"


class ProjectRole(enum.StrEnum):
    # Declaration order is the PostgreSQL enum order: each role can do what the ones before can.
    VIEWER = "viewer"
    EDITOR = "editor"
    ADMIN = "admin"


# Full-text search configuration created by migration 0002: English stemming over unaccented words.
SEARCH_CONFIG = "taskapi_search"
SEARCH_VECTOR_SQL = (
    f"setweight(to_tsvector('{SEARCH_CONFIG}'::regconfig, coalesce(title, '')), 'A') || "
    f"setweight(to_tsvector('{SEARCH_CONFIG}'::regconfig, coalesce(description, '')), 'B')"
)


def enum_values(enum_cls: type[enum.Enum]) -> list[str]:
    return [str(member.value) for member in enum_cls]
