"""Search and tag filters answered per visible part (issue 17: a member of 50 projects at 2M rows).

A search word matches as a prefix (`postgres` is `'postgr':*`), and GIN answers a prefix by
collecting every row of every matching word in the whole table first (130,000 rows for a common
word at 2M rows, whatever the user sees): 50-70 ms. Indexes per visible part, `(project_id,
tags, search_vector)` and the like (btree_gin), would let each part's scan skip to its own rows,
but only for exact words: with a prefix each project's scan collects the whole posting list
again (687 ms for 50 projects). So a prefix is first turned into the words it stands for:

* `task_search_lexemes`: every word (lexeme) any task's search vector has held, kept by a
  trigger on `tasks` in the writing transaction. Never pruned: a word no task holds any more
  only adds an empty branch to a search. No unique constraint: a unique index would make two
  transactions adding the same new word wait on each other (and two adding two new words in
  opposite orders deadlock); instead a word is added when no committed row holds it, so a
  duplicate needs two writers introducing the same word at the same moment, and is harmless.
* `task_search_expand(query, max_words)`: the query with each prefix term replaced by the OR
  of the words it stands for (`'postgr':*` → `'postgr' | 'postgresql'`), a prefix standing for
  no word left as it is (it matches nothing, at no cost), and NULL when a prefix stands for
  more than `max_words` words (one letter, say): the caller then filters the user's visible
  tasks by the original query instead (taskapi.tasks.queries). The expanded query matches
  exactly the rows the original does, since every word of every task is in the lexicon.
* Three GIN indexes, one per visible part (taskapi.tasks.visibility), over the part's column,
  `tags` and `search_vector`, replacing the table-wide `ix_tasks_tags` and
  `ix_tasks_search_vector`: a search or tags filter reads each part's matches (the owner's,
  the assignee's, each member project's) and no others.

Measured at 2M rows for a member of 50 projects (docs/projects-performance.md): search for a
common word 74-95 → 22-27 ms p95, a two-tag filter 137-147 → 24-34 ms.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 10:30:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PERSONAL = "project_id IS NULL AND deleted_at IS NULL"
ASSIGNED = "assignee_id IS NOT NULL AND project_id IS NULL AND deleted_at IS NULL"
PROJECT = "project_id IS NOT NULL AND deleted_at IS NULL"
# (name, part column, where): as taskapi.models.tasks.Task.__table_args__.
TEXT_INDEXES = (
    ("ix_tasks_personal_owner_text", "owner_id", PERSONAL),
    ("ix_tasks_personal_assignee_text", "assignee_id", ASSIGNED),
    ("ix_tasks_project_text", "project_id", PROJECT),
)
REPLACED = (("ix_tasks_tags", "tags"), ("ix_tasks_search_vector", "search_vector"))

# New tasks: once per statement over all its rows (a transition table), so a batch or bulk insert
# looks each word up once; an edit: per row, and only when the text changed (the WHEN clause).
ADD_WORDS = (
    r"""
CREATE FUNCTION task_search_lexemes_add_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_search_lexemes (lexeme)
    SELECT DISTINCT word FROM inserted_tasks, unnest(tsvector_to_array(search_vector)) AS word
    WHERE NOT EXISTS (SELECT 1 FROM task_search_lexemes known WHERE known.lexeme = word);
    RETURN NULL;
END
$$
""",
    r"""
CREATE FUNCTION task_search_lexemes_add_edited() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO task_search_lexemes (lexeme)
    SELECT word FROM unnest(tsvector_to_array(NEW.search_vector)) AS word
    WHERE NOT EXISTS (SELECT 1 FROM task_search_lexemes known WHERE known.lexeme = word);
    RETURN NULL;
END
$$
""",
)

# A tsquery's text is a sequence of quoted terms (quote and backslash doubled inside, `:*` after
# a prefix, weight letters after either) and operators; each prefix term is replaced in place.
# The lexicon's range `[prefix, prefix || U+10FFFF)` holds exactly the words starting with the
# prefix (the column compares code points, COLLATE "C"), as an index range a generic plan can
# use, where `lexeme ^@ prefix` would be a filter over the rest of the index; U+10FFFF is a
# noncharacter the text parser never keeps in a word.
EXPAND = r"""
CREATE FUNCTION task_search_expand(query tsquery, max_words integer) RETURNS tsquery
LANGUAGE sql STABLE PARALLEL SAFE AS $$
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
$$
"""


def upgrade() -> None:
    # btree_gin (GIN operator classes for plain columns) is a trusted extension, as unaccent
    # (0002): a database owner may create it, no superuser needed.
    op.execute("CREATE EXTENSION IF NOT EXISTS btree_gin")
    op.create_table(
        "task_search_lexemes",
        sa.Column("lexeme", sa.Text(collation="C"), nullable=False),
    )
    op.create_index("ix_task_search_lexemes_lexeme", "task_search_lexemes", ["lexeme"])
    for function in ADD_WORDS:
        op.execute(function)
    # The triggers first, then the words already there: both commit together, and CREATE
    # TRIGGER holds off writers to `tasks` until then, so no word is missed.
    op.execute(
        "CREATE TRIGGER tasks_search_lexemes_insert AFTER INSERT ON tasks "
        "REFERENCING NEW TABLE AS inserted_tasks "
        "FOR EACH STATEMENT EXECUTE FUNCTION task_search_lexemes_add_inserted()"
    )
    op.execute(
        "CREATE TRIGGER tasks_search_lexemes_update AFTER UPDATE ON tasks FOR EACH ROW "
        "WHEN (OLD.search_vector IS DISTINCT FROM NEW.search_vector) "
        "EXECUTE FUNCTION task_search_lexemes_add_edited()"
    )
    op.execute(
        "INSERT INTO task_search_lexemes (lexeme) SELECT DISTINCT word "
        "FROM tasks, unnest(tsvector_to_array(search_vector)) AS word ORDER BY word"
    )
    op.execute(EXPAND)
    op.execute("ANALYZE task_search_lexemes")
    with op.get_context().autocommit_block():
        for name, column, where in TEXT_INDEXES:
            op.create_index(
                name,
                "tasks",
                [column, "tags", "search_vector"],
                postgresql_using="gin",
                postgresql_where=sa.text(where),
                postgresql_concurrently=True,
                if_not_exists=True,
            )
        for name, _ in REPLACED:
            op.drop_index(name, table_name="tasks", postgresql_concurrently=True, if_exists=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for name, column in REPLACED:
            op.create_index(
                name,
                "tasks",
                [column],
                postgresql_using="gin",
                postgresql_concurrently=True,
                if_not_exists=True,
            )
        for name, *_ in reversed(TEXT_INDEXES):
            op.drop_index(name, table_name="tasks", postgresql_concurrently=True, if_exists=True)
    op.execute("DROP FUNCTION task_search_expand(tsquery, integer)")
    op.execute("DROP TRIGGER tasks_search_lexemes_update ON tasks")
    op.execute("DROP TRIGGER tasks_search_lexemes_insert ON tasks")
    op.execute("DROP FUNCTION task_search_lexemes_add_edited()")
    op.execute("DROP FUNCTION task_search_lexemes_add_inserted()")
    op.drop_table("task_search_lexemes")
    op.execute("DROP EXTENSION IF EXISTS btree_gin")
