"""Searches and tags filters read only the caller's own matches (issue 21, point 5).

The per-part GIN indexes of 0011, `(owner_id, tags, search_vector)` and the like (btree_gin),
keep each column's entries apart: a search intersects the owner's (or each project's) posting
list with the word's posting list over the whole part, so its cost followed how common the
word is across every user (a member of 50 projects searching a common word: 33 ms p95 at 1M
tasks, 166 ms at 5M, with the same tasks of their own; a two-tag filter 111 → 520 ms).

Here each part's index holds words already joined to their scope: `task_scoped_terms(scope,
search_vector, tags)` is the task's search vector with every word prefixed by the part's scope
(`'postgr':3A` of a task of project 7 becomes `'7:postgr':3A`, positions and weights kept) and
a term `7#backend` per tag. `task_scoped_query(scopes, query, tags)` writes a search (and a
tags filter) the same way, once per scope, OR'ed: `('7:postgr':* & '7#bug') | ('9:postgr':*
& '9#bug')`. A word's entry in the index then lists exactly that scope's tasks holding it, so
a search reads the entries of the caller's own scopes and nothing else, however many tasks
the others have; a prefix (`'7:p':*`) ranges over that scope's words only. The scoped match is
exactly `search_vector @@ query AND tags @> tags` for the scope's tasks (a task holds only
its own scope's terms), except for words the parser keeps at over 2,027 bytes: left out, as
prefixed they would pass tsvector's 2,047-byte limit.

Three expression indexes, one per visible part (taskapi.tasks.visibility), replace 0011's
three btree_gin ones.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 18:30:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PERSONAL = "project_id IS NULL AND deleted_at IS NULL"
ASSIGNED = "assignee_id IS NOT NULL AND project_id IS NULL AND deleted_at IS NULL"
PROJECT = "project_id IS NOT NULL AND deleted_at IS NULL"
# (part, scope column, where): as taskapi.models.tasks.Task.__table_args__.
PARTS = (
    ("personal_owner", "owner_id", PERSONAL),
    ("personal_assignee", "assignee_id", ASSIGNED),
    ("project", "project_id", PROJECT),
)

# tsvector's text form is a list of quoted words (a quote doubled inside) each followed by its
# positions: every quoted word gets the scope in front, the positions stay as they are. NULL for
# no scope (an unassigned task's assignee part). PARALLEL RESTRICTED, though safe: the planner
# prices the match's recheck per row (which an exact bitmap never runs) at 0.5% of the part,
# and took two parallel workers for a search of a few hundred rows (30 ms to start them, for a
# 2 ms scan); restricted, the scan stays in one process.
SCOPED_TERMS = r"""
CREATE FUNCTION task_scoped_terms(scope bigint, vector tsvector, tags varchar[])
RETURNS tsvector LANGUAGE sql IMMUTABLE PARALLEL RESTRICTED AS $$
SELECT CASE WHEN scope IS NOT NULL THEN regexp_replace(
           ts_delete(coalesce(vector, ''::tsvector), ARRAY(
               SELECT word FROM unnest(tsvector_to_array(vector)) AS word
               WHERE octet_length(word) > 2027))::text,
           '''((?:[^'']|'''')*)''', '''' || scope || ':\1''', 'g')::tsvector
       || array_to_tsvector(ARRAY(
           SELECT DISTINCT scope || '#' || tag FROM unnest(tags) AS tag WHERE tag IS NOT NULL))
END
$$
"""
# tsquery's text form quotes its terms the same way. A tag becomes a quoted term: backslash and
# quote escaped as tsquery's input wants them. NULL, which matches nothing, for no scopes and for
# a query of stop words alone (empty: it matches nothing either).
SCOPED_QUERY = r"""
CREATE FUNCTION task_scoped_query(scopes bigint[], query tsquery, tags varchar[])
RETURNS tsquery LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
SELECT CASE WHEN query IS NULL OR numnode(query) > 0 THEN string_agg('(' || concat_ws(' & ',
           '(' || regexp_replace(query::text, '''((?:[^'']|'''')*)''', '''' || scope || ':\1''',
                                 'g') || ')',
           (SELECT string_agg(
                '''' || replace(replace(scope || '#' || tag, '\', '\\'), '''', '''''') || '''',
                ' & ')
            FROM unnest(tags) AS tag)) || ')', ' | ')::tsquery END
FROM unnest(scopes) AS scope
$$
"""


def upgrade() -> None:
    op.execute(SCOPED_TERMS)
    op.execute(SCOPED_QUERY)
    with op.get_context().autocommit_block():
        for part, column, where in PARTS:
            op.create_index(
                f"ix_tasks_{part}_scoped",
                "tasks",
                [sa.text(f"task_scoped_terms({column}, search_vector, tags)")],
                postgresql_using="gin",
                postgresql_where=sa.text(where),
                postgresql_concurrently=True,
                if_not_exists=True,
            )
        for part, _, _ in PARTS:
            op.drop_index(
                f"ix_tasks_{part}_text",
                table_name="tasks",
                postgresql_concurrently=True,
                if_exists=True,
            )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for part, column, where in PARTS:
            op.create_index(
                f"ix_tasks_{part}_text",
                "tasks",
                [column, "tags", "search_vector"],
                postgresql_using="gin",
                postgresql_where=sa.text(where),
                postgresql_concurrently=True,
                if_not_exists=True,
            )
        for part, _, _ in PARTS:
            op.drop_index(
                f"ix_tasks_{part}_scoped",
                table_name="tasks",
                postgresql_concurrently=True,
                if_exists=True,
            )
    op.execute("DROP FUNCTION task_scoped_query(bigint[], tsquery, varchar[])")
    op.execute("DROP FUNCTION task_scoped_terms(bigint, tsvector, varchar[])")
