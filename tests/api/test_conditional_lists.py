"""Conditional GETs of the lists and the stats (API.md Part 2, "Strictness and small additions").

Every list and `GET /tasks/stats` carries a strong ETag of its body (per caller and query);
If-None-Match with that tag (weakly compared, in a list, or `*`) is a 304 with no body and no
Content-Type; any visible change gives a new tag; a 304 costs no rate-limit token.
"""

from __future__ import annotations

import re
import socket
import time
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncConnection

from taskapi.kit.conditional import body_etag, none_match, parse_tags
from taskapi.kit.ratelimit import LocalBuckets, Policy
from tests.api.test_ratelimit import assert_rate_limited, http, limited_settings, running
from tests.conftest import MakeUser, UserHandle

API = "/api/v1"
TASKS = f"{API}/tasks"
STATS = f"{TASKS}/stats"
PROJECTS = f"{API}/projects"
NOTIFICATIONS = f"{API}/notifications"
TRASH = f"{API}/trash"
LISTS = (TASKS, PROJECTS, NOTIFICATIONS, TRASH, STATS)
STRONG_TAG = re.compile(r'^"[0-9a-f]{32}"$')


async def etag_of(client: httpx.AsyncClient, user: UserHandle, url: str) -> str:
    response = await client.get(url, headers=user.headers)
    assert response.status_code == 200, (url, response.text)
    tag = response.headers["etag"]
    assert STRONG_TAG.match(tag), (url, tag)
    return tag


async def conditional(
    client: httpx.AsyncClient, user: UserHandle, url: str, if_none_match: str
) -> httpx.Response:
    return await client.get(url, headers={**user.headers, "If-None-Match": if_none_match})


def assert_not_modified(response: httpx.Response, etag: str) -> None:
    assert response.status_code == 304, response.text
    assert response.content == b""
    assert response.headers["etag"] == etag
    assert "content-type" not in response.headers
    assert response.headers.get("content-length", "0") == "0"


async def test_every_list_and_the_stats_carry_an_etag_and_answer_304(
    client: httpx.AsyncClient, alice: UserHandle, make_task: Any
) -> None:
    await make_task(alice, title="one")
    assert (await client.post(PROJECTS, json={"name": "p"}, headers=alice.headers)).is_success
    for url in LISTS:
        first = await client.get(url, headers=alice.headers)
        assert first.status_code == 200, first.text
        assert first.headers["content-type"] == "application/json"
        etag = first.headers["etag"]
        assert STRONG_TAG.match(etag), etag
        again = await client.get(url, headers=alice.headers)
        assert again.headers["etag"] == etag, url
        assert again.content == first.content, url

        # The tag itself, weakly compared, in a list, or `*`: not modified.
        for header in (etag, f"W/{etag}", f'"other", {etag}', f'W/"x", W/{etag} , "y"', "*"):
            assert_not_modified(await conditional(client, alice, url, header), etag)
        # Any other tag: the full answer, with its tag.
        for header in ('"other"', etag[:-2] + '"', f'"{etag}"', "W/", ""):
            full = await conditional(client, alice, url, header)
            assert full.status_code == 200, (url, header)
            assert full.content == first.content
            assert full.headers["etag"] == etag


async def test_every_visible_change_gives_a_new_etag(
    client: httpx.AsyncClient, alice: UserHandle, bob: UserHandle, make_task: Any
) -> None:
    last: dict[tuple[int, str], str] = {}

    async def changed(user: UserHandle, *urls: str) -> None:
        """Each of `urls` shows `user` a new tag; the one held so far now gets a 200."""
        for url in urls:
            tag = await etag_of(client, user, url)
            held = last.get((user.id, url))
            assert tag != held, url
            if held is not None:
                assert (await conditional(client, user, url, held)).status_code == 200
            assert_not_modified(await conditional(client, user, url, tag), tag)
            last[user.id, url] = tag

    async def unchanged(user: UserHandle, url: str) -> None:
        tag = await etag_of(client, user, url)
        assert tag == last[user.id, url], url
        assert_not_modified(await conditional(client, user, url, tag), tag)

    await changed(alice, *LISTS)
    await changed(bob, *LISTS)
    task = await make_task(alice, title="first")  # create
    await changed(alice, TASKS, STATS)
    await unchanged(alice, PROJECTS)
    patched = await client.patch(
        f"{TASKS}/{task['id']}", json={"title": "renamed"}, headers=alice.headers
    )
    assert patched.status_code == 200  # update (stats show no title: same counts)
    await changed(alice, TASKS)
    await unchanged(alice, STATS)

    # Assigned to Bob: his notification, then his change shows in Alice's list.
    assigned = await client.post(
        f"{TASKS}/{task['id']}/assign", json={"assignee_id": bob.id}, headers=alice.headers
    )
    assert assigned.status_code == 200, assigned.text
    await changed(alice, TASKS)
    await changed(bob, NOTIFICATIONS)
    by_bob = await client.post(
        f"{TASKS}/{task['id']}/transition", json={"status": "in_progress"}, headers=bob.headers
    )
    assert by_bob.status_code == 200, by_bob.text
    await changed(alice, TASKS, STATS)

    # Bob reads his notification.
    notification = (await client.get(NOTIFICATIONS, headers=bob.headers)).json()["items"][0]
    read = await client.post(f"{NOTIFICATIONS}/{notification['id']}/read", headers=bob.headers)
    assert read.status_code == 200, read.text
    await changed(bob, NOTIFICATIONS)

    # A shared project: created, Bob added (his notification), Bob's task shows for Alice.
    project = await client.post(PROJECTS, json={"name": "shared"}, headers=alice.headers)
    assert project.status_code == 201, project.text
    project_id = project.json()["id"]
    await changed(alice, PROJECTS)
    member = await client.put(
        f"{PROJECTS}/{project_id}/members/{bob.id}", json={"role": "editor"}, headers=alice.headers
    )
    assert member.status_code == 200, member.text
    await changed(alice, PROJECTS)  # member_count
    await changed(bob, NOTIFICATIONS)
    created = await client.post(
        TASKS, json={"title": "bob's", "project_id": project_id}, headers=bob.headers
    )
    assert created.status_code == 201, created.text
    await changed(alice, TASKS, STATS)
    renamed = await client.patch(
        f"{PROJECTS}/{project_id}", json={"name": "renamed"}, headers=alice.headers
    )
    assert renamed.status_code == 200, renamed.text
    await changed(alice, PROJECTS)
    await changed(bob, PROJECTS)

    deleted = await client.delete(f"{TASKS}/{task['id']}", headers=alice.headers)  # delete
    assert deleted.status_code == 204, deleted.text
    await changed(alice, TASKS, STATS, TRASH)


async def test_the_etag_differs_per_user_and_per_query(
    client: httpx.AsyncClient, make_user: MakeUser, make_task: Any
) -> None:
    carol, dave = await make_user(), await make_user()
    # Same body (no tasks, no notifications), different callers: different tags.
    for url in (STATS, NOTIFICATIONS, f"{TASKS}?status=done"):
        theirs = [await client.get(url, headers=u.headers) for u in (carol, dave)]
        assert theirs[0].content == theirs[1].content, url
        assert theirs[0].headers["etag"] != theirs[1].headers["etag"], url
        # One caller's tag is no good for the other.
        other = await conditional(client, dave, url, theirs[0].headers["etag"])
        assert other.status_code == 200

    for n in range(3):
        await make_task(carol, title=f"t{n}", priority="high" if n else "low")
    first = await client.get(f"{TASKS}?limit=1", headers=carol.headers)
    cursor = first.json()["next_cursor"]
    assert cursor
    urls = [
        TASKS,
        f"{TASKS}?limit=1",
        f"{TASKS}?limit=2",
        f"{TASKS}?priority=high",
        f"{TASKS}?status=todo",  # the same tasks as TASKS: the body alone would not tell
        f"{TASKS}?limit=1&cursor={cursor}",
        f"{STATS}",
        f"{NOTIFICATIONS}?limit=5",
    ]
    tags = [await etag_of(client, carol, url) for url in urls]
    assert len(set(tags)) == len(tags), tags
    assert (await conditional(client, carol, f"{TASKS}?status=todo", tags[0])).status_code == 200


async def test_a_burst_of_304s_never_drains_the_bucket_while_200s_do(
    connection: AsyncConnection, alice: UserHandle
) -> None:
    # user: 5 tokens, one back every 2 s (test_ratelimit.LIMITS): after k spent, r=5-k, t=2k.
    async with running(limited_settings(), connection) as application, http(application) as c:
        for spent, url in enumerate((TASKS, STATS), start=1):
            first = await c.get(url, headers=alice.headers)
            assert first.status_code == 200, first.text
            assert first.headers["ratelimit"] == f'"user";r={5 - spent};t={2 * spent}'
            etag = first.headers["etag"]
            for _ in range(4 * 5):
                response = await conditional(c, alice, url, etag)
                assert_not_modified(response, etag)
                # The headers say what is left once the token came back: what the 200 left.
                assert response.headers["ratelimit-policy"] == '"user";q=5;w=10'
                assert response.headers["ratelimit"] == f'"user";r={5 - spent};t={2 * spent}'
        # 200s spend: the two above plus three is the burst, then 429 (conditional or not).
        spent_now = [await c.get(TASKS, headers=alice.headers) for _ in range(3)]
        assert [r.status_code for r in spent_now] == [200] * 3
        assert spent_now[-1].headers["ratelimit"] == '"user";r=0;t=10'
        emptied = time.monotonic()
        # The token refills while these run (by a loaded machine's second, Retry-After says 1).
        for response in (
            await conditional(c, alice, TASKS, etag),
            await c.get(TASKS, headers=alice.headers),
        ):
            assert_rate_limited(
                response, retry_after=2, seconds_since_full=time.monotonic() - emptied
            )


async def test_304s_cost_nothing_from_the_in_memory_buckets_either(
    connection: AsyncConnection, alice: UserHandle
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    settings = limited_settings(redis_url=f"redis://127.0.0.1:{closed_port}/0")
    async with running(settings, connection) as application, http(application) as c:
        started = time.monotonic()  # the first token taken: the bucket refills from here
        etag = (await c.get(NOTIFICATIONS, headers=alice.headers)).headers["etag"]
        for _ in range(12):
            response = await conditional(c, alice, NOTIFICATIONS, etag)
            assert_not_modified(response, etag)
            assert response.headers["ratelimit"] == '"user";r=4;t=2'
        for _ in range(4):
            assert (await c.get(NOTIFICATIONS, headers=alice.headers)).status_code == 200
        refused = await c.get(NOTIFICATIONS, headers=alice.headers)
        assert_rate_limited(refused, retry_after=2, seconds_since_full=time.monotonic() - started)


def test_local_refund_is_one_token_capped_at_the_burst() -> None:
    buckets, policy = LocalBuckets(), Policy("user", 2, 1)  # one token a minute
    taken = buckets.take("k", policy)
    assert taken.allowed
    assert taken.local
    assert taken.key == "k"
    assert buckets.take("k", policy).allowed
    refused = buckets.take("k", policy)
    assert not refused.allowed
    assert refused.key == ""  # nothing taken: nothing to give back
    assert 1.0 <= buckets.refund("k", policy) < 1.01  # one token (and a few ms of refill)
    assert buckets.take("k", policy).allowed  # ...which can be spent again
    assert not buckets.take("k", policy).allowed
    assert buckets.refund("k", policy) < 1.01
    assert buckets.refund("k", policy) == 2.0  # capped at the burst
    assert buckets.refund("unknown", policy) == 2.0  # a bucket never seen is full


def test_tag_lists_are_parsed_and_compared_weakly() -> None:
    assert parse_tags(' "a" , W/"b",,"c,d" ,* ') == ['"a"', 'W/"b"', '"c,d"', "*"]
    assert parse_tags("") == []
    assert parse_tags(" , ") == []
    tag = body_etag(b"[]", b"user 1")
    assert tag != body_etag(b"[]", b"user 2")
    assert tag != body_etag(b"[ ]", b"user 1")
    for header in (tag, f"W/{tag}", "*", f'"c,d", {tag}', f" W/{tag} "):
        assert none_match(header, tag), header
    assert not none_match(None, tag)
    for other in ('"c,d"', tag.strip('"'), f'"W/{tag}"', ""):
        assert not none_match(other, tag), other


async def test_openapi_documents_the_etag_the_header_and_the_304(
    client: httpx.AsyncClient,
) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    for url in LISTS:
        operation = paths[url]["get"]
        headers = [p for p in operation["parameters"] if p["in"] == "header"]
        assert [p["name"].lower() for p in headers] == ["if-none-match"], url
        responses = operation["responses"]
        assert responses["200"]["headers"]["ETag"]["required"] is True, url
        assert "ETag" in responses["304"]["headers"], url
        assert "content" not in responses["304"], url
