from __future__ import annotations

import unicodedata
from datetime import date, datetime
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    model_validator,
)

# pydantic needs typing_extensions' TypedDict before Python 3.12.
from typing_extensions import TypedDict

from taskapi.models import TaskPriority, TaskStatus

MAX_TAGS: Final = 20
MAX_TAG_LENGTH: Final = 50
MAX_ID: Final = 2**63 - 1


def reject_nul(value: str) -> str:
    # PostgreSQL text cannot hold U+0000; refusing it here keeps it a 422 rather than a 500.
    if "\x00" in value:
        raise ValueError("text may not contain the NUL character (U+0000)")
    return value


Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(reject_nul),
]
Description = Annotated[str, Field(max_length=10_000), AfterValidator(reject_nul)]
UserId = Annotated[int, Field(ge=1, le=MAX_ID)]


def normalize_tag(raw: str) -> str:
    tag = raw.strip().lower()
    if not 1 <= len(tag) <= MAX_TAG_LENGTH:
        raise ValueError(f"each tag must be 1-{MAX_TAG_LENGTH} characters after trimming")
    # Commas separate tags in the `tags=` list filter, so a tag containing one could never be found.
    if "," in tag or any(unicodedata.category(ch).startswith("C") for ch in tag):
        raise ValueError("tags may not contain commas or control characters")
    return tag


def normalize_tags(raw: list[str]) -> list[str]:
    """Trim, lower-case and de-duplicate, keeping first-seen order."""
    tags = list(dict.fromkeys(normalize_tag(tag) for tag in raw))
    if len(tags) > MAX_TAGS:
        raise ValueError(f"a task has at most {MAX_TAGS} tags")
    return tags


Tags = Annotated[list[str], Field(max_length=200), AfterValidator(normalize_tags)]


def _status_from(status: TaskStatus | None, completed: bool | None) -> TaskStatus | None:
    """`completed` is an alias: true means done, false means todo."""
    if completed is None:
        return status
    implied = TaskStatus.DONE if completed else TaskStatus.TODO
    if status is not None and (status == TaskStatus.DONE) != completed:
        raise ValueError("`status` and `completed` contradict each other")
    return status or implied


class TaskCreate(BaseModel):
    """A new task. Fields other than `title` are optional; unknown fields are ignored."""

    title: Title
    description: Description | None = None
    status: TaskStatus | None = None
    completed: bool | None = Field(default=None, description="Alias: true = done, false = todo")
    priority: TaskPriority = TaskPriority.MEDIUM
    due_date: date | None = None
    tags: Tags = Field(default_factory=list)
    assignee_id: UserId | None = None

    @model_validator(mode="after")
    def _resolve_status(self) -> TaskCreate:
        self.status = _status_from(self.status, self.completed) or TaskStatus.TODO
        return self

    @property
    def resolved_status(self) -> TaskStatus:
        return self.status or TaskStatus.TODO


class TaskReplace(TaskCreate):
    """PUT: a full replacement; omitted fields take their defaults."""


_NOT_NULLABLE = ("title", "status", "completed", "priority", "tags")


class TaskPatch(BaseModel):
    """A partial update: only the fields sent change; `null` clears a nullable field."""

    title: Title | None = None
    description: Description | None = None
    status: TaskStatus | None = None
    completed: bool | None = None
    priority: TaskPriority | None = None
    due_date: date | None = None
    tags: Tags | None = None
    assignee_id: UserId | None = None

    @model_validator(mode="after")
    def _check(self) -> TaskPatch:
        for name in _NOT_NULLABLE:
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"`{name}` cannot be null")
        self.status = _status_from(self.status, self.completed)
        return self

    def changes(self) -> dict[str, Any]:
        """The fields the client sent, with `completed` folded into `status`."""
        # `status` is read from the resolved value, never from the fields set: the validator's
        # assignment to `self.status` marks it as set even when the client sent no status.
        sent = {
            name: getattr(self, name)
            for name in self.model_fields_set
            if name not in ("completed", "status")
        }
        if self.status is not None:
            sent["status"] = self.status
        return sent


class TransitionIn(BaseModel):
    status: TaskStatus


class TaskOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    title: str
    description: str | None
    status: TaskStatus
    completed: bool
    priority: TaskPriority
    due_date: date | None
    is_overdue: bool
    tags: list[str]
    owner_id: int
    assignee_id: int | None
    attachment_count: int
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    version: int


class TaskPage(BaseModel):
    items: list[TaskOut]
    total: int
    limit: int
    offset: int | None
    next_cursor: str | None


class TaskItemRow(TypedDict):
    """A TaskOut as the list reads it from PostgreSQL: already typed by the database."""

    id: int
    title: str
    description: str | None
    status: str
    completed: bool
    priority: str
    due_date: date | None
    is_overdue: bool
    tags: list[str]
    owner_id: int
    assignee_id: int | None
    attachment_count: int
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    version: int


class TaskPageRows(TypedDict):
    items: list[TaskItemRow]
    total: int
    limit: int
    offset: int | None
    next_cursor: str | None


# Serialises a page straight from database rows, in Rust, without validating what PostgreSQL
# already typed: the same JSON TaskPage gives (tests compare them), at a fraction of the cost.
TASK_PAGE_JSON: Final = TypeAdapter(TaskPageRows)
TASK_ITEM_JSON: Final = TypeAdapter(TaskItemRow)


class TagsIn(BaseModel):
    tags: Tags


class AssignIn(BaseModel):
    assignee_id: UserId | None = Field(description="A user id, or null to unassign")


MAX_BULK_IDS: Final = 500
TaskIdList = Annotated[
    list[Annotated[int, Field(ge=1, le=MAX_ID)]], Field(min_length=1, max_length=MAX_BULK_IDS)
]


class BulkUpdateIn(BaseModel):
    task_ids: TaskIdList
    updates: TaskPatch


class BulkStatusIn(BaseModel):
    task_ids: TaskIdList
    target_status: TaskStatus


class BulkItemResult(BaseModel):
    task_id: int
    success: bool
    error: str | None = Field(default=None, description="The problem code, when it failed")
    previous_status: TaskStatus | None = Field(
        default=None, description="When the status changed, or when the item failed"
    )
    new_status: TaskStatus | None = Field(default=None, description="When the status changed")


class BulkResult(BaseModel):
    total: int
    successful: int
    failed: int
    results: list[BulkItemResult]


class TaskStats(BaseModel):
    total: int
    completed: int
    incomplete: int
    completion_rate: float = Field(description="Percentage of tasks done, 0-100, one decimal")
    overdue: int
    by_status: dict[str, int]
    by_priority: dict[str, int]
    by_tag: dict[str, int]
