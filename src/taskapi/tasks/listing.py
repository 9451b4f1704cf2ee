"""GET /tasks: query parameters, filters, sorting and keyset pagination.

Every query starts from the visible tasks (taskapi.tasks.visibility); this module only narrows
and orders them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Annotated, Any, Final, Literal, NamedTuple

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy import (
    BindParameter,
    ColumnElement,
    String,
    and_,
    bindparam,
    cast,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import REGCONFIG

from taskapi.kit.pagination import query_fingerprint
from taskapi.kit.validation import MAX_ID
from taskapi.models import SEARCH_CONFIG, Task, TaskPriority, TaskStatus
from taskapi.tasks.overdue import is_overdue
from taskapi.tasks.schemas import normalize_tag
from taskapi.tasks.visibility import USER_ID

MAX_SEARCH_LENGTH = 2000
MAX_SEARCH_TERMS = 32
SORT_FIELDS = ("created_at", "updated_at", "due_date", "priority", "title", "status", "id")
DEFAULT_SORT = "-created_at"


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


def parse_sort(raw: Any) -> list[SortKey]:
    if raw is None or raw == "":
        raw = DEFAULT_SORT
    if not isinstance(raw, str):
        raise ValueError("sort must be a comma-separated string")
    keys: list[SortKey] = []
    for part in (p.strip() for p in raw.split(",")):
        descending = part.startswith("-")
        name = part.removeprefix("-").removeprefix("+")
        if name not in SORT_FIELDS:
            raise ValueError(f"unknown sort field {name!r}; use {', '.join(SORT_FIELDS)}")
        if any(key.field == name for key in keys):
            raise ValueError(f"sort field {name!r} is repeated")
        keys.append(SortKey(name, descending))
    return keys


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
    due_before: date | None = Field(default=None, description="due_date on or before")
    due_after: date | None = Field(default=None, description="due_date on or after")
    created_before: date | None = Field(default=None, description="created on or before (UTC)")
    created_after: date | None = Field(default=None, description="created on or after (UTC)")
    updated_since: datetime | None = Field(default=None, description="updated at or after")
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
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    offset: Annotated[int | None, Field(ge=0, le=10_000_000)] = None
    cursor: Annotated[str | None, Field(min_length=1, max_length=2048)] = None

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
        parse_sort(self.sort or None)  # validate early: bad sort is a 422
        return self

    @property
    def sort_keys(self) -> list[SortKey]:
        return parse_sort(self.sort or None)

    @property
    def relevance_order(self) -> bool:
        return bool(self.search) and not self.sort

    def fingerprint_parts(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"limit", "offset", "cursor"})


# Query parameters that may repeat (`?status=a&status=b`); the rest take their last value.
_REPEATABLE = frozenset({"status", "priority", "tags"})
_FIELDS = frozenset(TaskListParams.model_fields)
_DEFAULT_PARAMS = TaskListParams()


async def list_params(request: Request) -> TaskListParams:
    """TaskListParams from the query string, read as FastAPI reads a query-parameter model (its
    errors are the same 422s) but without its per-field machinery, which costs more than the
    rest of a list request's Python. The route documents the parameters with
    `LIST_QUERY_PARAMETERS`."""
    query = request.query_params
    if not query:
        return _DEFAULT_PARAMS  # never mutated
    data: dict[str, Any] = {}
    for key in query:
        if key in _FIELDS:
            data[key] = query.getlist(key) if key in _REPEATABLE else query[key]
    try:
        return TaskListParams.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("query", *error["loc"])} for error in exc.errors(include_url=False)]
        ) from None


_DEFAULT_FINGERPRINT = query_fingerprint(_DEFAULT_PARAMS.fingerprint_parts())


def fingerprint_of(params: TaskListParams) -> str:
    """What a cursor is bound to; the plain first page's is worked out once."""
    if params is _DEFAULT_PARAMS:
        return _DEFAULT_FINGERPRINT
    return query_fingerprint(params.fingerprint_parts())


def _query_parameters_of(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The OpenAPI parameters FastAPI itself documents for `model` as a query-parameter model."""
    docs = FastAPI()

    async def endpoint(params: Any) -> None:
        del params

    # Set here, not written: this module's annotations are strings, and `model` is a local.
    endpoint.__annotations__ = {"params": Annotated[model, Query()], "return": None}
    docs.get("/")(endpoint)
    parameters: list[dict[str, Any]] = docs.openapi()["paths"]["/"]["get"]["parameters"]
    return parameters


LIST_QUERY_PARAMETERS: Final = _query_parameters_of(TaskListParams)


# --- search --------------------------------------------------------------------------------------

_TOKEN = re.compile(r"(-?)\"([^\"]*)\"?|(-?)([^\s\"]+)")
# What may stand inside one quoted tsquery term: word characters and the joiners PostgreSQL's
# parser keeps within a single lexeme (node.js, e-mail, alice@example.com, v2.0, C++, C#).
# Quote and backslash are never kept, so nothing can leave the quotes.
_PIECE = re.compile(r"[\w.@/+#-]+")


def _pieces(token: str) -> list[str]:
    """Quoted terms for one whitespace-free token; characters outside _PIECE separate terms."""
    return [f"'{piece}'" for piece in _PIECE.findall(token) if any(c.isalnum() for c in piece)]


def _phrase(terms: list[str]) -> str:
    return terms[0] if len(terms) == 1 else "(" + " <-> ".join(terms) + ")"


def build_tsquery(text: str) -> str | None:
    """Turn user input into tsquery syntax in which every user-supplied piece is a quoted term,
    so no input can inject operators. Words match as prefixes (`sql` finds `SQLAlchemy`),
    "quoted phrases" match adjacent words in order, and a leading `-` excludes a word or phrase.
    PostgreSQL then parses, unaccents and stems each term with the search configuration."""
    include: list[str] = []
    exclude: list[str] = []
    for match in _TOKEN.finditer(text):
        negated = bool(match.group(1) or match.group(3))
        phrase = match.group(2)
        if phrase is not None:
            terms = [term for word in phrase.split() for term in _pieces(word)]
        else:
            terms = _pieces(match.group(4))
            if terms:
                terms[-1] += ":*"
        if not terms:
            continue
        (exclude if negated else include).append(_phrase(terms))
        if len(include) + len(exclude) >= MAX_SEARCH_TERMS:
            break
    if not include:
        # Only exclusions (or nothing searchable): nothing positive to rank or match on.
        return None
    return " & ".join(include + [f"!{term}" for term in exclude])


# --- the statement's shape and its values --------------------------------------------------------
#
# A list statement is built once per *shape* (which filters are present, the sort, whether a
# cursor is followed) with bind parameters for every value, and cached: building SQLAlchemy
# constructs costs more CPU per request than PostgreSQL spends answering the query.

# A scalar subquery, so PostgreSQL parses and stems the query once per statement (an InitPlan).
# As a plain call to_tsquery(config, $n) stays unevaluated in a prepared statement's generic plan
# and runs again for every matching row, in the recheck and in ts_rank: that was more than half
# of a search's execution (2.4 ms -> 1.1 ms for 316 matches).
TSQUERY = select(
    func.to_tsquery(cast(literal(SEARCH_CONFIG), REGCONFIG), bindparam("tsquery"))
).scalar_subquery()
# ts_rank, not ts_rank_cd: cover density also weighs proximity, at four times the cost per
# match (4.7 ms vs 1.1 ms for 554 matches); title-over-description weights and term frequency
# still order the results.
RANK = func.ts_rank(Task.search_vector, TSQUERY)
TODAY: BindParameter[date] = bindparam("today")
# Statuses and priorities are bound one parameter each (IN ($a, $b)), their number part of the
# shape (at most 4 x 4 variants): PostgreSQL's generic plan for `= ANY($array)` cannot know the
# array's size and scans the user's whole index range filtering it (~1 ms at 10,000 tasks)
# where `IN` with one parameter per value seeks straight to the matching entries.


class ListShape(NamedTuple):
    """Everything about a list request that changes the SQL text; values are bound separately."""

    scope: str
    assignee: Literal["me", "none", "id"] | None
    status: int  # how many statuses are asked for (0: no filter)
    priority: int
    completed: bool | None
    overdue: bool | None
    tags: bool
    due_before: bool
    due_after: bool
    created_before: bool
    created_after: bool
    updated_since: bool
    search: Literal["query", "nothing"] | None  # "nothing": only exclusions/punctuation given
    sort: tuple[SortKey, ...]
    relevance: bool
    after_nulls: tuple[bool, ...] | None  # following a cursor: which of its values are null


def list_shape(params: TaskListParams, tsquery: str | None, after: list[Any] | None) -> ListShape:
    assignee: Literal["me", "none", "id"] | None = (
        params.assignee
        if params.assignee in ("me", "none")
        else ("id" if params.assignee is not None else None)
    )
    search: Literal["query", "nothing"] | None = None
    if params.search is not None:
        search = "query" if tsquery is not None else "nothing"
    return ListShape(
        scope=params.scope,
        assignee=assignee,
        status=len(set(params.status or ())),
        priority=len(set(params.priority or ())),
        completed=params.completed,
        overdue=params.overdue,
        tags=bool(params.tags),
        due_before=params.due_before is not None,
        due_after=params.due_after is not None,
        # (date.max + 1 day would overflow; every task was created on or before it anyway)
        created_before=params.created_before is not None and params.created_before < date.max,
        created_after=params.created_after is not None,
        updated_since=params.updated_since is not None,
        search=search,
        sort=tuple(params.sort_keys),
        relevance=search == "query" and params.relevance_order,
        after_nulls=None if after is None else tuple(value is None for value in after),
    )


def list_values(
    params: TaskListParams,
    user_id: int,
    today: date,
    tsquery: str | None,
    after: list[Any] | None,
) -> dict[str, Any]:
    """The bind values for a statement of `list_shape(params, ...)`."""
    values: dict[str, Any] = {"user_id": user_id, "today": today}
    if params.assignee not in (None, "me", "none"):
        values["assignee_id"] = params.assignee
    if params.status:
        values.update(_numbered("any_status", params.status))
    if params.priority:
        values.update(_numbered("any_priority", params.priority))
    if params.tags:
        values["tags"] = params.tags
    if params.due_before is not None:
        values["due_before"] = params.due_before
    if params.due_after is not None:
        values["due_after"] = params.due_after
    if params.created_before is not None and params.created_before < date.max:
        values["created_before"] = _start_of(params.created_before + timedelta(days=1))
    if params.created_after is not None:
        values["created_after"] = _start_of(params.created_after)
    if params.updated_since is not None:
        values["updated_since"] = params.updated_since  # already in UTC (its validator)
    if tsquery is not None:
        values["tsquery"] = tsquery
    for i, value in enumerate(after or ()):
        if value is not None:
            values[f"after_{i}"] = value
    return values


def _numbered(name: str, items: Sequence[Any]) -> dict[str, Any]:
    # Duplicates dropped (`status=todo,todo`), in a stable order: the shape counts distinct ones.
    return {f"{name}_{i}": item for i, item in enumerate(dict.fromkeys(items))}


def _parameters(name: str, count: int) -> list[BindParameter[Any]]:
    return [bindparam(f"{name}_{i}") for i in range(count)]


# --- filters -------------------------------------------------------------------------------------


def _start_of(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def filter_conditions(shape: ListShape) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if shape.scope == "owned":
        conditions.append(Task.owner_id == USER_ID)
    elif shape.scope == "assigned":
        conditions.append(Task.assignee_id == USER_ID)
    if shape.assignee == "me":
        conditions.append(Task.assignee_id == USER_ID)
    elif shape.assignee == "none":
        conditions.append(Task.assignee_id.is_(None))
    elif shape.assignee == "id":
        conditions.append(Task.assignee_id == bindparam("assignee_id"))
    if shape.status:
        conditions.append(Task.status.in_(_parameters("any_status", shape.status)))
    if shape.priority:
        conditions.append(Task.priority.in_(_parameters("any_priority", shape.priority)))
    if shape.completed is not None:
        is_done = Task.status == TaskStatus.DONE
        conditions.append(is_done if shape.completed else Task.status != TaskStatus.DONE)
    if shape.overdue is not None:
        overdue = is_overdue(Task.due_date, Task.status, TODAY)
        conditions.append(overdue if shape.overdue else not_(overdue))
    if shape.tags:
        conditions.append(Task.tags.contains(bindparam("tags")))
    if shape.due_before:
        conditions.append(Task.due_date <= bindparam("due_before"))
    if shape.due_after:
        conditions.append(Task.due_date >= bindparam("due_after"))
    if shape.created_before:
        conditions.append(Task.created_at < bindparam("created_before"))
    if shape.created_after:
        conditions.append(Task.created_at >= bindparam("created_after"))
    if shape.updated_since:
        conditions.append(Task.updated_at >= bindparam("updated_since"))
    if shape.search == "nothing":
        conditions.append(false())
    elif shape.search == "query":
        conditions.append(Task.search_vector.bool_op("@@")(TSQUERY))
    return conditions


# --- ordering and keyset -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderPart:
    """One column of the ORDER BY, with what is needed to resume after a row."""

    name: str
    expression: Any  # a column or SQL expression
    descending: bool
    nullable: bool = False

    def order_by(self) -> list[ColumnElement[Any]]:
        column = self.expression.desc() if self.descending else self.expression.asc()
        if self.nullable:
            # Missing values last in either direction.
            return [self.expression.is_(None).asc(), column]
        return [column]


@lru_cache(maxsize=256)
def order_parts(sort: tuple[SortKey, ...], relevance: bool) -> tuple[OrderPart, ...]:
    parts: list[OrderPart] = []
    if relevance:
        parts.append(OrderPart("rank", RANK, descending=True))
        keys: tuple[SortKey, ...] = (SortKey("id", True),)
    else:
        keys = sort
    for key in keys:
        if key.field == "due_date":
            parts.append(OrderPart("due_date", Task.due_date, key.descending, nullable=True))
        elif key.field == "title":
            parts.append(OrderPart("title", func.lower(Task.title), key.descending))
        else:
            parts.append(OrderPart(key.field, getattr(Task, key.field), key.descending))
    if parts[-1].name != "id":
        # Unique tie-breaker so every row has exactly one place in the order.
        parts.append(OrderPart("id", Task.id, parts[-1].descending))
    return tuple(parts)


def after_parameters(
    parts: tuple[OrderPart, ...], nulls: tuple[bool, ...]
) -> list[ColumnElement[Any] | None]:
    """Bind parameters standing for a cursor's values (None where the value is null)."""
    values: list[ColumnElement[Any] | None] = []
    for i, (part, null) in enumerate(zip(parts, nulls, strict=True)):
        if null:
            values.append(None)
        elif part.name == "title":
            # Compared with the sort expression lower(title): lower-cased by the same function.
            values.append(func.lower(bindparam(f"after_{i}", type_=String())))
        else:
            values.append(bindparam(f"after_{i}"))
    return values


def cursor_values(row: Any, parts: tuple[OrderPart, ...], rank_value: float | None) -> list[Any]:
    """The values of `parts` for a list row (anything indexable by column name), to resume after
    it."""
    values: list[Any] = []
    for part in parts:
        if part.name == "rank":
            values.append(rank_value)
        elif part.name == "title":
            # The raw title: PostgreSQL lower-cases it when comparing (see _decode_value), since
            # Python's str.lower() differs from SQL lower() for some characters (e.g. "İ").
            values.append(row["title"])
        else:
            value = row[part.name]
            if isinstance(value, datetime | date):
                value = value.isoformat()
            elif isinstance(value, TaskStatus | TaskPriority):
                value = value.value
            values.append(value)
    return values


def _decode_value(part: OrderPart, raw: Any) -> Any:
    if raw is None:
        if part.nullable:
            return None
        raise ValueError("null cursor value")
    if part.name in ("created_at", "updated_at"):
        return datetime.fromisoformat(str(raw))
    if part.name == "due_date":
        return date.fromisoformat(str(raw))
    if part.name == "priority":
        return TaskPriority(raw)
    if part.name == "status":
        return TaskStatus(raw)
    if part.name == "id":
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise ValueError("bad id")
        return raw
    if part.name == "rank":
        return float(raw)
    if part.name == "title":
        return str(raw)
    raise ValueError(part.name)


def decode_cursor_values(parts: tuple[OrderPart, ...], raw: list[Any]) -> list[Any]:
    if len(raw) != len(parts):
        raise ValueError("cursor does not match the sort")
    return [_decode_value(part, value) for part, value in zip(parts, raw, strict=True)]


def _after(part: OrderPart, value: Any) -> ColumnElement[bool]:
    """Rows strictly after `value` in this part's order."""
    expression = part.expression
    if part.nullable:
        if value is None:
            return false()  # nulls are last: nothing comes after them within this part
        beyond = expression < value if part.descending else expression > value
        return or_(beyond, expression.is_(None))
    condition: ColumnElement[bool] = expression < value if part.descending else expression > value
    return condition


def _equal(part: OrderPart, value: Any) -> ColumnElement[bool]:
    condition: ColumnElement[bool] = (
        part.expression.is_(None) if value is None else part.expression == value
    )
    return condition


def keyset_condition(parts: Sequence[OrderPart], values: Sequence[Any]) -> ColumnElement[bool]:
    """(k1 after v1) OR (k1 = v1 AND k2 after v2) OR ... — works for mixed directions."""
    alternatives: list[ColumnElement[bool]] = []
    prefix: list[ColumnElement[bool]] = []
    for part, value in zip(parts, values, strict=True):
        alternatives.append(and_(true(), *prefix, _after(part, value)))
        prefix.append(_equal(part, value))
    return or_(*alternatives)
