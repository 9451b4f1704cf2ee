"""What the event log takes from the services (`EventSpec`) and what its readers get."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from taskapi.kit.strict_query import StrictQuery

MAX_FEED_LIMIT: Final = 1000
DEFAULT_FEED_LIMIT: Final = 100
MAX_ACTIVITY_LIMIT: Final = 100
DEFAULT_ACTIVITY_LIMIT: Final = 20

# Event types (API.md part 2, "Change feed and activity") and the tombstone of a lost access.
TASK_CREATED: Final = "task.created"
TASK_UPDATED: Final = "task.updated"
TASK_DELETED: Final = "task.deleted"
TASK_RESTORED: Final = "task.restored"
TASK_PURGED: Final = "task.purged"
TASK_ACCESS_LOST: Final = "task.access_lost"
ATTACHMENT_ADDED: Final = "attachment.added"
ATTACHMENT_DELETED: Final = "attachment.deleted"
PROJECT_UPDATED: Final = "project.updated"
PROJECT_DELETED: Final = "project.deleted"
PROJECT_MEMBER_ADDED: Final = "project.member_added"
PROJECT_MEMBER_REMOVED: Final = "project.member_removed"
PROJECT_MEMBER_ROLE_CHANGED: Final = "project.member_role_changed"
# Events after which a reader holds no copy of the task (a tombstone, by version).
ENDS_COPY: Final = frozenset({TASK_DELETED, TASK_PURGED, TASK_ACCESS_LOST})


@dataclass(frozen=True, slots=True)
class Audience:
    """Who may read an event, resolved by the INSERT itself (no member list travels through
    Python): `users` and the members of `members_of`, less `minus_users` and the members of
    `minus_members_of`, as they are at the statement."""

    users: Sequence[int | None] = ()
    members_of: int | None = None
    minus_users: Sequence[int | None] = ()
    minus_members_of: int | None = None


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One event to record. `task` is the task after the change as GET /tasks/{id} shows it
    (JSON-ready); for `task.access_lost` only its `id` and `version` (the reader lost it)."""

    type: str
    actor_id: int | None
    audience: Audience
    task_id: int | None = None
    project_id: int | None = None
    changes: dict[str, list[Any]] | None = None
    task: dict[str, Any] | None = None
    task_version: int | None = field(default=None)


class EventOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"additionalProperties": False})

    id: int
    type: str = Field(description="task.created, task.updated, task.deleted, task.access_lost, ...")
    occurred_at: datetime
    actor_id: int | None
    task_id: int | None = None
    project_id: int | None = None
    changes: dict[str, list[Any]] | None = Field(
        default=None, description='{"field": [old, new]} for updates'
    )
    task: dict[str, Any] | None = Field(
        default=None,
        description="The task after the change, as GET /tasks/{id} shows it "
        "(for task.access_lost: only its id and version)",
    )


class EventPage(BaseModel):
    items: list[EventOut]
    next_cursor: str = Field(description="Follow with ?since=<it>; never null")
    has_more: bool


class ActivityPage(BaseModel):
    items: list[EventOut]
    limit: int
    next_cursor: str | None


class FeedParams(StrictQuery):
    since: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=2048,
            description="The `next_cursor` of the previous page; omitted: an empty page whose "
            "`next_cursor` marks now",
        ),
    ] = None
    limit: Annotated[int, Field(ge=1, le=MAX_FEED_LIMIT)] = DEFAULT_FEED_LIMIT


class ActivityParams(StrictQuery):
    limit: Annotated[int, Field(ge=1, le=MAX_ACTIVITY_LIMIT)] = DEFAULT_ACTIVITY_LIMIT
    cursor: Annotated[
        str | None,
        Field(min_length=1, max_length=2048, description="The `next_cursor` of the previous page"),
    ] = None


def activity_json(page: ActivityPage) -> bytes:
    """The page as JSON: each event without its absent optional fields, `next_cursor` always."""
    items = [item.model_dump(mode="json", exclude_none=True) for item in page.items]
    return ActivityJson.dump_json(
        {"items": items, "limit": page.limit, "next_cursor": page.next_cursor}
    )


ActivityJson: Final = TypeAdapter(dict[str, Any])
