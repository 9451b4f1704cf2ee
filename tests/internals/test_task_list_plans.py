"""A cursor deep into a list starts its index scan at the cursor: the work of a page must not
grow with how far the walk has gone (issue 21: a cursor 5,000 deep read and dropped the 5,000
rows before it, its keyset a filter rather than an index condition). Checked on PostgreSQL's
own plans (EXPLAIN ANALYZE) of the page statement the application runs, for a user with 3,000
tasks and a cursor 2,000 rows deep, in every order of one key (its index serves the cursor as a
row comparison; `-due_date`, whose missing dates come last, as one over the dated rows). Sorts
and bitmap scans are turned off, so the plan is the ordered index scan a big table gets whatever
the planner thinks of a small one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.kit.pagination import CursorCodec
from taskapi.models import Task
from taskapi.tasks import queries
from taskapi.tasks.list_page import build_page
from taskapi.tasks.list_params import TaskListParams
from taskapi.tasks.list_plan import plan_list
from tests.conftest import UserHandle

TASKS = 3_000
DEPTH = 2_000
LIMIT = 20

_SEED = text(
    """
INSERT INTO tasks (owner_id, title, priority, due_date, created_at, updated_at)
SELECT :user_id, 'Task ' || (g * 7919 % 3001),
       (ARRAY['low','medium','high','urgent'])[1 + g % 4]::task_priority,
       CASE WHEN g % 5 <> 0 THEN DATE '2026-01-01' + g % 97 END,
       TIMESTAMPTZ '2026-01-01' + g * interval '1 minute' / 3,
       TIMESTAMPTZ '2026-01-01'
FROM generate_series(1, :tasks) g
"""
)


def _nodes(node: dict[str, Any], counts: bool = False) -> Iterator[dict[str, Any]]:
    """The plan's nodes, less the totals' counts unless `counts` (Aggregate subtrees: they
    count every row, as they must)."""
    if node["Node Type"] == "Aggregate" and not counts:
        return
    yield node
    for child in node.get("Plans", ()):
        yield from _nodes(child, counts)


async def _page_plan(
    session: AsyncSession, user: UserHandle, params: dict[str, Any]
) -> list[dict[str, Any]]:
    """The plan of the page `params` ask for, followed from a cursor DEPTH rows deep."""
    cursors = CursorCodec("plan-test-secret")
    today = date(2026, 6, 1)
    # The cursor the page ending at row DEPTH hands out, as the application makes it.
    start = TaskListParams.model_validate({**params, "limit": "1", "offset": str(DEPTH - 1)})
    plan = plan_list(start, user.id, today, cursors)
    rows = await queries.list_statement(plan.shape).fetch(session, plan.values)
    cursor = build_page(plan, rows, int(rows[0]["total"]), cursors)["next_cursor"]
    deep = TaskListParams.model_validate({**params, "limit": str(LIMIT), "cursor": cursor})
    plan = plan_list(deep, user.id, today, cursors)
    page = queries.list_statement(plan.shape)
    driver = (await (await session.connection()).get_raw_connection()).driver_connection
    assert driver is not None
    (row,) = await driver.fetch(
        "EXPLAIN (ANALYZE, FORMAT JSON) " + page.sql, *page.arguments(plan.values)
    )
    document = json.loads(row[0]) if isinstance(row[0], str) else row[0]
    return list(_nodes(document[0]["Plan"]))


@pytest.mark.parametrize(
    "sort",
    [None, "created_at", "due_date", "-due_date", "priority", "-priority", "title", "-title"],
)
async def test_a_deep_cursor_starts_the_index_scan_at_the_cursor(
    db_session: AsyncSession, alice: UserHandle, sort: str | None
) -> None:
    await db_session.execute(_SEED, {"user_id": alice.id, "tasks": TASKS})
    await db_session.execute(text("ANALYZE tasks"))
    for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
        await db_session.execute(text(f"SET LOCAL {setting} = off"))
    nodes = await _page_plan(db_session, alice, {"sort": sort} if sort else {})
    # The owner's part of the page: ids and sort keys, from the index alone where it holds them.
    # `-due_date` reads it in two ranges: the dated rows after the cursor, then the undated.
    owned = [
        n
        for n in nodes
        if n["Node Type"] in ("Index Scan", "Index Only Scan")
        and n.get("Index Name", "").startswith("ix_tasks_personal_owner")
    ]
    assert len(owned) == (2 if sort == "-due_date" else 1), [
        (n["Node Type"], n.get("Index Name")) for n in nodes
    ]
    for scan in owned:
        # Read from the cursor on: a page and one row at most, none of them dropped.
        described = (scan["Node Type"], scan.get("Index Cond"), scan.get("Filter"))
        assert scan["Actual Rows"] <= LIMIT + 1, described
        assert scan.get("Rows Removed by Filter", 0) == 0, described
    started = [s for s in owned if ">" in s["Index Cond"] or "<" in s["Index Cond"]]
    assert len(started) == 1, [(s.get("Index Cond"), s.get("Filter")) for s in owned]


def _literal(value: Any) -> str:
    return (
        "NULL"
        if value is None
        else "'" + str(getattr(value, "value", value)).replace("'", "''") + "'"
    )


@pytest.mark.parametrize("params", [{}, {"sort": "due_date"}, {"sort": "-title"}])
async def test_a_first_page_s_generic_plan_is_priced_for_the_page(
    db_session: AsyncSession, alice: UserHandle, params: dict[str, str]
) -> None:
    """PostgreSQL runs a prepared statement's generic plan only while it looks no dearer than
    planning each request anew. A `LIMIT $n` it prices as a tenth of the rows it expects (the
    average owner's share of the table, not the caller's), so as the table grew past the
    callers' own tasks, first pages were planned on every request (5M tasks: 0.85 ms a
    statement against 0.19 with the generic plan). A page from its first row carries its limit
    in the SQL; offset pages share one statement whatever their offset."""
    await db_session.execute(_SEED, {"user_id": alice.id, "tasks": TASKS})
    await db_session.execute(text("ANALYZE tasks"))
    cursors = CursorCodec("plan-test-secret")
    plan = plan_list(
        TaskListParams.model_validate({**params, "limit": str(LIMIT)}),
        alice.id,
        date(2026, 6, 1),
        cursors,
    )
    page = queries.list_statement(plan.shape)
    driver = (await (await db_session.connection()).get_raw_connection()).driver_connection
    assert driver is not None
    await driver.execute("SET LOCAL plan_cache_mode = force_generic_plan")
    await driver.execute("PREPARE first_page AS " + page.sql)
    arguments = ", ".join(_literal(value) for value in page.arguments(plan.values))
    (row,) = await driver.fetch(f"EXPLAIN (FORMAT JSON) EXECUTE first_page({arguments})")
    await driver.execute("DEALLOCATE first_page")
    document = json.loads(row[0]) if isinstance(row[0], str) else row[0]
    limits = [n for n in _nodes(document[0]["Plan"]) if n["Node Type"] == "Limit"]
    assert limits, document
    assert all(n["Plan Rows"] <= LIMIT + 1 for n in limits), [n["Plan Rows"] for n in limits]
    # An offset is a bound value: every offset page of a shape runs one prepared statement.
    deeper = [
        plan_list(
            TaskListParams.model_validate({**params, "limit": str(LIMIT), "offset": str(offset)}),
            alice.id,
            date(2026, 6, 1),
            cursors,
        )
        for offset in (20, 40, 2_000)
    ]
    assert len({queries.list_statement(p.shape).sql for p in deeper}) == 1


# (title, tags, search, tags filter, matches?): the scoped match (migration 0015) against plain
# `search_vector @@ query AND tags @> tags`, on words, prefixes, phrases, exclusions, weights'
# positions and tags a tsquery must quote.
SCOPED_CASES = [
    ("Redis cache warmup", ["ops"], "redis:* & cache", None, True),
    ("Redis cache warmup", ["ops"], "redis <-> cache", None, True),
    ("Cache for redis", ["ops"], "redis <-> cache", None, False),
    ("Redis cache warmup", ["ops"], "redis & !warmup", None, False),
    ("Redis cache warmup", ["it's", "a\\b"], "warm:*", ["it's", "a\\b"], True),
    ("Redis cache warmup", ["it's"], None, ["it's", "a\\b"], False),
    ("Redis cache warmup", [], "the", None, False),  # stop words only: an empty query
]


@pytest.mark.parametrize(("title", "tags", "query", "wanted", "matches"), SCOPED_CASES)
async def test_scoped_terms_match_exactly_what_the_plain_search_matches(
    db_session: AsyncSession,
    title: str,
    tags: list[str],
    query: str | None,
    wanted: list[str] | None,
    matches: bool,
) -> None:
    row = (
        await db_session.execute(
            text(
                """
SELECT coalesce(v @@ q, true) AND coalesce(t @> w, true) AS plain,
       coalesce(task_scoped_terms(7, v, t) @@ task_scoped_query(ARRAY[7, 9], q, w), false)
         AS scoped,
       coalesce(task_scoped_terms(8, v, t) @@ task_scoped_query(ARRAY[7, 9], q, w), false)
         AS other_scope,
       coalesce(task_scoped_terms(7, v, t) @@ ANY(task_scoped_queries(ARRAY[9, 7], q, w)), false)
         AS scoped_one_by_one,
       coalesce(task_scoped_terms(8, v, t) @@ ANY(task_scoped_queries(ARRAY[9, 7], q, w)), false)
         AS other_scope_one_by_one
FROM (SELECT to_tsvector('english', :title) AS v, CAST(:tags AS varchar[]) AS t,
             to_tsquery('english', :query) AS q, CAST(:wanted AS varchar[]) AS w) x
"""
            ),
            {"title": title, "tags": tags, "query": query, "wanted": wanted},
        )
    ).one()
    assert row.plain is matches
    assert row.scoped is matches
    assert row.other_scope is False  # another scope's terms never match
    # As the searches ask it (migration 0021): one query per scope, any of them matching.
    assert row.scoped_one_by_one is matches
    assert row.other_scope_one_by_one is False


async def test_scoped_terms_of_no_scope_are_null(db_session: AsyncSession) -> None:
    """An unassigned task has no assignee scope; the assignee part's index leaves it out, and a
    recheck that computes its terms anyway gets NULL (not an error from a NULL lexeme)."""
    terms = await db_session.scalar(
        text("SELECT task_scoped_terms(NULL, to_tsvector('simple', 'redis'), ARRAY['ops'])")
    )
    assert terms is None


# Tasks of 20 distinct words each (hex digests): index entries by the thousand.
_WORDY_TASKS = text(
    """
INSERT INTO tasks (owner_id, title, description)
SELECT :user_id, 'Wordy ' || g,
       (SELECT string_agg(md5((g * 100 + w)::text), ' ') FROM generate_series(1, 20) w)
FROM generate_series(1, :tasks) g
"""
)
# The search indexes: every GIN index of `tasks`.
_SEARCH_INDEXES = [
    index.name
    for index in Task.metadata.tables["tasks"].indexes
    if index.dialect_options["postgresql"]["using"] == "gin"
]


async def test_writes_leave_no_index_entries_pending_for_searches_to_read(
    db_session: AsyncSession, alice: UserHandle, bob: UserHandle
) -> None:
    # A GIN index's pending list (fastupdate, PostgreSQL's default) holds every user's recent
    # entries until VACUUM merges them, and every search reads all of it first: alice's search
    # cost followed bob's writes (make bench's heavy user: 710 us with nothing pending, 1,924 us
    # with 375 pages of other users' tasks pending). Migration 0020 turned it off: each write's
    # entries go into the index itself, under their own scope.
    assert len(_SEARCH_INDEXES) == 3
    for index in _SEARCH_INDEXES:  # what VACUUM does: a start with nothing pending
        await db_session.execute(text(f"SELECT gin_clean_pending_list('{index}')"))
    await db_session.execute(_SEED, {"user_id": alice.id, "tasks": 200})
    await db_session.execute(_WORDY_TASKS, {"user_id": bob.id, "tasks": 500})
    assigned = text("UPDATE tasks SET assignee_id = :alice WHERE owner_id = :bob")
    await db_session.execute(assigned, {"alice": alice.id, "bob": bob.id})
    # What merging would take from each list now: nothing was left for searches to read (with
    # the pending list: 144 pages in the owner's index and 72 in the assignee's).
    pending = {
        index: await db_session.scalar(text(f"SELECT gin_clean_pending_list('{index}')"))
        for index in _SEARCH_INDEXES
    }
    assert pending == dict.fromkeys(_SEARCH_INDEXES, 0)
    # And the new entries are in the index: bob's words find his tasks, alice's find hers.
    for user, word, expected in ((alice, "task", 200), (bob, "wordy", 500)):
        params = TaskListParams.model_validate({"search": word})
        plan = plan_list(params, user.id, date(2026, 6, 1), CursorCodec("plan-test-secret"))
        rows = await queries.list_statement(plan.shape).fetch(db_session, plan.values)
        assert int(rows[0]["total"]) == expected


async def test_a_member_s_search_looks_each_project_up_on_its_own(
    db_session: AsyncSession, alice: UserHandle, bob: UserHandle
) -> None:
    # One tsquery OR'ing the scopes of all a member's projects had GIN weigh every one of them
    # against each match, and recheck a phrase's candidates against all of them, so a search's
    # cost per match grew with the member's projects (migration 0021: a scan per project;
    # 0022: a phrase's candidates found by its words, then checked on their own vectors).
    # Bob's 30 projects, alice a viewer of each; every third task mentions redis and cache,
    # every sixth the phrase "redis cache".
    projects = 30
    await db_session.execute(
        text(
            """
WITH made AS (
    INSERT INTO projects (owner_id, name, member_count)
    SELECT :bob, 'Plan ' || g, 2 FROM generate_series(1, :projects) g RETURNING id
), members AS (
    INSERT INTO project_members (project_id, user_id, role)
    SELECT id, u, CASE WHEN u = :bob THEN 'admin' ELSE 'viewer' END::project_role
    FROM made, (VALUES (CAST(:bob AS bigint)), (:alice)) AS who(u)
)
INSERT INTO tasks (owner_id, project_id, title)
SELECT :bob, id, CASE WHEN g % 6 = 0 THEN 'Redis cache ' || g
                      WHEN g % 6 = 3 THEN 'Cache of redis ' || g ELSE 'Other ' || g END
FROM made, generate_series(1, 12) g
"""
        ),
        {"bob": bob.id, "alice": alice.id, "projects": projects},
    )
    await db_session.execute(text("ANALYZE tasks"))  # plan as for tasks by the thousand
    await db_session.execute(text("SET LOCAL enable_seqscan = off"))
    for search, found in (("redis", projects * 4), ('"redis cache"', projects * 2)):
        params = TaskListParams.model_validate({"search": search})
        plan = plan_list(params, alice.id, date(2026, 6, 1), CursorCodec("plan-test-secret"))
        page = queries.list_statement(plan.shape)
        assert (await page.fetch(db_session, plan.values))[0]["total"] == found
        driver = (await (await db_session.connection()).get_raw_connection()).driver_connection
        assert driver is not None
        (row,) = await driver.fetch(
            "EXPLAIN (ANALYZE, FORMAT JSON) " + page.sql, *page.arguments(plan.values)
        )
        document = json.loads(row[0]) if isinstance(row[0], str) else row[0]
        nodes = list(_nodes(document[0]["Plan"], counts=True))
        scans = [node for node in nodes if node.get("Index Name") == "ix_tasks_project_scoped"]
        assert len(scans) == 1, search
        assert "@@ ANY" in scans[0]["Index Cond"], scans[0]["Index Cond"]
        # GIN answered exactly, a phrase included (its words, migration 0022): no row was
        # rechecked against the index's condition, each computing its scoped terms again.
        heaps = [node for node in nodes if "task_scoped_terms" in node.get("Recheck Cond", "")]
        assert heaps, search
        assert all(heap["Rows Removed by Index Recheck"] == 0 for heap in heaps), search


# (query, documents): `task_search_candidates` of the query must match every document the query
# matches, and need no recheck (no phrase operator left) wherever an index can answer it.
CANDIDATE_CASES = [
    ("redis <-> cache", ["redis cache", "cache of redis", "redis", "a redis warm cache"]),
    ("(redis <-> cache) & !(draft <-> copy)", ["redis cache draft copy", "redis cache copy draft"]),
    ("'e-mail':* & !spam", ["e-mail spam", "email the e-mails", "mail e"]),
    ("redis <2> cache & warm:*", ["redis warm cache", "redis the cache warmed", "cache redis"]),
    ("redis & !cache", ["redis", "redis cache"]),
]


@pytest.mark.parametrize(("query", "documents"), CANDIDATE_CASES)
async def test_a_phrase_s_candidates_include_every_match_and_need_no_recheck(
    db_session: AsyncSession, query: str, documents: list[str]
) -> None:
    rows = await db_session.execute(
        text(
            """
SELECT to_tsvector('english', d) @@ q AS matches,
       to_tsvector('english', d) @@ task_search_candidates(q) AS candidate,
       task_search_candidates(q)::text AS candidates
FROM unnest(CAST(:documents AS text[])) AS d, to_tsquery('english', :query) AS q
"""
        ),
        {"query": query, "documents": documents},
    )
    results = rows.all()
    assert any(row.matches for row in results)  # the case means something
    for row in results:
        assert row.candidate or not row.matches, row
        assert "<" not in row.candidates, row.candidates
