"""GET /api/v1/tasks?search=: full-text semantics, relevance, pagination, visibility, hostile input.

Also unit tests of `search_query.build_tsquery`, the only thing that turns user text into tsquery
syntax: whatever the input, its output is made of word characters and our own operators, and
PostgreSQL accepts it.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from taskapi.models import SEARCH_CONFIG, Task, User
from taskapi.tasks.list_params import MAX_SEARCH_LENGTH
from taskapi.tasks.search_query import MAX_SEARCH_TERMS, build_tsquery
from tests.conftest import UserHandle
from tests.task_helpers import TASKS, assert_problem, task_url


async def search(
    client: httpx.AsyncClient, user: UserHandle, query: str, **params: Any
) -> dict[str, Any]:
    response = await client.get(TASKS, params={"search": query, **params}, headers=user.headers)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def found(client: httpx.AsyncClient, user: UserHandle, query: str, **params: Any) -> set[str]:
    page = await search(client, user, query, limit=100, **params)
    assert page["total"] == len(page["items"])
    return {item["title"] for item in page["items"]}


def titles(page: dict[str, Any]) -> list[str]:
    return [item["title"] for item in page["items"]]


def ids(page: dict[str, Any]) -> list[int]:
    return [item["id"] for item in page["items"]]


# --- matching ----------------------------------------------------------------------------------


async def test_search_is_case_insensitive(client, alice, make_task):
    await make_task(alice, title="Deploy the WebSite")
    await make_task(alice, title="Water the plants")
    for query in ["deploy", "DEPLOY", "DePlOy", "Website", "WEBSITE deploy"]:
        assert await found(client, alice, query) == {"Deploy the WebSite"}, query


async def test_search_is_accent_insensitive_both_ways(client, alice, make_task):
    await make_task(alice, title="Café meeting")
    await make_task(alice, title="cafe supplies")
    await make_task(alice, title="Cabbage order")
    for query in ["cafe", "café", "CAFÉ", "Cafe\u0301"]:
        assert await found(client, alice, query) == {"Café meeting", "cafe supplies"}, query


async def test_accents_in_descriptions_are_folded_too(client, alice, make_task):
    await make_task(alice, title="Reading list", description="A naïve résumé of the crème brûlée")
    await make_task(alice, title="Other", description="naive resume")
    for query in ["naive", "naïve", "resume creme brulee", "résumé"]:
        expected = {"Reading list"} if "creme" in query else {"Reading list", "Other"}
        assert await found(client, alice, query) == expected, query


async def test_search_matches_english_stems(client, alice, make_task):
    await make_task(alice, title="Runs nightly")
    await make_task(alice, title="Run the migrations")
    await make_task(alice, title="Running late again")
    await make_task(alice, title="Ruined the cake")
    expected = {"Runs nightly", "Run the migrations", "Running late again"}
    for query in ["running", "runs", "run", "RUN"]:
        assert await found(client, alice, query) == expected, query


async def test_stems_match_plural_and_inflected_forms(client, alice, make_task):
    await make_task(alice, title="Slow database queries")
    await make_task(alice, title="One query only")
    assert await found(client, alice, "query") == {"Slow database queries", "One query only"}
    assert await found(client, alice, "queries") == {"Slow database queries", "One query only"}
    assert await found(client, alice, "databases") == {"Slow database queries"}


async def test_words_match_as_prefixes(client, alice, make_task):
    await make_task(alice, title="Upgrade SQLAlchemy")
    await make_task(alice, title="Rewrite in Rust")
    for query in ["sql", "SQL", "sqla", "sqlalch", "SQLAlchemy", "upg sql", "r"]:
        expected = {"Rewrite in Rust"} if query == "r" else {"Upgrade SQLAlchemy"}
        assert await found(client, alice, query) == expected, query
    assert await found(client, alice, "sqx") == set()
    assert await found(client, alice, "sqlalchemyx") == set()


async def test_matches_in_title_or_description(client, alice, make_task):
    await make_task(alice, title="Kubernetes upgrade", description="nothing special")
    await make_task(alice, title="Cluster work", description="move the kubernetes nodes")
    await make_task(alice, title="Unrelated", description=None)
    assert await found(client, alice, "kubernetes") == {"Kubernetes upgrade", "Cluster work"}


async def test_several_words_must_all_match_anywhere(client, alice, make_task):
    await make_task(alice, title="invoice reminder", description="send it to the customer")
    await make_task(alice, title="invoice archive", description="scan everything")
    await make_task(alice, title="customer call", description="about the contract")
    assert await found(client, alice, "invoice customer") == {"invoice reminder"}
    assert await found(client, alice, "customer invoice") == {"invoice reminder"}
    assert await found(client, alice, "invoice") == {"invoice reminder", "invoice archive"}
    assert await found(client, alice, "invoice customer contract") == set()


async def test_quoted_phrase_matches_adjacent_words_in_order(client, alice, make_task):
    await make_task(alice, title="fix login page")
    await make_task(alice, title="page login broken")
    await make_task(alice, title="login to the admin page")
    assert await found(client, alice, '"login page"') == {"fix login page"}
    assert await found(client, alice, '"page login"') == {"page login broken"}
    assert await found(client, alice, "login page") == {
        "fix login page",
        "page login broken",
        "login to the admin page",
    }
    # A phrase combines with other words; an unterminated quote still is a phrase.
    assert await found(client, alice, 'fix "login page"') == {"fix login page"}
    assert await found(client, alice, '"page login') == {"page login broken"}


async def test_phrase_in_description_and_with_stems(client, alice, make_task):
    await make_task(alice, title="a", description="We are running tests today")
    await make_task(alice, title="b", description="tests running later")
    assert await found(client, alice, '"run tests"') == {"a"}
    assert await found(client, alice, '"TESTS RUNNING"') == {"b"}


async def test_minus_excludes_words_and_phrases(client, alice, make_task):
    await make_task(alice, title="fix login page")
    await make_task(alice, title="page login broken")
    await make_task(alice, title="login token refresh")
    assert await found(client, alice, "login -page") == {"login token refresh"}
    assert await found(client, alice, "login -PAGE -token") == set()
    assert await found(client, alice, 'login -"login page"') == {
        "page login broken",
        "login token refresh",
    }
    assert await found(client, alice, 'login -"page login" -token') == {"fix login page"}


async def test_exclusion_applies_to_descriptions_too(client, alice, make_task):
    await make_task(alice, title="report one", description="draft")
    await make_task(alice, title="report two", description="final")
    assert await found(client, alice, "report -draft") == {"report two"}


@pytest.mark.parametrize("query", ["-report", '-"report one"', "-report -two", "- -"])
async def test_only_exclusions_find_nothing(client, alice, make_task, query):
    await make_task(alice, title="report one")
    await make_task(alice, title="something else")
    page = await search(client, alice, query)
    assert page["items"] == []
    assert page["total"] == 0
    assert page["next_cursor"] is None


async def test_non_latin_scripts_are_searchable(client, alice, make_task):
    cases = {
        "日本語": "日本語のテスト",
        "שלום": "שלום עולם",
        "ΑΘΗΝΑ": "Αθήνα trip",
        "straße": "Straße sperren",
        "🚀 launch": "🚀 launch rocket",
    }
    for title in cases.values():
        await make_task(alice, title=title)
    for query, title in cases.items():
        assert await found(client, alice, query) == {title}, query


# --- relevance and sorting ---------------------------------------------------------------------


async def test_title_match_ranks_above_description_only_match(client, alice, make_task):
    # Created first, so the default newest-first order would put it last.
    title_match = await make_task(alice, title="Migrate the database", description="soon")
    description_match = await make_task(
        alice, title="Weekly chores", description="also migrate something"
    )
    default_order = await client.get(TASKS, headers=alice.headers)
    assert ids(default_order.json()) == [description_match["id"], title_match["id"]]
    page = await search(client, alice, "migrate")
    assert ids(page) == [title_match["id"], description_match["id"]]


async def test_more_matches_rank_higher(client, alice, make_task):
    once = await make_task(alice, title="A", description="backup the server")
    thrice = await make_task(
        alice, title="B", description="backup now, backup later, verify the backup"
    )
    twice = await make_task(alice, title="C", description="backup and backup")
    await make_task(alice, title="D", description="no match here")
    page = await search(client, alice, "backup")
    assert ids(page) == [thrice["id"], twice["id"], once["id"]]


async def test_explicit_sort_overrides_relevance(client, alice, make_task):
    strong = await make_task(alice, title="zeta deploy deploy", description="deploy")
    weak = await make_task(alice, title="alpha", description="deploy once")
    middle = await make_task(alice, title="Mu deploy")
    relevance = await search(client, alice, "deploy")
    assert ids(relevance) == [strong["id"], middle["id"], weak["id"]]
    assert titles(await search(client, alice, "deploy", sort="title")) == [
        "alpha",
        "Mu deploy",
        "zeta deploy deploy",
    ]
    assert ids(await search(client, alice, "deploy", sort="-id")) == [
        middle["id"],
        weak["id"],
        strong["id"],
    ]
    assert ids(await search(client, alice, "deploy", sort="id")) == [
        strong["id"],
        weak["id"],
        middle["id"],
    ]


async def test_ties_in_relevance_are_ordered_stably_by_id(client, alice, make_task):
    created = [await make_task(alice, title=f"same words {n}") for n in range(4)]
    page = await search(client, alice, "same words")
    assert ids(page) == sorted((task["id"] for task in created), reverse=True)


# --- filters, pagination, totals ---------------------------------------------------------------


async def test_search_combines_with_other_filters(client, alice, make_task):
    await make_task(alice, title="billing export", priority="high", tags=["finance"])
    await make_task(alice, title="billing fix", priority="low", status="done")
    await make_task(alice, title="billing import", priority="high", status="in_progress")
    await make_task(alice, title="shipping export", priority="high", tags=["finance"])
    assert await found(client, alice, "billing", priority="high") == {
        "billing export",
        "billing import",
    }
    assert await found(client, alice, "billing", status="done") == {"billing fix"}
    assert await found(client, alice, "billing", completed="false") == {
        "billing export",
        "billing import",
    }
    assert await found(client, alice, "export", tags="finance") == {
        "billing export",
        "shipping export",
    }
    assert await found(client, alice, "billing -import", priority="high,low") == {
        "billing export",
        "billing fix",
    }
    assert await found(client, alice, "billing", tags="finance", status="done") == set()


async def test_search_combines_with_scope_and_assignee(client, alice, bob, make_task):
    mine = await make_task(alice, title="quarterly review")
    given = await make_task(bob, title="quarterly review of bob", assignee_id=alice.id)
    await make_task(bob, title="quarterly review private to bob")
    assert await found(client, alice, "quarterly") == {mine["title"], given["title"]}
    assert await found(client, alice, "quarterly", scope="owned") == {mine["title"]}
    assert await found(client, alice, "quarterly", scope="assigned") == {given["title"]}
    assert await found(client, alice, "quarterly", assignee="me") == {given["title"]}


async def test_total_counts_all_matches_not_the_page(client, alice, make_task):
    for n in range(7):
        await make_task(alice, title=f"audit item {n}")
    for n in range(3):
        await make_task(alice, title=f"other item {n}")
    page = await search(client, alice, "audit", limit=3)
    assert page["total"] == 7
    assert len(page["items"]) == 3
    assert (await search(client, alice, "item", limit=2))["total"] == 10
    assert (await search(client, alice, "item -audit", limit=2))["total"] == 3


async def _ranked_world(alice: UserHandle, make_task) -> list[int]:
    """Eleven matching tasks with distinct and tied relevance, plus noise."""
    made = []
    for n in range(3):
        made.append(await make_task(alice, title=f"release {n}"))
    for n in range(3):
        made.append(await make_task(alice, title=f"chore {n}", description="release it"))
    for n in range(3):
        made.append(await make_task(alice, title=f"notes {n}", description="release, then release"))
    made.append(await make_task(alice, title="release release", description="release"))
    made.append(await make_task(alice, title="the release", description="pre-release check"))
    for n in range(4):
        await make_task(alice, title=f"noise {n}", description="unrelated")
    return [task["id"] for task in made]


async def test_cursor_walk_through_ranked_results_sees_each_row_once(client, alice, make_task):
    matching = await _ranked_world(alice, make_task)
    full = await search(client, alice, "release", limit=100)
    assert sorted(ids(full)) == sorted(matching)
    seen: list[int] = []
    params: dict[str, Any] = {"search": "release", "limit": 2}
    pages = 0
    while True:
        response = await client.get(TASKS, params=params, headers=alice.headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert page["total"] == len(matching)
        seen.extend(ids(page))
        pages += 1
        if page["next_cursor"] is None:
            assert "link" not in response.headers
            break
        assert 'rel="next"' in response.headers["link"]
        params = {"search": "release", "limit": 2, "cursor": page["next_cursor"]}
        assert pages < 20
    assert pages == 6
    assert seen == ids(full)
    assert len(set(seen)) == len(seen)


async def test_cursor_walk_with_search_and_explicit_sort(client, alice, make_task):
    matching = await _ranked_world(alice, make_task)
    seen: list[int] = []
    cursor: dict[str, str] = {}
    while True:
        page = await search(client, alice, "release", limit=3, sort="title", **cursor)
        seen.extend(ids(page))
        if page["next_cursor"] is None:
            break
        cursor = {"cursor": page["next_cursor"]}
    full = await search(client, alice, "release", limit=100, sort="title")
    assert seen == ids(full)
    assert sorted(seen) == sorted(matching)
    assert [t.lower() for t in titles(full)] == sorted(t.lower() for t in titles(full))


async def test_cursor_from_one_search_is_rejected_for_another(client, alice, make_task):
    for n in range(3):
        await make_task(alice, title=f"alpha beta {n}")
    page = await search(client, alice, "alpha", limit=1)
    response = await client.get(
        TASKS,
        params={"search": "beta", "limit": 1, "cursor": page["next_cursor"]},
        headers=alice.headers,
    )
    assert_problem(response, 422, "invalid_cursor")


async def test_offset_pagination_through_ranked_results(client, alice, make_task):
    matching = await _ranked_world(alice, make_task)
    full = ids(await search(client, alice, "release", limit=100))
    walked: list[int] = []
    for offset in range(0, 12, 4):
        page = await search(client, alice, "release", limit=4, offset=offset)
        assert page["total"] == len(matching)
        assert page["offset"] == offset
        walked.extend(ids(page))
    assert walked == full


# --- visibility --------------------------------------------------------------------------------


async def test_other_users_matching_tasks_never_appear(client, alice, bob, make_task):
    own = await make_task(alice, title="secret plan alpha")
    await make_task(bob, title="secret plan bravo", description="secret secret secret")
    await make_task(bob, title="secret", tags=["secret"])
    for query in ["secret", "secret plan", '"secret plan"', "bravo", "secret -alpha"]:
        page = await search(client, alice, query, limit=100)
        assert set(ids(page)) <= {own["id"]}, query
        assert page["total"] == len(page["items"]), query
    bob_page = await search(client, bob, "secret")
    assert own["id"] not in ids(bob_page)
    assert bob_page["total"] == 2


async def test_assignment_makes_a_task_searchable_for_the_assignee(client, alice, bob, make_task):
    task = await make_task(bob, title="handover notes")
    assert await found(client, alice, "handover") == set()
    response = await client.post(
        task_url(task["id"]) + "/assign", json={"assignee_id": alice.id}, headers=bob.headers
    )
    assert response.status_code == 200, response.text
    assert await found(client, alice, "handover") == {"handover notes"}
    response = await client.post(
        task_url(task["id"]) + "/assign", json={"assignee_id": None}, headers=bob.headers
    )
    assert response.status_code == 200, response.text
    assert await found(client, alice, "handover") == set()


async def test_search_sees_edits_and_deletes(client, alice, make_task):
    task = await make_task(alice, title="draft proposal")
    assert await found(client, alice, "proposal") == {"draft proposal"}
    patched = await client.patch(
        task_url(task["id"]),
        json={"title": "final contract", "description": "was a proposal"},
        headers=alice.headers,
    )
    assert patched.status_code == 200, patched.text
    assert await found(client, alice, "draft") == set()
    assert await found(client, alice, "contract") == {"final contract"}
    assert await found(client, alice, "proposal") == {"final contract"}
    deleted = await client.delete(task_url(task["id"]), headers=alice.headers)
    assert deleted.status_code == 204
    assert await found(client, alice, "contract") == set()


# --- hostile input -----------------------------------------------------------------------------

HOSTILE_200 = [
    "&",
    "|",
    "!",
    "<->",
    ":*",
    "(",
    ")",
    "'",
    "\\",
    "a & b | !c",
    "deploy <-> website",
    "deploy:* | (x & !y)",
    "!!!",
    "((((",
    "<1> <2> <->",
    "'deploy'",
    "deploy\\",
    "'; DROP TABLE tasks; --",
    '"; DROP TABLE tasks; --',
    "x' OR '1'='1",
    "%",
    "_",
    "%_%",
    "deploy%",
    "$1",
    "::regconfig",
    "the and of",
    "the",
    '"',
    '""',
    '"""',
    '" "',
    "-",
    "--",
    '-"',
    "日本語 中文 한국어",
    "🚀🔥💥",
    "deploy 🚀",
    "עברית מימין לשמאל",
    "\u202edeploy\u202c",
    "e\u0301\u0301\u0301",
    "\u0301",
    "\u200b\u200d\ufeff",
    "\t\n\r",
    "x" * MAX_SEARCH_LENGTH,
    " ".join(["word"] * 200),
    " ".join(f"w{n}" for n in range(400))[:MAX_SEARCH_LENGTH],
    " ".join(f'-"a{n} b{n}"' for n in range(100))[:MAX_SEARCH_LENGTH],
    "😀" * MAX_SEARCH_LENGTH,
]

HOSTILE_422 = ["", "x" * (MAX_SEARCH_LENGTH + 1), "deploy " * 300]


@pytest.fixture
async def hostile_world(client, alice, make_task, db_session) -> tuple[UserHandle, set[int]]:
    """alice with two tasks, and a stranger (inserted directly) whose tasks match everything."""
    own = {
        (await make_task(alice, title="Deploy website", description="the and of")).get("id"),
        (await make_task(alice, title="x" * 200, description="word " * 50)).get("id"),
    }
    stranger = User(
        username=f"stranger_{uuid.uuid4().hex[:8]}",
        email=f"{uuid.uuid4().hex[:8]}@example.com",
        password_hash="not-a-real-hash",
    )
    db_session.add(stranger)
    await db_session.flush()
    db_session.add_all(
        [
            Task(owner_id=stranger.id, title="Deploy website", description="x" * 2000),
            Task(owner_id=stranger.id, title="DROP TABLE tasks", description="日本語 🚀 word"),
        ]
    )
    await db_session.flush()
    return alice, own


async def _tasks_table_intact(client, db_session, alice, own: set[int]) -> None:
    assert await db_session.scalar(text("SELECT to_regclass('public.tasks') IS NOT NULL"))
    listing = await client.get(TASKS, headers=alice.headers)
    assert listing.status_code == 200, listing.text
    assert set(ids(listing.json())) == own


@pytest.mark.parametrize("query", HOSTILE_200, ids=lambda q: repr(q[:40]))
async def test_hostile_search_input_is_a_normal_200(client, db_session, hostile_world, query):
    alice, own = hostile_world
    response = await client.get(
        TASKS, params={"search": query, "limit": 100}, headers=alice.headers
    )
    assert response.status_code == 200, response.text
    page = response.json()
    assert set(ids(page)) <= own
    assert page["total"] == len(page["items"])
    await _tasks_table_intact(client, db_session, alice, own)


@pytest.mark.parametrize("query", HOSTILE_422, ids=lambda q: f"len{len(q)}")
async def test_empty_or_too_long_search_is_422(client, db_session, hostile_world, query):
    alice, own = hostile_world
    response = await client.get(TASKS, params={"search": query}, headers=alice.headers)
    body = assert_problem(response, 422)
    assert "search" in response.text
    assert "x" * 100 not in str(body.get("detail"))
    await _tasks_table_intact(client, db_session, alice, own)


async def test_nul_in_search_is_never_a_500(client, db_session, hostile_world):
    alice, own = hostile_world
    for query in ["\x00", "deploy\x00", "\x00'; DROP TABLE tasks; --", "a\x00b"]:
        response = await client.get(TASKS, params={"search": query}, headers=alice.headers)
        assert response.status_code in (200, 422), (query, response.text)
        if response.status_code == 200:
            assert set(ids(response.json())) <= own
        else:
            assert_problem(response, 422)
    await _tasks_table_intact(client, db_session, alice, own)


OPERATORS_AROUND_WORDS = [
    "deploy:*",
    "(deploy)",
    "'deploy'",
    "deploy\\",
    "!deploy",
    "deploy & website",
    "deploy | website",
    "deploy<->website",
    "%deploy%",
    "deploy;",
    "deploy -(",
    "deploy 🚀",
    "deploy -';",
    "DEPLOY --",
    "deploy the and of",
]


async def test_operator_characters_are_plain_text_around_real_words(
    client, db_session, hostile_world
):
    alice, own = hostile_world
    for query in OPERATORS_AROUND_WORDS:
        page = await search(client, alice, query)
        assert titles(page) == ["Deploy website"], query
    await _tasks_table_intact(client, db_session, alice, own)


async def test_search_with_bad_other_parameters_is_422_not_500(client, alice):
    for params in [
        {"search": "x", "sort": "rank"},
        {"search": "x", "limit": 0},
        {"search": "x", "cursor": "not-a-cursor"},
        {"search": "x", "offset": 1, "cursor": "abc"},
    ]:
        response = await client.get(TASKS, params=params, headers=alice.headers)
        assert_problem(response, 422)


# --- build_tsquery -----------------------------------------------------------------------------

_OPERATORS = re.compile(r"<->|:\*|[&!()]")
_ALLOWED = re.compile(r"[\w'.@/+#-]| ")

NASTY = [
    *HOSTILE_200,
    "x" * (MAX_SEARCH_LENGTH + 1),
    "\x00",
    "a\x00b",
    "a:b:c",
    "foo:*bar",
    "<2>",
    "a <-> b",
    "a<1>b",
    "'a' & 'b'",
    "a\\'b",
    "$$; SELECT 1; $$",
    "-- comment",
    "/* c */",
    "e-mail",
    "-e-mail",
    "foo.bar baz_qux",
    "C++ / C#",
    "a_b_c",
    "__init__",
    "½ x² Ⅻ",
    "İstanbul ǅ ﬁle",
    "\udcff",
    '"a b" -"c d" "e',
    '-"-"',
    '""-""',
    "-" * 50,
    "a" + "\u0301" * 50,
]


@pytest.mark.parametrize("raw", NASTY, ids=lambda q: repr(q[:30]))
async def test_build_tsquery_emits_only_words_and_our_operators(db_session, raw):
    query = build_tsquery(raw)
    if query is None:
        return
    leftover = _OPERATORS.sub(" ", query)
    assert all(_ALLOWED.fullmatch(char) for char in leftover), query
    assert query.count("(") == query.count(")")
    assert query.count("'") % 2 == 0
    assert "\\" not in query
    terms = query.split(" & ")
    assert 1 <= len(terms) <= MAX_SEARCH_TERMS
    # PostgreSQL parses it (no syntax error, whatever the words are).
    parsed = await db_session.scalar(
        text("SELECT to_tsquery(CAST(:config AS regconfig), :q)::text"),
        {"config": SEARCH_CONFIG, "q": query},
    )
    assert isinstance(parsed, str)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("sql", "'sql':*"),
        ("SQL Alchemy", "'SQL':* & 'Alchemy':*"),
        ('"login page"', "('login' <-> 'page')"),
        ('"login"', "'login'"),
        ("login -page", "'login':* & !'page':*"),
        ('fix -"login page"', "'fix':* & !('login' <-> 'page')"),
        ("e-mail", "'e-mail':*"),
        ("node.js", "'node.js':*"),
        ("alice@example.com", "'alice@example.com':*"),
        ("a&b", "('a' <-> 'b':*)"),
        ("it's", "('it' <-> 's':*)"),
        ("café", "'café':*"),
        ("-only", None),
        ('-"only this"', None),
        ("&|!()<->:*'\\", None),
        ('""', None),
        ("   ", None),
        ("", None),
    ],
)
def test_build_tsquery_examples(raw, expected):
    assert build_tsquery(raw) == expected


def test_build_tsquery_caps_the_number_of_terms():
    query = build_tsquery(" ".join(f"w{n}" for n in range(200)))
    assert query is not None
    terms = query.split(" & ")
    assert len(terms) == MAX_SEARCH_TERMS
    assert terms[0] == "'w0':*"
    assert terms[-1] == f"'w{MAX_SEARCH_TERMS - 1}':*"


@pytest.mark.parametrize(
    ("title", "term"),
    [
        ("Upgrade node.js", "node.js"),
        ("Upgrade node.js", "node"),
        ("Edit config.yaml", "config.yaml"),
        ("Release v2.0", "v2.0"),
        ("Ping alice@example.com", "alice@example.com"),
        ("Fix the e-mail form", "e-mail"),
        ("Fix the e-mail form", "mail"),
    ],
)
async def test_words_joined_by_punctuation_are_findable(client, alice, make_task, title, term):
    task = await make_task(alice, title=title)
    response = await client.get(TASKS, params={"search": term}, headers=alice.headers)
    assert response.status_code == 200
    assert [item["id"] for item in response.json()["items"]] == [task["id"]]
