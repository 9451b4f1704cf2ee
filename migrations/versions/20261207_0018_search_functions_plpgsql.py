"""The search's two query-time functions in PL/pgSQL instead of SQL (issue 21).

`task_search_expand` (0011) and `task_scoped_query` (0015) run once per search statement
(the scoped query three times: once per visible part). A SQL function whose body is more than
one expression is not inlined, and PostgreSQL 15 plans that body again on every call; a PL/pgSQL
function keeps the plan of its statement for the session. Same bodies, same results: only the
language, and so what a call costs, changes (docs/performance.md).

`task_scoped_terms`, which the search indexes are built on, is left as it is: its results are
in the indexes, and it runs per row written, not per search.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 02:30:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (signature, what it returns with its attributes, body): the bodies of 0011 and 0015, unchanged.
FUNCTIONS = (
    (
        "task_search_expand(query tsquery, max_words integer)",
        "tsquery STABLE PARALLEL SAFE",
        r"""
SELECT CASE
    WHEN count(*) = 0 THEN query  -- empty (only stop words): matches nothing, at no cost
    WHEN bool_and(replacement IS NOT NULL) THEN string_agg(replacement, '' ORDER BY n)::tsquery
END
FROM regexp_matches(query::text, $re$'(?:[^'\\]|''|\\.)*'(?::[*A-D]+)?|[^']+$re$, 'g')
    WITH ORDINALITY AS token (piece, n)
CROSS JOIN LATERAL (
    SELECT CASE
        WHEN piece[1] ~ '^''.*'':\*$' THEN (
            SELECT CASE
                WHEN count(*) = 0 THEN piece[1]
                WHEN count(*) <= max_words THEN '(' || string_agg(
                    '''' || replace(replace(word, '\', '\\'), '''', '''''') || '''',
                    ' | ' ORDER BY word
                ) || ')'
            END
            FROM (
                SELECT DISTINCT lexeme AS word
                FROM task_search_lexemes,
                    LATERAL (SELECT regexp_replace(
                        substr(piece[1], 2, length(piece[1]) - 4), '([''\\])\1', '\1', 'g'
                    ) AS prefix) term
                WHERE lexeme >= term.prefix AND lexeme < term.prefix || chr(1114111)
                ORDER BY lexeme
                LIMIT max_words + 1
            ) words
        )
        -- a weighted prefix (`:*A`; the search grammar writes none): not expanded
        WHEN piece[1] ~ '^''.*'':[A-D]*\*[A-D]*$' THEN NULL
        ELSE piece[1]
    END AS replacement
) replaced
""",
    ),
    (
        "task_scoped_query(scopes bigint[], query tsquery, tags varchar[])",
        "tsquery IMMUTABLE PARALLEL SAFE",
        r"""
SELECT CASE WHEN query IS NULL OR numnode(query) > 0 THEN string_agg('(' || concat_ws(' & ',
           '(' || regexp_replace(query::text, '''((?:[^'']|'''')*)''', '''' || scope || ':\1''',
                                 'g') || ')',
           (SELECT string_agg(
                '''' || replace(replace(scope || '#' || tag, '\', '\\'), '''', '''''') || '''',
                ' & ')
            FROM unnest(tags) AS tag)) || ')', ' | ')::tsquery END
FROM unnest(scopes) AS scope
""",
    ),
)


def upgrade() -> None:
    for signature, returns, body in FUNCTIONS:
        op.execute(
            f"CREATE OR REPLACE FUNCTION {signature} RETURNS {returns} LANGUAGE plpgsql"
            f" AS $fn$ BEGIN RETURN ({body}); END $fn$"
        )


def downgrade() -> None:
    for signature, returns, body in FUNCTIONS:
        op.execute(
            f"CREATE OR REPLACE FUNCTION {signature} RETURNS {returns} LANGUAGE sql"
            f" AS $fn${body}$fn$"
        )
