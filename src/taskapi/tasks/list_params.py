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
    BeforeValidator,
    Field,
    PrivateAttr,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from taskapi.kit.formats import IsoDate, IsoDateTimeUtcDefault
from taskapi.kit.openapi import STRIPPED_BY_PYTHON, trimmed_text_pattern
from taskapi.kit.pagination import query_fingerprint
from taskapi.kit.strict_query import StrictQuery
from taskapi.kit.validation import MAX_ID
from taskapi.models import TaskPriority, TaskStatus
from taskapi.tasks.schemas import MAX_TAG_LENGTH, TAG_FORBIDDEN, normalize_tag

MAX_SEARCH_LENGTH: Final = 2000
SORT_FIELDS: Final = ("created_at", "updated_at", "due_date", "priority", "title", "status", "id")
DEFAULT_SORT: Final = "-created_at"
MAX_LIMIT: Final = 100
MAX_OFFSET: Final = 10_000_000


# What the parsers below accept, stated for the schema (tests/fuzz/test_schemathesis.py fuzzes
# both and fails on any value the schema allows and the server refuses, or the other way round).
# A `tags=` value: comma-separated parts, each blank (skipped) or a tag once trimmed.
_TAG_PART: Final = trimmed_text_pattern(
    min_length=0, max_length=MAX_TAG_LENGTH, forbidden=TAG_FORBIDDEN, trimmed=STRIPPED_BY_PYTHON
)[1:-1]
TAGS_FILTER_PATTERN: Final = f"^{_TAG_PART}(?:,{_TAG_PART})*$"
# A `sort=` value: empty (the default), or comma-separated fields, each with an optional sign.
_SORT_KEY: Final = f"[{STRIPPED_BY_PYTHON}]*[-+]?(?:{'|'.join(SORT_FIELDS)})[{STRIPPED_BY_PYTHON}]*"
SORT_PATTERN: Final = f"^(?:{_SORT_KEY}(?:,{_SORT_KEY})*)?$"


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
    """`-due_date,title` -> its keys; a bad sort is a ValueError (a 422 from the validator).

    A field named again is dropped, as SQL would ignore it: once rows are ordered by a field,
    a later key on the same field can never separate two of them (`title,-title` is `title`)."""
    keys: list[SortKey] = []
    for part in (p.strip() for p in (raw or DEFAULT_SORT).split(",")):
        descending = part.startswith("-")
        name = part[1:] if part[:1] in ("-", "+") else part
        if name not in SORT_FIELDS:
            raise ValueError(f"unknown sort field {name!r}; use {', '.join(SORT_FIELDS)}")
        if all(key.field != name for key in keys):
            keys.append(SortKey(name, descending))
    return tuple(keys)


class TaskListParams(StrictQuery):
    """Filters are combined with AND; list values within one filter with OR (tags: with AND).
    Any other name is refused (taskapi.kit.strict_query)."""

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
        list[Annotated[str, WithJsonSchema({"type": "string", "pattern": TAGS_FILTER_PATTERN})]]
        | None,
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
    project_id: Annotated[
        Literal["none"] | Annotated[int, Field(ge=1, le=MAX_ID)] | None,
        Field(
            description="Tasks of one project you are a member of (404 for any other), or "
            "`none` for personal tasks only"
        ),
    ] = None
    sort: Annotated[
        str,
        Field(
            json_schema_extra={"pattern": SORT_PATTERN},
            description="Comma list of created_at, updated_at, due_date, priority, title, "
            "status, id; `-` for descending (a field named again is ignored). Default -created_at "
            "(relevance when searching).",
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
