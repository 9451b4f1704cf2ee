"""GET /tasks, step 1 of 5: the query parameters, as one pydantic model.

taskapi.tasks.list_query reads the query string into it exactly as FastAPI reads a query-parameter
model (and documents it as FastAPI would); a bad value is a 422. What comes out is validated but
not yet planned: that is taskapi.tasks.list_plan's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from taskapi.kit.formats import IsoDate, IsoDateTimeUtcDefault
from taskapi.kit.pagination import query_fingerprint
from taskapi.kit.validation import MAX_ID
from taskapi.models import TaskPriority, TaskStatus
from taskapi.tasks.schemas import normalize_tag

MAX_SEARCH_LENGTH: Final = 2000
SORT_FIELDS: Final = ("created_at", "updated_at", "due_date", "priority", "title", "status", "id")
DEFAULT_SORT: Final = "-created_at"
MAX_LIMIT: Final = 100
MAX_OFFSET: Final = 10_000_000


def _split_commas(value: Any) -> Any:
    """Accept both `?status=a,b` and `?status=a&status=b`."""
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    out: list[str] = []
    for item in items:
        if isinstance(item, str):
            out.extend(part.strip() for part in item.split(",") if part.strip())
        else:
            out.append(item)
    return out


def _tags_filter(value: Any) -> Any:
    split = _split_commas(value)
    if split is None:
        return None
    return [normalize_tag(str(tag)) for tag in split]


@dataclass(frozen=True, slots=True)
class SortKey:
    field: str
    descending: bool

    def __str__(self) -> str:
        return ("-" if self.descending else "") + self.field


def parse_sort(raw: str) -> tuple[SortKey, ...]:
    """`-due_date,title` -> its keys; a bad sort is a ValueError (a 422 from the validator)."""
    keys: list[SortKey] = []
    for part in (p.strip() for p in (raw or DEFAULT_SORT).split(",")):
        descending = part.startswith("-")
        name = part.removeprefix("-").removeprefix("+")
        if name not in SORT_FIELDS:
            raise ValueError(f"unknown sort field {name!r}; use {', '.join(SORT_FIELDS)}")
        if any(key.field == name for key in keys):
            raise ValueError(f"sort field {name!r} is repeated")
        keys.append(SortKey(name, descending))
    return tuple(keys)


class TaskListParams(BaseModel):
    """Filters are combined with AND; list values within one filter with OR (tags: with AND)."""

    status: Annotated[
        list[TaskStatus] | None,
        BeforeValidator(_split_commas),
        Field(description="One status or a comma list (any of them)"),
    ] = None
    priority: Annotated[
        list[TaskPriority] | None,
        BeforeValidator(_split_commas),
        Field(description="One priority or a comma list (any of them)"),
    ] = None
    completed: bool | None = None
    overdue: bool | None = None
    tags: Annotated[
        list[str] | None,
        BeforeValidator(_tags_filter),
        Field(description="Tasks carrying all of these tags (comma list)"),
    ] = None
    search: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=MAX_SEARCH_LENGTH,
            description='Full-text search: words match stems and prefixes, "quoted phrases" '
            "match in order, -word excludes",
        ),
    ] = None
    due_before: IsoDate | None = Field(default=None, description="due_date on or before")
    due_after: IsoDate | None = Field(default=None, description="due_date on or after")
    created_before: IsoDate | None = Field(default=None, description="created on or before (UTC)")
    created_after: IsoDate | None = Field(default=None, description="created on or after (UTC)")
    updated_since: IsoDateTimeUtcDefault | None = Field(
        default=None,
        description="updated at or after (RFC 3339; without an offset the time is UTC)",
    )
    assignee: Annotated[
        Literal["me", "none"] | Annotated[int, Field(ge=1, le=MAX_ID)] | None,
        Field(description="`me`, `none` or a user id"),
    ] = None
    scope: Literal["all", "owned", "assigned"] = "all"
    sort: Annotated[
        str,
        Field(
            description="Comma list of created_at, updated_at, due_date, priority, title, "
            "status, id; `-` for descending. Default -created_at (relevance when searching)."
        ),
    ] = ""
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT)] = 20
    offset: Annotated[
        int | None,
        Field(ge=0, le=MAX_OFFSET, description="Rows to skip; not together with `cursor`"),
    ] = None
    cursor: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=2048,
            description="The `next_cursor` of the previous page (keyset); not together with "
            "`offset`",
        ),
    ] = None
    _sort_keys: tuple[SortKey, ...] = PrivateAttr(default=())

    @field_validator("updated_since")
    @classmethod
    def _updated_since_in_utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)  # a timestamp without an offset is UTC
        try:
            # e.g. 0001-01-01T00:00:00+01:00 has no UTC equivalent: a 422, not a 500 later
            return value.astimezone(UTC)
        except OverflowError as exc:
            raise ValueError("updated_since is out of range") from exc

    @model_validator(mode="after")
    def _check(self) -> TaskListParams:
        if self.offset is not None and self.cursor is not None:
            raise ValueError("use either offset or cursor, not both")
        # Parsed here, so a bad sort is a 422 like any other bad parameter; kept for the plan.
        self._sort_keys = parse_sort(self.sort)
        return self

    @property
    def sort_keys(self) -> tuple[SortKey, ...]:
        return self._sort_keys

    @cached_property
    def fingerprint(self) -> str:
        """What a cursor is bound to: every parameter but the page's own (worked out once per
        instance; requests without a query string share one)."""
        return query_fingerprint(
            self.model_dump(mode="json", exclude={"limit", "offset", "cursor"})
        )
