from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    TypeAdapter,
    WithJsonSchema,
    model_validator,
)
from pydantic.config import JsonDict
from pydantic.json_schema import SkipJsonSchema

# pydantic needs typing_extensions' TypedDict before Python 3.12.
from typing_extensions import TypedDict

from taskapi.kit.formats import IsoDate
from taskapi.kit.openapi import NUL, STRIPPED_BY_PYDANTIC, STRIPPED_BY_PYTHON, trimmed_text_pattern
from taskapi.kit.validation import MAX_ID, reject_nul
from taskapi.models import Task, TaskPriority, TaskStatus
from taskapi.tasks.overdue import is_overdue_now

MAX_TAGS: Final = 20
MAX_TAG_LENGTH: Final = 50


TITLE_PATTERN: Final = trimmed_text_pattern(
    min_length=1, max_length=200, forbidden=NUL, trimmed=STRIPPED_BY_PYDANTIC
)
Title = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(reject_nul),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": TITLE_PATTERN,
            "description": "1-200 characters once surrounding whitespace is trimmed; no NUL",
        }
    ),
]
Description = Annotated[
    str,
    Field(max_length=10_000, json_schema_extra={"pattern": f"^[^{NUL}]*$"}),
    AfterValidator(reject_nul),
]


# Bodies are JSON: numbers and booleans must be JSON's own (`"5"` or `0` are not accepted for an
# id or a boolean), as the schema's `integer` and `boolean` say. Query and path parameters are
# text and are parsed, not held to this.
def _json_number(value: object) -> object:
    # A whole float (`3.0`) is an integer to JSON Schema, and is taken; a string or boolean is not.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a JSON number")
    return value


JsonId = Annotated[int, Field(ge=1, le=MAX_ID), BeforeValidator(_json_number)]
JsonBool = Annotated[bool, Strict()]
UserId = JsonId
ProjectId = JsonId


# What a tag may not hold, as a regex class body read alike by Python and by JSON Schema's
# ECMA-262 (astral ranges as literal characters: neither's escape for them is the other's).
# Commas separate tags in the `tags=` list filter, so a tag containing one could never be found;
# Unicode's controls (Cc) and format characters (Cf: zero-width and direction marks) are refused.
# Unassigned code points are not: a newer Unicode than this server's may give them meaning (new
# emoji); nor are private-use ones, which are characters, only not standard ones.
# tests/fuzz/test_schema_rules.py checks the ranges against this Python's Unicode database.
TAG_FORBIDDEN: Final = (
    r",\u0000-\u001f\u007f-\u009f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2"
    r"\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U00013438\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0001\U000e0020-\U000e007f"
)
# Lone surrogates too: JSON can spell them (`"\ud800"`) but PostgreSQL's text cannot hold them.
_REFUSED_IN_TAG = re.compile(f"[{TAG_FORBIDDEN}\\ud800-\\udfff]")


def normalize_tag(raw: str) -> str:
    # Measured before lower-casing, as the schema's pattern measures it (`İ` lower-cases to two).
    tag = raw.strip()
    if not 1 <= len(tag) <= MAX_TAG_LENGTH:
        raise ValueError(f"each tag must be 1-{MAX_TAG_LENGTH} characters after trimming")
    if _REFUSED_IN_TAG.search(tag):
        raise ValueError("tags may not contain commas or control characters")
    return tag.lower()


def normalize_tags(raw: list[str]) -> list[str]:
    """Trim, lower-case and de-duplicate, keeping first-seen order."""
    tags = list(dict.fromkeys(normalize_tag(tag) for tag in raw))
    if len(tags) > MAX_TAGS:
        raise ValueError(f"a task has at most {MAX_TAGS} tags")
    return tags


# Trimmed by `str.strip()`, then 1-50 characters, none of TAG_FORBIDDEN.
TAG_PATTERN: Final = trimmed_text_pattern(
    min_length=1, max_length=MAX_TAG_LENGTH, forbidden=TAG_FORBIDDEN, trimmed=STRIPPED_BY_PYTHON
)
Tag = Annotated[
    str,
    WithJsonSchema(
        {
            "type": "string",
            "pattern": TAG_PATTERN,
            "description": f"1-{MAX_TAG_LENGTH} characters once trimmed (then lower-cased); "
            "no commas or control characters",
        }
    ),
]
Tags = Annotated[list[Tag], Field(max_length=200), AfterValidator(normalize_tags)]


# `_status_from`'s rule in the schema: `completed` may not contradict a `status` sent with it.
STATUS_AGREES_WITH_COMPLETED: Final[JsonDict] = {
    "allOf": [
        {
            "if": {"properties": {"completed": {"const": True}}, "required": ["completed"]},
            "then": {"properties": {"status": {"enum": [TaskStatus.DONE.value, None]}}},
        },
        {
            "if": {"properties": {"completed": {"const": False}}, "required": ["completed"]},
            "then": {"properties": {"status": {"not": {"const": TaskStatus.DONE.value}}}},
        },
    ]
}


def _status_from(status: TaskStatus | None, completed: bool | None) -> TaskStatus | None:
    """`completed` is an alias: true means done, false means todo."""
    if completed is None:
        return status
    implied = TaskStatus.DONE if completed else TaskStatus.TODO
    if status is not None and (status == TaskStatus.DONE) != completed:
        raise ValueError("`status` and `completed` contradict each other")
    return status or implied


class _TaskFields(BaseModel):
    model_config = ConfigDict(json_schema_extra=STATUS_AGREES_WITH_COMPLETED)

    title: Title
    description: Description | None = None
    status: TaskStatus | None = None
    completed: JsonBool | None = Field(default=None, description="Alias: true = done, false = todo")
    priority: TaskPriority = TaskPriority.MEDIUM
    due_date: IsoDate | None = None
    tags: Tags = Field(default_factory=list)
    assignee_id: UserId | None = None

    @model_validator(mode="after")
    def _resolve_status(self) -> _TaskFields:
        self.status = _status_from(self.status, self.completed) or TaskStatus.TODO
        return self

    @property
    def resolved_status(self) -> TaskStatus:
        return self.status or TaskStatus.TODO


class TaskCreate(_TaskFields):
    """A new task. Fields other than `title` are optional; unknown fields are ignored."""

    project_id: ProjectId | None = Field(
        default=None,
        description="The project it belongs to (you must be its editor or admin); "
        "null or omitted: a personal task",
    )


class TaskReplace(_TaskFields):
    """PUT: a full replacement; omitted fields take their defaults. The project is not replaced
    (a PUT never moves a task by omission): move a task with PATCH `project_id`."""


_NOT_NULLABLE = ("title", "status", "completed", "priority", "tags")


class TaskPatch(BaseModel):
    """A partial update: only the fields sent change; `null` clears a nullable field."""

    model_config = ConfigDict(json_schema_extra=STATUS_AGREES_WITH_COMPLETED)

    # `None` is only the "not sent" default of the fields that cannot be cleared (refused below),
    # so the schema leaves it out: it documents null where null is accepted.
    title: Title | SkipJsonSchema[None] = None
    description: Description | None = None
    status: TaskStatus | SkipJsonSchema[None] = None
    completed: JsonBool | SkipJsonSchema[None] = None
    priority: TaskPriority | SkipJsonSchema[None] = None
    due_date: IsoDate | None = None
    tags: Tags | SkipJsonSchema[None] = None
    assignee_id: UserId | None = None
    project_id: ProjectId | None = Field(
        default=None,
        description="Move the task to this project (editor or admin there, and of the project "
        "it leaves); null makes it a personal task of yours",
    )

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
    project_id: int | None = Field(description="The task's project; null for a personal task")
    attachment_count: int
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    version: int

    @classmethod
    def of(cls, task: Task, today: date) -> TaskOut:
        """A task in memory, as a write returns it; reads select the same fields in SQL."""
        fields = {name: getattr(task, name) for name in _TASK_OUT_ATTRIBUTES}
        return cls.model_validate(
            {**fields, "is_overdue": is_overdue_now(task.due_date, task.status, today)}
        )


_TASK_OUT_ATTRIBUTES: Final = tuple(name for name in TaskOut.model_fields if name != "is_overdue")


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
    project_id: int | None
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
TaskIdList = Annotated[list[JsonId], Field(min_length=1, max_length=MAX_BULK_IDS)]


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
