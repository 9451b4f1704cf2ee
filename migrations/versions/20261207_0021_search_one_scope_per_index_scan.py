"""A search looks up each of the caller's scopes in its own index scan (issue 21, point 5).

`task_scoped_query` (0015) writes a search once per scope of the caller and ORs them: for a
member of 50 projects, one tsquery of 50 branches. GIN then merges every entry of that query
for each task it returns (50 posting lists, 50 x 15 for a one-letter prefix) and evaluates the
50-branch query on each: a cost per match that grows with the number of the caller's projects.
A phrase is worse: GIN cannot check word positions, so every task holding the phrase's words is
rechecked, and the recheck computes `task_scoped_terms` of the row for every visible part.

`task_scoped_queries` returns the same search as an array, one query per scope, for
`terms @@ ANY(array)` in the project part (the parts of one scope keep `task_scoped_query`:
taskapi.tasks.search_match says why): a bitmap index scan runs one scan per element, each
reading one scope's entries, and ORs their results into one bitmap; the rows are read once.
Member of 50 projects, 1M tasks, matches counted in PostgreSQL (p50 of 20): `postgres` 9.2 ->
4.4 ms, `p` (16,769 matches) 45 -> 29 ms, the phrase "redis cache" 78 -> 8.8 ms.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07 10:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# PL/pgSQL, as 0018 made the others: it keeps its statement's plan for the session. Each element
# is `task_scoped_query` of one scope, so the two can never disagree on what a scope matches.
SCOPED_QUERIES = """
CREATE FUNCTION task_scoped_queries(scopes bigint[], query tsquery, tags varchar[])
RETURNS tsquery[] LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
BEGIN
    RETURN ARRAY(SELECT task_scoped_query(ARRAY[scope], query, tags)
                 FROM unnest(scopes) WITH ORDINALITY AS s(scope, n) ORDER BY n);
END
$fn$
"""


def upgrade() -> None:
    op.execute(SCOPED_QUERIES)


def downgrade() -> None:
    op.execute("DROP FUNCTION task_scoped_queries(bigint[], tsquery, varchar[])")
