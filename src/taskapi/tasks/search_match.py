"""How GET /tasks?search=...&tags=... matches, as SQL: the query parsed once per statement, its
rank, and the match each visible part's index answers (taskapi.tasks.visibility.visible_matching
applies it part by part). The grammar from user text to tsquery is taskapi.tasks.search_query.
"""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import (
    ColumnElement,
    String,
    any_,
    bindparam,
    cast,
    func,
    literal,
    not_,
    null,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY, REGCONFIG

from taskapi.models import SEARCH_CONFIG, Task
from taskapi.tasks.visibility import ScopedMatch

# How many words one prefix may stand for before a search stops expanding it (migration 0011).
# Each word is one more entry looked up per scope; past this (one or two letters) the prefix
# itself is looked up, as a range of each scope's own words (migration 0015).
SEARCH_PREFIX_WORDS: Final = 64
# The search's query, parsed and stemmed once per statement, and the query it is matched by:
# the same with each prefix replaced by the words it stands for (`task_search_expand`,
# migration 0011), or as written when a prefix stands for too many. CTEs read by scalar
# subqueries (InitPlans): as plain calls in a prepared statement's generic plan they would run
# again for every matching row, in the recheck and in ts_rank. Each step is MATERIALIZED: as
# plain subqueries PostgreSQL pulled them up into one row of expressions, each step's calls
# copied into every step after it, and a search ran the expansion four times and the
# candidates twice (140-170 us of PostgreSQL's time a search, against ~50 us once each).
_TERMS: Final = (
    select(
        func.to_tsquery(cast(literal(SEARCH_CONFIG), REGCONFIG), bindparam("tsquery")).label(
            "query"
        )
    )
    .cte("parsed")
    .prefix_with("MATERIALIZED")
)
_EXPANDED: Final = (
    select(
        _TERMS.c.query,
        func.coalesce(
            func.task_search_expand(_TERMS.c.query, literal(SEARCH_PREFIX_WORDS)), _TERMS.c.query
        ).label("matching"),
    )
    .cte("expanded")
    .prefix_with("MATERIALIZED")
)
# What the indexes are asked: the matching query, or for a phrase its words in any order
# (`task_search_candidates`, migration 0022), which GIN answers without rechecking each
# candidate; `checked` says whether the candidates still need the query itself (PHRASE_CHECK).
_LOOSENED: Final = (
    select(
        _EXPANDED.c.query,
        _EXPANDED.c.matching,
        func.task_search_candidates(_EXPANDED.c.matching).label("candidates"),
    )
    .cte("loosened")
    .prefix_with("MATERIALIZED")
)
SEARCH_TERMS: Final = (
    select(
        _LOOSENED.c.query,
        _LOOSENED.c.matching,
        _LOOSENED.c.candidates,
        (_LOOSENED.c.matching != _LOOSENED.c.candidates).label("checked"),
    )
    .cte("search_terms")
    .prefix_with("MATERIALIZED")
)
TSQUERY: Final = select(SEARCH_TERMS.c.query).scalar_subquery()
MATCHING: Final = select(SEARCH_TERMS.c.matching).scalar_subquery()
CANDIDATES: Final = select(SEARCH_TERMS.c.candidates).scalar_subquery()
# The query on each candidate's own search vector, when the indexes were asked a looser one:
# one InitPlan flag read per row otherwise.
PHRASE_CHECK: Final = or_(
    not_(select(SEARCH_TERMS.c.checked).scalar_subquery()),
    Task.search_vector.bool_op("@@")(MATCHING),
)
# ts_rank, not ts_rank_cd: cover density also weighs proximity, at four times the cost per match;
# title-over-description weights and term frequency still order the results. Ranked by the query
# as written, so the expansion changes which index finds the rows, never their order.
RANK: Final = func.ts_rank(Task.search_vector, TSQUERY)
TAGS: Final = bindparam("tags", type_=ARRAY(String(50)))


def scoped_match(search: bool, tags: bool) -> ScopedMatch:
    """A search and/or tags filter as each visible part's index answers it (migration 0015):
    the part's scoped terms of a task (`task_scoped_terms`: its words and tags, each joined to
    the part's scope) against the query and tags joined to one of the caller's scopes, built
    once per statement (InitPlans).

    Where the caller may hold many scopes (their projects) the queries are one per scope and
    the match is `@@ ANY` (migration 0021): the bitmap index scan looks each scope up on its
    own, where one query OR'ing every scope had GIN weigh all of them against every match. A
    part of exactly one scope (their own tasks, those assigned to them) keeps the one query:
    the planner prices an array it cannot see as ten elements, and priced so, the heavy user's
    search was planned anew on every request instead of running its generic plan (or, where a
    part was nearly empty, read by a btree over the part with each row's scoped terms
    computed to filter it)."""
    question = CANDIDATES if search else null()
    wanted = TAGS if tags else null()

    def matches(
        column: ColumnElement[Any], scopes: ColumnElement[Any], many: bool
    ) -> ColumnElement[bool]:
        terms = func.task_scoped_terms(column, Task.search_vector, Task.tags)
        if not many:
            query = func.task_scoped_query(scopes, question, wanted)
            return terms.bool_op("@@")(select(query).scalar_subquery())
        queries = func.task_scoped_queries(scopes, question, wanted)
        # The cast makes the InitPlan's array an expression: `ANY ((SELECT ...))` alone would
        # be PostgreSQL's ANY over a subquery's rows, one array row.
        per_scope = cast(select(queries).scalar_subquery(), ARRAY(postgresql.TSQUERY))
        return terms.bool_op("@@")(any_(per_scope))

    return matches
