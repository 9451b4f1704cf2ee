"""Who sees a task: the one definition, and every form of it the service uses.

A task is visible to the users its grants name (`GRANTS`): a personal task (no project) to its
owner and to its assignee; a project task to the project's members, and to nobody else (its owner
and assignee included, once they leave the project). Everything that needs the rule is derived
from that tuple:

* `visible_to(user)`: "the task is visible to `user`", for statements that look tasks up by id or
  by text (GET, search, writes, attachments, bulk);
* `visible_parts(user)`: the same set split into disjoint parts, one per grant, each of which an
  index can answer in list order (the list reads every part in order and merges them; the
  project part is read project by project, `VisiblePart.per_project`);
* `viewers(row)`: every user who sees one task, once each, rendered by taskapi.tasks.functions
  as the SQL function `task_viewers(tasks)` for code running inside PostgreSQL (the due-soon job:
  whom to tell);
* `stat_subjects(row)`: whose counts one task moves, rendered as `task_stat_subjects(tasks)` for
  the stats triggers: each viewer of a personal task, and for a project task the project itself
  (its members add up their projects' counts when they read; a change to a task of a project of
  1,000 members writes the same few rows as a change to a personal task).

Migrations install the rendered text; tests/internals/test_task_rules.py fails while the
installed text is not the rendering, so a rule cannot change in Python alone.

What a visible task lets each viewer do (read, edit, manage) is taskapi.tasks.access.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from sqlalchemy import (
    BigInteger,
    BindParameter,
    ColumnElement,
    CompoundSelect,
    Select,
    and_,
    any_,
    bindparam,
    cast,
    func,
    null,
    or_,
    select,
    true,
    union_all,
)
from sqlalchemy.dialects import postgresql

from taskapi.models import ProjectMember, Task

# The caller, in statements built once and run with bind values (`user_id` in the values).
USER_ID: BindParameter[int] = bindparam("user_id")

# A tasks row's columns by name: the table's own in queries, a function argument's (`t.title`)
# in the PostgreSQL functions rendered from these rules (taskapi.tasks.functions).
Columns = Mapping[str, ColumnElement[Any]]
TASK_COLUMNS: Final[Columns] = {column.key: column for column in Task.__table__.c}


def live(tasks: Columns) -> ColumnElement[bool]:
    """Not in the trash: a trashed task is visible to nobody and counted nowhere (restoring it
    is taskapi.tasks.trash's business)."""
    return tasks["deleted_at"].is_(None)


def member_projects(user: Any) -> Select[Any]:
    """The ids of the projects `user` is a member of (an index-only scan)."""
    return select(ProjectMember.project_id).where(ProjectMember.user_id == user)


def member_project_ids(user: Any) -> ColumnElement[Any]:
    """The same ids as one array, `ARRAY(SELECT ...)`, computed once per statement (an InitPlan).
    `project_id = ANY(<it>)` is an index condition, so the project grant joins the personal ones
    in a BitmapOr, and that in a BitmapAnd with another index (the text index of a search, the
    tags' GIN index): only rows both find are read. `project_id IN (SELECT ...)` is a filter,
    checked on every row the other index found (a search for a common word read 130,000 rows of
    2M to keep 3,854 for a member of 50 projects: 1.15 s, against 90 ms this way)."""
    return func.array(member_projects(user).scalar_subquery())


@dataclass(frozen=True, slots=True)
class PersonalGrant:
    """A personal task (no project) is visible to the user a column of it names."""

    column: str

    def holds(self, tasks: Columns, user: Any) -> ColumnElement[bool]:
        """The task is visible to `user` through this grant."""
        return and_(tasks["project_id"].is_(None), live(tasks), tasks[self.column] == user)

    def excludes(self, tasks: Columns, user: Any) -> ColumnElement[bool]:
        """The task is not visible to `user` (never null) through this grant."""
        column = tasks[self.column]
        other: ColumnElement[bool] = (
            column.is_distinct_from(user) if TASK_COLUMNS[self.column].nullable else column != user
        )
        return or_(tasks["project_id"].is_not(None), tasks["deleted_at"].is_not(None), other)

    def scope(
        self, tasks: Columns, user: Any
    ) -> tuple[ColumnElement[Any], ColumnElement[Any], bool]:
        """The column that scopes this grant's part, the caller's scopes in it (an array), and
        whether they may be many (else exactly one)."""
        return tasks[self.column], postgresql.array([cast(user, BigInteger)]), False

    def part(self, tasks: Columns) -> ColumnElement[bool]:
        """Every row this grant could show anyone: its indexes' predicate."""
        column = tasks[self.column]
        named = (column.is_not(None),) if TASK_COLUMNS[self.column].nullable else ()
        return and_(*named, tasks["project_id"].is_(None), live(tasks))

    def named(self, tasks: Columns) -> Select[Any]:
        """The users this grant names for one task row, as a one-column `user_id` query."""
        column = tasks[self.column]
        return select(column.label("user_id")).where(
            tasks["project_id"].is_(None), live(tasks), column.is_not(None)
        )

    def subjects(self, tasks: Columns) -> Select[Any]:
        """Whose stats the task counts in, as (`user_id`, `project_id`) rows: the user named."""
        named = self.named(tasks)
        return named.add_columns(cast(null(), BigInteger).label("project_id"))


@dataclass(frozen=True, slots=True)
class ProjectGrant:
    """A project task is visible to the members of its project."""

    def holds(self, tasks: Columns, user: Any) -> ColumnElement[bool]:
        return and_(live(tasks), tasks["project_id"] == any_(member_project_ids(user)))

    def excludes(self, tasks: Columns, user: Any) -> ColumnElement[bool]:
        return or_(
            tasks["project_id"].is_(None),
            tasks["deleted_at"].is_not(None),
            tasks["project_id"].not_in(member_projects(user)),
        )

    def scope(
        self, tasks: Columns, user: Any
    ) -> tuple[ColumnElement[Any], ColumnElement[Any], bool]:
        return tasks["project_id"], member_project_ids(user), True

    def part(self, tasks: Columns) -> ColumnElement[bool]:
        return and_(tasks["project_id"].is_not(None), live(tasks))

    def named(self, tasks: Columns) -> Select[Any]:
        return select(ProjectMember.user_id.label("user_id")).where(
            ProjectMember.project_id == tasks["project_id"], live(tasks)
        )

    def subjects(self, tasks: Columns) -> Select[Any]:
        """The project: one row, however many members it has."""
        project = tasks["project_id"]
        columns: tuple[ColumnElement[Any], ...] = (
            cast(null(), BigInteger).label("user_id"),
            project.label("project_id"),
        )
        return select(*columns).where(project.is_not(None), live(tasks))


Grant = PersonalGrant | ProjectGrant
GRANTS: Final[tuple[Grant, ...]] = (
    PersonalGrant("owner_id"),
    PersonalGrant("assignee_id"),
    ProjectGrant(),
)

# `project_id=` of GET /tasks and /tasks/stats: every visible task, personal ones only, or one
# project's (bound as `project_id`).
ProjectFilter = Literal["none", "id"] | None
PROJECT_ID: BindParameter[int] = bindparam("project_id")


def visible_to(user: Any, tasks: Columns = TASK_COLUMNS) -> ColumnElement[bool]:
    return or_(*(grant.holds(tasks, user) for grant in GRANTS))


# A match answered in a part's own index: (scope column, the caller's scopes, whether they may
# be many) -> condition.
ScopedMatch = Callable[[ColumnElement[Any], ColumnElement[Any], bool], ColumnElement[bool]]


def visible_matching(user: Any, matches: ScopedMatch) -> ColumnElement[bool]:
    """`visible_to(user)` for the tasks `matches` finds: in each grant's part, the match within
    the caller's scopes of it (their own id, their projects' ids), which that part's index
    answers from the scopes' own entries (taskapi.tasks.queries: searches and tags filters);
    then `visible_to` checked on the rows found. `IS TRUE` keeps it a check on those rows: as
    an index condition the planner took the project part's rows by project (50,000 for a
    member of 50 projects) and filtered them by the match, instead of reading the match's few
    hundred. Each grant's part and match are exactly its index's predicate and condition, so
    PostgreSQL does not evaluate the match again on every row found."""
    found = (
        and_(grant.part(TASK_COLUMNS), matches(*grant.scope(TASK_COLUMNS, user)))
        for grant in GRANTS
    )
    return and_(or_(*found), visible_to(user).is_(true()))


@dataclass(frozen=True, slots=True)
class VisiblePart:
    """One disjoint part of what a user sees. `condition` selects it; when `per_project` is
    set, the part is best read project by project: the member's project ids (`per_project`,
    one `project_id` column) each matched against `tasks.project_id`, so each project's index
    yields its rows in list order and a page reads a few rows per project."""

    condition: ColumnElement[bool]
    per_project: Select[Any] | None = None
    within: ColumnElement[bool] | None = None  # with per_project: what else each row must meet


def visible_parts(user: Any, project: ProjectFilter = None) -> tuple[VisiblePart, ...]:
    """`visible_to` as disjoint parts whose union is exactly it (narrowed by `project`): part i
    holds the tasks visible through grant i and through none before it (so a self-assigned
    personal task is in the owner's part only)."""
    parts = []
    for i, grant in enumerate(GRANTS):
        if isinstance(grant, ProjectGrant):
            if project == "none":
                continue
            projects = member_projects(user)
            if project == "id":
                projects = projects.where(ProjectMember.project_id == PROJECT_ID)
            # Personal grants hold only for personal tasks: nothing to exclude here. As an array
            # (member_project_ids): counts and GIN-filtered reads are one index scan each.
            in_projects = TASK_COLUMNS["project_id"] == any_(func.array(projects.scalar_subquery()))
            alive = live(TASK_COLUMNS)
            parts.append(VisiblePart(and_(alive, in_projects), projects, alive))
            continue
        if project == "id":
            continue
        earlier = (g.excludes(TASK_COLUMNS, user) for g in GRANTS[:i])
        parts.append(VisiblePart(and_(grant.holds(TASK_COLUMNS, user), *earlier)))
    return tuple(parts)


def viewers(tasks: Columns) -> CompoundSelect[Any]:
    """Every user who sees the task row `tasks`, once each: grant i's users less those an
    earlier grant names (the same partition as `visible_parts`, read the other way round)."""
    parts = []
    for i, grant in enumerate(GRANTS):
        named = grant.named(tasks)
        user = named.selected_columns.user_id
        parts.append(named.where(*(g.excludes(tasks, user) for g in GRANTS[:i])))
    return union_all(*parts)


def stat_subjects(tasks: Columns) -> CompoundSelect[Any]:
    """Whose counts the task row `tasks` moves, once each: (user_id, project_id) with one null."""
    parts = []
    for i, grant in enumerate(GRANTS):
        rows = grant.subjects(tasks)
        if isinstance(grant, PersonalGrant):
            user = rows.selected_columns.user_id
            rows = rows.where(*(g.excludes(tasks, user) for g in GRANTS[:i]))
        parts.append(rows)
    return union_all(*parts)
