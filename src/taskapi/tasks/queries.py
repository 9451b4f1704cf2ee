"""The SQL of tasks: statements built here, run by taskapi.tasks.repository.

GET /tasks, step 3 of 5: `list_statement(shape)` turns a plan's shape (taskapi.tasks.list_plan)
into its page statement (rows and total in one). Statements are built once per shape with a bind
parameter for every value, and kept: building SQLAlchemy constructs costs more CPU per request than
PostgreSQL spends answering them. Who may see a task comes from taskapi.tasks.visibility, when
a task is overdue from taskapi.tasks.overdue.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Final

from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    String,
    Update,
    and_,
    bindparam,
    false,
    func,
    literal_column,
    or_,
    select,
    true,
    tuple_,
    union_all,
    update,
)

from taskapi.kit.db import CompiledQuery
from taskapi.models import Task, TaskStatus
from taskapi.tasks.list_filters import OVERDUE, counted, counted_total, filter_conditions
from taskapi.tasks.list_plan import ListShape, OrderKey
from taskapi.tasks.search_match import PHRASE_CHECK, RANK, scoped_match
from taskapi.tasks.visibility import (
    USER_ID,
    VisiblePart,
    visible_matching,
    visible_parts,
    visible_to,
)

# --- one task, and writes ------------------------------------------------------------------------


def visible_task(user_id: int, task_id: int, *, for_update: bool) -> Select[Task]:
    query = select(Task).where(visible_to(user_id), Task.id == task_id)
    # FOR UPDATE serialises writers of one task: the workflow check and If-Match see the latest.
    return query.with_for_update() if for_update else query


def visible_tasks_locked(user_id: int, task_ids: Sequence[int]) -> Select[Task]:
    """The visible ones among `task_ids`, locked in id order (concurrent bulks can't deadlock)."""
    query = select(Task).where(visible_to(user_id), Task.id.in_(task_ids))
    return query.order_by(Task.id).with_for_update()


def update_tasks(task_ids: Sequence[int], values: dict[str, Any], now: datetime) -> Update:
    """One UPDATE for many locked rows; bumps each version and refreshes the loaded objects."""
    return (
        update(Task)
        .where(Task.id.in_(task_ids))
        .values(**values, version=Task.version + 1, updated_at=now)
        .returning(Task)
        .execution_options(synchronize_session=False, populate_existing=True)
    )


# What a list row carries: every column but the search vector, plus the two derived flags, so a
# page is built from plain rows without loading (and tracking) ORM objects.
_ITEM_COLUMNS: Final[dict[str, ColumnElement[Any]]] = {
    **{column.key: column for column in Task.__table__.c if column.key != "search_vector"},
    "completed": (Task.status == TaskStatus.DONE).label("completed"),
    "is_overdue": OVERDUE.label("is_overdue"),
}
# The columns of a list item, in TaskOut's order.
LIST_ITEM_COLUMNS: Final = (
    "id", "title", "description", "status", "completed", "priority", "due_date", "is_overdue",
    "tags", "owner_id", "assignee_id", "project_id", "attachment_count", "created_at", "updated_at",
    "completed_at", "version",
)  # fmt: skip

# GET /tasks/{id}: the task as a list item, if the caller can see it.
VISIBLE_ITEM: Final = CompiledQuery.of(
    select(*(_ITEM_COLUMNS[name] for name in LIST_ITEM_COLUMNS)).where(
        Task.id == bindparam("task_id"), visible_to(USER_ID)
    )
)


# --- the list: order and keyset ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Part:
    """One order key as SQL: how to sort by it and how to resume after a row."""

    key: OrderKey
    expression: Any  # a column or SQL expression

    def order_by(self) -> list[ColumnElement[Any]]:
        column = self.expression.desc() if self.key.descending else self.expression.asc()
        if self.key.nullable:
            return [self.expression.is_(None).asc(), column]  # missing values last, either way
        return [column]

    def after(self, value: Any) -> ColumnElement[bool]:
        """Rows strictly after `value` in this key's order."""
        if self.key.nullable and value is None:
            return false()  # nulls are last: nothing comes after them within this key
        beyond: ColumnElement[bool] = (
            self.expression < value if self.key.descending else self.expression > value
        )
        return or_(beyond, self.expression.is_(None)) if self.key.nullable else beyond

    def equal(self, value: Any) -> ColumnElement[bool]:
        result: ColumnElement[bool] = (
            self.expression.is_(None) if value is None else self.expression == value
        )
        return result


def _expression(key: OrderKey) -> Any:
    if key.name == "rank":
        return RANK
    if key.name == "title":
        return func.lower(Task.title)
    return Task.__table__.c[key.name]


def _after_values(shape: ListShape) -> list[ColumnElement[Any] | None]:
    """Bind parameters standing for a cursor's values (None where the value is null)."""
    assert shape.after_nulls is not None
    values: list[ColumnElement[Any] | None] = []
    for i, (key, is_null) in enumerate(zip(shape.order, shape.after_nulls, strict=True)):
        if is_null:
            values.append(None)
        elif key.name == "title":
            # Compared with lower(title), lower-cased by the same function: Python's str.lower()
            # differs from SQL lower() for some characters (e.g. "İ").
            values.append(func.lower(bindparam(f"after_{i}", type_=String())))
        else:
            values.append(bindparam(f"after_{i}"))
    return values


def _keyset(parts: Sequence[_Part], shape: ListShape) -> ColumnElement[bool]:
    """Rows after the cursor's, as one condition (see `_keysets`)."""
    return or_(*_keysets(parts, shape))


def _keysets(parts: Sequence[_Part], shape: ListShape) -> list[ColumnElement[bool]]:
    """Rows after the cursor's, as disjoint conditions, each an index range in list order (a
    part reads each with a scan of its own). A descending nullable first key with a value,
    `sort=-due_date`, is two: the dated rows after the cursor's date, then every undated row
    (missing dates come last); one `OR` of the two is not a range, and its scan read and
    dropped every dated row before the cursor."""
    values = _after_values(shape)
    first = parts[0]
    if first.key.nullable and first.key.descending and values[0] is not None:
        dated = [_Part(first.key._replace(nullable=False), first.expression), *parts[1:]]
        return [
            and_(first.expression.is_not(None), _keyset_of(dated, values)),
            first.expression.is_(None),
        ]
    return [_keyset_of(parts, values)]


def _keyset_of(
    parts: Sequence[_Part], values: Sequence[ColumnElement[Any] | None]
) -> ColumnElement[bool]:
    """Rows after `values`. Where the order's keys run in one direction, a row comparison over
    them in the index's order, `(created_at, id) < ($1, $2)`: an index condition, so the scan
    starts at the cursor. `(k1 after v1) OR (k1 = v1 AND k2 after v2) OR ...` alone is a
    filter, and a cursor 5,000 rows deep had the scan read and drop the 5,000 rows before it
    (its cost grew with depth, like an offset's). Past a change of direction or a null value
    the OR form decides, behind the comparison of the keys before it as a bound."""
    # The order as index columns: a nullable key is two, `(k IS NULL)` ascending, then k.
    columns: list[tuple[Any, bool, ColumnElement[Any] | None]] = []
    for part, value in zip(parts, values, strict=True):
        if part.key.nullable:
            columns.append((part.expression.is_(None), False, true() if value is None else false()))
        columns.append((part.expression, part.key.descending, value))
    descending = columns[0][1]
    run: list[tuple[Any, Any]] = []
    for expression, column_descending, value in columns:
        if column_descending != descending or value is None:
            break
        run.append((expression, value))
    whole = len(run) == len(columns)
    left = run[0][0] if len(run) == 1 else tuple_(*(expression for expression, _ in run))
    right = run[0][1] if len(run) == 1 else tuple_(*(value for _, value in run))
    if whole:
        return left < right if descending else left > right
    alternatives: list[ColumnElement[bool]] = []
    prefix: list[ColumnElement[bool]] = []
    for part, value in zip(parts, values, strict=True):
        alternatives.append(and_(true(), *prefix, part.after(value)))
        prefix.append(part.equal(value))
    after = or_(*alternatives)
    if len(run) == 1 and parts[0].key.nullable:
        # Only the first key's `(k IS NULL)`: at or beyond `true` is `k IS NULL` (after a null
        # value only nulls follow); beyond `false` is every row, no bound.
        return and_(parts[0].expression.is_(None), after) if values[0] is None else after
    return and_(left <= right if descending else left >= right, after)


def _order_by(parts: Sequence[_Part]) -> list[ColumnElement[Any]]:
    return [clause for part in parts for clause in part.order_by()]


def _parts_of(shape: ListShape, columns: Any) -> list[_Part]:
    """The order keys as the `sort_<i>` columns of a subquery or CTE."""
    return [_Part(key, columns[f"sort_{i}"]) for i, key in enumerate(shape.order)]


# --- the list: statements ------------------------------------------------------------------------


@lru_cache(maxsize=512)
def list_statement(shape: ListShape) -> CompiledQuery:
    """The page statement for one shape of list request: the page's rows (plus one), each with
    the filtered `total`; an empty page is one row of nulls carrying the total (`_page`).

    Each part of the visible set (visibility.visible_parts) is read in list order and cut at
    `reach` (offset + limit + 1) rows, so with the default order the owner's, the assignee's
    and each project's index yield a few rows instead of the user's whole set being fetched and
    sorted; the parts are then merged and cut again. The parts carry only ids and sort keys
    (`_page`). Rows carry the item columns, `total`, and `rank` when ordered by relevance. The
    total is summed from the trigger-kept counts where those hold the filters
    (list_filters.counted), else counted part by part. Searches and tags filters take
    `_matched_statement`.
    """
    parts = [_Part(key, _expression(key)) for key in shape.order]
    conditions = filter_conditions(shape)
    sort_keys = [part.expression.label(f"sort_{i}") for i, part in enumerate(parts)]
    if shape.search == "query" or shape.tags:
        return _matched_statement(shape, parts, conditions, sort_keys)
    visible = visible_parts(USER_ID, shape.project)
    keysets: Sequence[Any] = [None] if shape.after_nulls is None else _keysets(parts, shape)
    # Each part cut at `reach`: offset + limit + 1, which is the page's window from its first row.
    reach = bindparam("reach") if shape.window is None else _rows(shape.window)
    branches = [
        _branch(p, k, parts, conditions, sort_keys, reach) for p in visible for k in keysets
    ]
    merged = union_all(*branches).subquery("visible_page")
    total = counted_total(shape) if counted(shape) else _total(visible, conditions)
    chosen = select(merged.c.id, *(merged.c[f"sort_{i}"] for i in range(len(parts))))
    page = _page(shape, chosen.order_by(*_order_by(_parts_of(shape, merged.c))), total)
    return CompiledQuery.of(page)


def _rows(count: int) -> ColumnElement[Any]:
    """A LIMIT written into the statement. A generic plan, which PostgreSQL settles on for a
    prepared statement whose estimate does not depend on its values, prices `LIMIT $n` as a
    tenth of the rows it expects: an estimate that grows with the table, not with the
    caller's tasks, until the generic plan looks dearer than planning each request anew
    (docs/performance.md, point 5, item 10)."""
    return literal_column(str(int(count)), Integer)


def _total(visible: Sequence[VisiblePart], conditions: Sequence[ColumnElement[bool]]) -> Any:
    """The tasks counted part by part: each an index(-only) scan, where a count over
    visible_to's OR would be a bitmap heap scan of the user's whole visible set."""
    counts = [
        select(func.count()).select_from(Task).where(part.condition, *conditions).scalar_subquery()
        for part in visible
    ]
    total: ColumnElement[int] = counts[0]
    for count in counts[1:]:
        total = total + count
    return total


def _page(shape: ListShape, chosen: Select[Any], total: ColumnElement[int]) -> Select[Any]:
    """The page's rows read whole: `chosen` (ids and sort keys, in list order) cut to the page,
    joined to tasks by id. Candidates are many more than the page (up to `reach` per visible
    part: 1,050 for a member of 50 projects, for a page of 20), and with only their ids and sort
    keys a part's index answers them alone (an index-only scan for the default order); reading
    every candidate's whole row cost 4-6 times the page's statement.

    The rows hang off the total (a LEFT JOIN LATERAL of the page to its one-row count), so an
    empty page still answers one row, of nulls and the total: a second statement for the total
    alone saw another snapshot, and a write between the two could answer `total: 1` with no
    items."""
    if shape.window is not None:
        chosen_page = chosen.limit(_rows(shape.window)).subquery("chosen")
    else:
        chosen = chosen.limit(bindparam("page_limit")).offset(bindparam("page_offset"))
        chosen_page = chosen.subquery("chosen")
    outputs = [_ITEM_COLUMNS[name] for name in LIST_ITEM_COLUMNS]
    if shape.ranked:
        outputs.append(chosen_page.c.sort_0.label("rank"))  # the first key, computed once
    order = [chosen_page.c[f"sort_{i}"] for i in range(len(shape.order))]
    rows = (
        select(*outputs, *order)
        .select_from(chosen_page.join(Task, Task.id == chosen_page.c.id))
        .lateral("page")
    )
    one_total = select(total.label("total")).subquery("counted")
    columns = [rows.c[str(column.key)] for column in outputs]
    return (
        select(*columns, one_total.c.total)
        .select_from(one_total.outerjoin(rows, true()))
        .order_by(*_order_by(_parts_of(shape, rows.c)))
    )


def _branch(
    part: VisiblePart,
    keyset: ColumnElement[bool] | None,
    parts: Sequence[_Part],
    conditions: Sequence[ColumnElement[bool]],
    sort_keys: Sequence[ColumnElement[Any]],
    reach: ColumnElement[Any],
) -> Select[Any]:
    """One visible part's first `reach` rows in list order, as ids and sort keys. A part read
    project by project is a LATERAL subquery per project id: each project's index gives its
    rows in order, where one scan of `project_id IN (...)` would read and sort every task of
    every project."""
    condition = part.condition
    driver = None
    if part.per_project is not None:
        driver = part.per_project.subquery("member_project")
        within = () if part.within is None else (part.within,)
        condition = and_(Task.project_id == driver.c.project_id, *within)
    branch = select(Task.id.label("id"), *sort_keys).where(condition, *conditions)
    if keyset is not None:
        branch = branch.where(keyset)
    branch = branch.order_by(*_order_by(parts)).limit(reach)
    if driver is None:
        return branch
    per_project = branch.lateral("project_page")
    columns = [per_project.c[str(c.key)] for c in branch.selected_columns]
    return select(*columns).select_from(driver.join(per_project, true()))


def _matched_statement(
    shape: ListShape,
    parts: Sequence[_Part],
    conditions: Sequence[ColumnElement[bool]],
    sort_keys: Sequence[ColumnElement[Any]],
) -> CompiledQuery:
    """A search or a tags filter matches through a GIN index (one per visible part, each part's
    matches and no others), not in list order, and ranking needs every match anyway: the matches
    are found once (materialised) with only their ids and sort keys, then counted and paged, and
    only the page's rows are read whole. Materialising every match's full row (descriptions
    included) cost twice the whole statement; reading each part in list order and counting it
    again would scan every index twice, once per project (the tags filter for a member of 50
    projects: 45-50 ms, against ~25 ms this way)."""
    search = shape.search == "query"
    match = visible_matching(USER_ID, scoped_match(search, shape.tags))
    checked = (PHRASE_CHECK,) if search else ()
    found = select(Task.id.label("id"), *sort_keys).where(match, *checked, *conditions)
    matched = found.cte("matched").prefix_with("MATERIALIZED")
    matched_parts = _parts_of(shape, matched.c)
    chosen = select(matched.c.id, *(matched.c[f"sort_{i}"] for i in range(len(parts))))
    if shape.after_nulls is not None:
        chosen = chosen.where(_keyset(matched_parts, shape))
    total = select(func.count()).select_from(matched).scalar_subquery()
    page = _page(shape, chosen.order_by(*_order_by(matched_parts)), total)
    return CompiledQuery.of(page)
