"""GET /tasks, step 2 of 5: the plan, decided from the parameters alone (no I/O).

Which filters apply, the order (by relevance or by the requested sort, decided here once), where
a cursor resumes, and the page's window. `ListPlan.shape` is everything that changes the SQL
text (taskapi.tasks.queries builds one statement pair per shape and keeps it); `values` are the
bind values for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal, NamedTuple

from taskapi.kit.pagination import CursorCodec, InvalidCursor
from taskapi.models import TaskPriority, TaskStatus
from taskapi.tasks.list_params import SortKey, TaskListParams
from taskapi.tasks.search_query import build_tsquery


class OrderKey(NamedTuple):
    """One key of the list's order: an item column, `title` compared lower-cased, or `rank`."""

    name: str
    descending: bool
    nullable: bool = False  # only due_date: nulls last in either direction


class ListShape(NamedTuple):
    """Everything about a list request that changes the SQL text; values are bound separately.
    Statuses and priorities count as many parameters as distinct values are asked for (IN ($a,
    $b) seeks straight to them, where `= ANY($array)` in a generic plan scans the whole range)."""

    scope: str
    project: Literal["none", "id"] | None  # project_id=none, project_id=<id>, or every task
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
    order: tuple[OrderKey, ...]
    after_nulls: tuple[bool, ...] | None  # following a cursor: which of its values are null
    # A page from the first row on (no offset: a first page, or one after a cursor): how many
    # rows it reads (limit + 1), written into the SQL as a constant. None: an offset page, its
    # window bound (`reach`, `page_limit`, `page_offset`), so offsets share one statement.
    window: int | None

    @property
    def ranked(self) -> bool:
        return self.order[0].name == "rank"


@dataclass(frozen=True, slots=True)
class ListPlan:
    shape: ListShape
    values: dict[str, Any]  # every bind value of the page and total statements
    limit: int
    offset: int | None  # None when a cursor is followed
    fingerprint: str  # what the page's next cursor is bound to


def plan_list(params: TaskListParams, user_id: int, today: date, cursors: CursorCodec) -> ListPlan:
    """The plan for `params` as seen by `user_id` on `today`; InvalidCursor for a cursor that
    is forged, malformed or minted for other parameters."""
    tsquery = build_tsquery(params.search) if params.search else None
    search: Literal["query", "nothing"] | None = None
    if params.search is not None:
        search = "query" if tsquery is not None else "nothing"
    # Relevance is the order only when searching for something with no sort asked for.
    order = _order(params.sort_keys, ranked=search == "query" and not params.sort)
    fingerprint = params.fingerprint
    after = None
    if params.cursor is not None:
        try:
            after = _decode_after(order, cursors.decode(params.cursor, fingerprint))
        except (ValueError, TypeError) as exc:
            raise InvalidCursor() from exc
    # (date.max + 1 day would overflow; every task was created on or before it anyway)
    created_before = params.created_before if params.created_before != date.max else None
    assignee: Literal["me", "none", "id"] | None = None
    if params.assignee is not None:
        assignee = params.assignee if params.assignee in ("me", "none") else "id"
    statuses = list(dict.fromkeys(params.status or ()))  # `status=todo,todo` is one status
    priorities = list(dict.fromkeys(params.priority or ()))
    project: Literal["none", "id"] | None = None
    if params.project_id is not None:
        project = "none" if params.project_id == "none" else "id"
    shape = ListShape(
        scope=params.scope,
        project=project,
        assignee=assignee,
        status=len(statuses),
        priority=len(priorities),
        completed=params.completed,
        overdue=params.overdue,
        tags=bool(params.tags),
        due_before=params.due_before is not None,
        due_after=params.due_after is not None,
        created_before=created_before is not None,
        created_after=params.created_after is not None,
        updated_since=params.updated_since is not None,
        search=search,
        order=order,
        after_nulls=None if after is None else tuple(value is None for value in after),
        window=None if params.offset else params.limit + 1,
    )
    offset = params.offset or 0
    values: dict[str, Any] = {
        "user_id": user_id,
        "today": today,
        # Each visible part is cut at `reach` rows before they are merged and cut to the page.
        "reach": offset + params.limit + 1,
        "page_limit": params.limit + 1,  # one more row tells whether another page follows
        "page_offset": offset,
    }
    if assignee == "id":
        values["assignee_id"] = params.assignee
    if project == "id":
        values["project_id"] = params.project_id
    values.update({f"any_status_{i}": status for i, status in enumerate(statuses)})
    values.update({f"any_priority_{i}": priority for i, priority in enumerate(priorities)})
    optional = {
        "tags": params.tags or None,
        "due_before": params.due_before,
        "due_after": params.due_after,
        "created_before": _start_of(created_before + timedelta(days=1)) if created_before else None,
        "created_after": _start_of(params.created_after) if params.created_after else None,
        "updated_since": params.updated_since,  # already in UTC (its validator)
        "tsquery": tsquery,
    }
    values.update({name: value for name, value in optional.items() if value is not None})
    values.update({f"after_{i}": value for i, value in enumerate(after or ()) if value is not None})
    return ListPlan(
        shape=shape,
        values=values,
        limit=params.limit,
        offset=None if params.cursor is not None else offset,
        fingerprint=fingerprint,
    )


def _start_of(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _order(sort: Sequence[SortKey], *, ranked: bool) -> tuple[OrderKey, ...]:
    if ranked:
        keys = [OrderKey("rank", descending=True), OrderKey("id", descending=True)]
    else:
        keys = [OrderKey(k.field, k.descending, nullable=k.field == "due_date") for k in sort]
    if keys[-1].name != "id":
        # A unique tie-breaker, so every row has exactly one place in the order.
        keys.append(OrderKey("id", keys[-1].descending))
    return tuple(keys)


# --- where a cursor resumes: its values, as taskapi.tasks.list_page wrote them ------------------


def _decode_after(order: tuple[OrderKey, ...], raw: list[Any]) -> list[Any]:
    if len(raw) != len(order):
        raise ValueError("cursor does not match the sort")
    return [_decode_value(key, value) for key, value in zip(order, raw, strict=True)]


def _decode_value(key: OrderKey, raw: Any) -> Any:
    if raw is None:
        if key.nullable:
            return None
        raise ValueError("null cursor value")
    if key.name in ("created_at", "updated_at"):
        return datetime.fromisoformat(str(raw))
    if key.name == "due_date":
        return date.fromisoformat(str(raw))
    if key.name == "priority":
        return TaskPriority(raw)
    if key.name == "status":
        return TaskStatus(raw)
    if key.name == "id":
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise ValueError("bad id")
        return raw
    if key.name == "rank":
        return float(raw)
    if key.name == "title":
        return str(raw)
    raise ValueError(key.name)
