"""A search's prefixes are expanded into the words they stand for (migration 0011), and that must
never change what a search finds.

* property: for random titles, edits and searches, the API finds exactly the tasks the original
  prefix query (`search_vector @@ to_tsquery(...)`, no expansion) matches, in the same order;
* a prefix standing for more words than `SEARCH_PREFIX_WORDS` falls back to filtering the
  user's tasks, with the same results;
* concurrent writers introducing the same new words in different orders neither fail nor wait
  on each other, and every word is searchable afterwards (real commits).
"""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text

from taskapi.kit.services import services_of
from taskapi.models import SEARCH_CONFIG, Task
from taskapi.models.tasks import TASK_SEARCH_LEXEMES
from taskapi.tasks.search_match import SEARCH_PREFIX_WORDS
from taskapi.tasks.search_query import build_tsquery
from tests.conftest import register_and_login
from tests.task_helpers import TASKS, task_url

# Few syllables, so random titles share prefixes and stems in many ways.
SYLLABLES = ["ka", "ko", "kor", "ta", "tan", "ri", "rin", "ring", "s", "ed"]
word = st.lists(st.sampled_from(SYLLABLES), min_size=1, max_size=3).map("".join)
title = st.lists(word, min_size=1, max_size=4).map(" ".join)
query = st.one_of(
    word,
    st.tuples(word, word).map(" ".join),
    st.tuples(word, word).map(lambda pair: f"{pair[0]} -{pair[1]}"),
    st.tuples(word, word).map(lambda pair: f'"{pair[0]} {pair[1]}"'),
)


def salted(salt: str, text_: str) -> str:
    return re.sub(r"\b(?=\w)", salt, text_)


async def api_search(client: httpx.AsyncClient, headers: dict[str, str], text_: str) -> list[int]:
    response = await client.get(TASKS, params={"search": text_, "limit": 100}, headers=headers)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    assert page["total"] == len(page["items"])
    return [item["id"] for item in page["items"]]


async def unexpanded(db_session, owner_id: int, text_: str) -> list[int]:
    """The original prefix query, run directly: what the search must find, in rank order."""
    tsquery = build_tsquery(text_)
    assert tsquery is not None
    query_ = func.to_tsquery(text(f"'{SEARCH_CONFIG}'::regconfig"), tsquery)
    rank = func.ts_rank(Task.search_vector, query_)
    rows = await db_session.execute(
        select(Task.id)
        .where(
            Task.owner_id == owner_id,
            Task.deleted_at.is_(None),
            Task.search_vector.bool_op("@@")(query_),
        )
        .order_by(rank.desc(), Task.id.desc())
    )
    return list(rows.scalars())


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    salt=st.text("bcdfghjklmnpqrstvwxz", min_size=6, max_size=6),
    titles=st.lists(title, min_size=1, max_size=8),
    edits=st.lists(st.tuples(st.integers(0, 7), title), max_size=3),
    queries=st.lists(query, min_size=1, max_size=4),
)
async def test_expanded_search_finds_exactly_what_the_prefix_query_matches(
    client, db_session, salt, titles, edits, queries
):
    """Every word of an example starts with its own salt, so its words are new to the lexicon
    (examples share one database) and an edit may bring words no other task holds."""
    user = await register_and_login(client)
    titles = [salted(salt, text_) for text_ in titles]
    edits = [(index, salted(salt, text_)) for index, text_ in edits]
    queries = [salted(salt, text_) for text_ in queries]
    ids = []
    for text_ in titles:
        response = await client.post(TASKS, json={"title": text_}, headers=user.headers)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    for index, new_title in edits:
        if index < len(ids):
            response = await client.patch(
                task_url(ids[index]), json={"title": new_title}, headers=user.headers
            )
            assert response.status_code == 200, response.text
    for text_ in queries:
        if build_tsquery(text_) is None:
            continue
        expected = await unexpanded(db_session, user.id, text_)
        assert await api_search(client, user.headers, text_) == expected, text_


async def test_a_prefix_standing_for_too_many_words_still_finds_every_match(
    client, db_session, alice, make_task
):
    stem = "qz" + uuid.uuid4().hex[:6].translate(str.maketrans("0123456789", "ghijklmnop"))
    # More distinct words under one prefix than an expansion takes (letters only: not stemmed).
    suffixes = [first + second for first in "bcdfghjklmpt" for second in "bcdfgkm"]
    words = sorted({f"{stem}{suffix}" for suffix in suffixes})[: SEARCH_PREFIX_WORDS + 6]
    assert len(words) > SEARCH_PREFIX_WORDS
    for i, new_word in enumerate(words):
        await make_task(alice, title=f"{new_word} item", description="twice" if i % 7 else "")
    await make_task(alice, title="unrelated")
    expanded_words = await db_session.scalar(
        text("SELECT count(DISTINCT lexeme) FROM task_search_lexemes WHERE lexeme LIKE :p"),
        {"p": f"{stem}%"},
    )
    assert expanded_words == len(words)  # every new word is in the lexicon
    for text_ in (stem, f"{stem}b", f"{stem}b item", f"{stem} -{words[0]}"):
        found = await api_search(client, alice.headers, text_)
        assert found == await unexpanded(db_session, alice.id, text_), text_
        assert found, text_
    # The long prefix is the fallback: it finds all of them, ranked as the others are.
    assert len(await api_search(client, alice.headers, stem)) == len(words)


async def test_a_word_first_written_by_an_edit_is_found_under_a_known_prefix(
    client, alice, make_task
):
    """`contract` is new to the lexicon when the edit writes it, while the prefix already
    stands for `contractor`: the search must find both."""
    salt = "qv" + uuid.uuid4().hex[:6].translate(str.maketrans("0123456789", "ghijklmnop"))
    known = await make_task(alice, title=f"{salt}contractor meeting")
    edited = await make_task(alice, title="draft")
    response = await client.patch(
        task_url(edited["id"]), json={"title": f"{salt}contract signed"}, headers=alice.headers
    )
    assert response.status_code == 200, response.text
    found = await api_search(client, alice.headers, f"{salt}contract")
    assert sorted(found) == sorted([known["id"], edited["id"]])


async def test_a_prefix_no_word_starts_with_finds_nothing(client, alice, make_task):
    await make_task(alice, title="something ordinary")
    assert await api_search(client, alice.headers, "xqjvwordnobodywrote") == []
    assert await api_search(client, alice.headers, "ordinary xqjvwordnobodywrote") == []


async def test_writers_adding_the_same_new_words_at_once_all_succeed(live_client, live_app):
    """Twenty clients create tasks made of the same six brand-new words, each in its own random
    order, all at once: no request fails (no deadlock, no unique violation), and each word finds
    every task."""
    users = [await register_and_login(live_client) for _ in range(4)]
    tag = uuid.uuid4().hex[:8].translate(str.maketrans("0123456789", "ghijklmnop"))
    words = [f"nova{tag}{letter}" for letter in "bcdfgh"]
    rng = random.Random(tag)

    async def create(i: int) -> int:
        await asyncio.sleep(rng.random() / 50)
        shuffled = rng.sample(words, len(words))
        response = await live_client.post(
            TASKS,
            json={"title": " ".join(shuffled[:4]), "description": " ".join(shuffled[4:])},
            headers=users[i % len(users)].headers,
        )
        return response.status_code

    statuses = await asyncio.gather(*(create(i) for i in range(20)))
    assert statuses == [201] * 20
    for user in users:
        for new_word in words:
            assert len(await api_search(live_client, user.headers, new_word)) == 5, new_word
        assert len(await api_search(live_client, user.headers, f"nova{tag}")) == 5
    async with services_of(live_app).sessionmaker() as session:
        # The words' lexemes, as PostgreSQL stems them: with some tags a word loses a suffix
        # (`...ic`, `...ed`) and no longer starts with the tag.
        lexemes = set(
            await session.scalar(
                text(f"SELECT tsvector_to_array(to_tsvector('{SEARCH_CONFIG}', :words))"),
                {"words": " ".join(words)},
            )
        )
        known = await session.scalar(
            select(func.count(func.distinct(TASK_SEARCH_LEXEMES.c.lexeme))).where(
                TASK_SEARCH_LEXEMES.c.lexeme.in_(lexemes)
            )
        )
    assert len(lexemes) == len(words)
    assert known == len(words)


async def test_the_expansion_function_on_its_own(db_session, alice, make_task):
    """task_search_expand: prefixes to words, with quoting kept; a query of stop words alone
    stays empty (matching nothing, without falling back to reading every task); too many
    words is NULL (the fallback)."""
    await make_task(alice, title="zebrafish zebras zebu")

    async def expand(raw: str, max_words: int = SEARCH_PREFIX_WORDS) -> str | None:
        result = await db_session.scalar(
            text(f"SELECT task_search_expand(to_tsquery('{SEARCH_CONFIG}', :q), :n)::text"),
            {"q": raw, "n": max_words},
        )
        return None if result is None else str(result)

    assert await expand("zeb:*") == "'zebra' | 'zebrafish' | 'zebu'"
    assert await expand("zeb:* & !zebu") == "( 'zebra' | 'zebrafish' | 'zebu' ) & !'zebu'"
    assert await expand("zeb:*", 2) is None
    assert await expand("qqqzx:*") == "'qqqzx':*"  # no word starts so: kept
    assert await expand("the:*") == ""
