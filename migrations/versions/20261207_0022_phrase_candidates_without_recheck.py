"""A phrase search finds its candidates in the index without a recheck (issue 21, point 5).

GIN keeps no word positions, so for a query with a phrase (`'redi' <-> 'cach'`) it returns
every task holding the words and asks for each to be rechecked against the index's own
condition: `task_scoped_terms(...)` computed again for the row (its text form rewritten word by
word) and matched, once for every visible part. A member of 50 projects' "redis cache" spent
28 of its 35 ms rechecking 203 candidates.

`task_search_candidates(matching)` is the query the indexes are asked instead: the phrase's words
required together, in any order (every `<->` or `<N>` an `&`), and what must be absent left
out (`querytree`, which keeps the part an index can answer, drops the NOTs; as phrases they
could not be relaxed the same way). It matches every task the query matches, and GIN answers
it exactly, without a recheck. The search then checks the query itself on each candidate's own
search vector, a plain `@@` (taskapi.tasks.search_match). A query with no phrase is returned as
it is, and is checked by the index alone, as before.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07 10:30:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The text form of a tsquery separates operators from quoted words by spaces, and no word of a
# search holds a space (user text is split into words before it is quoted, and the lexicon's
# expansions are parser output), so ` <-> ` and ` <N> ` are only ever operators. `querytree`
# answers 'T' for a query an index cannot answer at all (stop words and exclusions only): left
# as it is.
SEARCH_CANDIDATES = """
CREATE FUNCTION task_search_candidates(matching tsquery)
RETURNS tsquery LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
    indexable text := querytree(matching);
BEGIN
    IF matching::text !~ ' <(-|[0-9]+)> ' OR indexable = 'T' THEN
        RETURN matching;
    END IF;
    RETURN regexp_replace(indexable, ' <(-|[0-9]+)> ', ' & ', 'g')::tsquery;
END
$fn$
"""


def upgrade() -> None:
    op.execute(SEARCH_CANDIDATES)


def downgrade() -> None:
    op.execute("DROP FUNCTION task_search_candidates(tsquery)")
