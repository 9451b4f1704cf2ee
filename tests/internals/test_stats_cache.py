"""The per-user stats cache: GET /api/v1/tasks/stats is served from Redis, and every kind of write
makes the next read of every affected user exact again (docs/api.md, "Rate limits and caching":
stats are never stale after a change). StatsCache's generation logic is also exercised on its
own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis.asyncio as redis

from taskapi.kit.cache import RedisGuard
from taskapi.tasks.stats_cache import StatsCache
from tests.conftest import StatementLog, UserHandle
from tests.task_helpers import TASKS, assert_problem, task_url

STATS = f"{TASKS}/stats"
STATUSES = ("todo", "in_progress", "done", "cancelled")
PRIORITIES = ("low", "medium", "high", "urgent")

YESTERDAY = str(datetime.now(UTC).date() - timedelta(days=1))
TOMORROW = str(datetime.now(UTC).date() + timedelta(days=1))


def expected(
    *,
    status: dict[str, int] | None = None,
    priority: dict[str, int] | None = None,
    tags: dict[str, int] | None = None,
    overdue: int = 0,
) -> dict[str, Any]:
    """A complete stats body from sparse counts (total and rates are derived from the statuses)."""
    by_status = {s: (status or {}).get(s, 0) for s in STATUSES}
    by_priority = {p: (priority or {}).get(p, 0) for p in PRIORITIES}
    total = sum(by_status.values())
    assert sum(by_priority.values()) == total, "inconsistent expectation"
    done = by_status["done"]
    return {
        "total": total,
        "completed": done,
        "incomplete": total - done,
        "completion_rate": round(done * 100 / total, 1) if total else 0.0,
        "overdue": overdue,
        "by_status": by_status,
        "by_priority": by_priority,
        "by_tag": tags or {},
    }


EMPTY = expected()


def _ran_stats_sql(log: StatementLog) -> bool:
    return any("GROUP BY" in statement.upper() for statement in log.statements)


class Stats:
    """Reads stats as a user and tells whether the response was computed or came from the cache."""

    def __init__(self, client: httpx.AsyncClient, sql_log: StatementLog) -> None:
        self.client = client
        self.sql_log = sql_log

    async def read(self, user: UserHandle) -> tuple[dict[str, Any], bool]:
        self.sql_log.clear()
        response = await self.client.get(STATS, headers=user.headers)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
        return response.json(), _ran_stats_sql(self.sql_log)

    async def get(self, user: UserHandle) -> dict[str, Any]:
        body, _ = await self.read(user)
        return body

    async def cached(self, user: UserHandle, want: dict[str, Any]) -> None:
        """Assert `want`, and that the cache now holds it (a repeated read runs no stats SQL), so
        a later read can only be exact if the write in between invalidated it."""
        assert await self.get(user) == want
        body, computed = await self.read(user)
        assert body == want
        assert not computed, "the second read should have been served from the cache"


@pytest.fixture
def stats(client: httpx.AsyncClient, sql_log: StatementLog) -> Stats:
    return Stats(client, sql_log)


async def ok(
    client: httpx.AsyncClient, user: UserHandle, method: str, url: str, body: Any = None
) -> httpx.Response:
    response = await client.request(method, url, json=body, headers=user.headers)
    assert response.status_code in (200, 201, 204), response.text
    return response


# --- the cache is used -------------------------------------------------------------------------


async def test_a_repeated_read_is_served_from_the_cache_with_the_same_body(
    client, alice, make_task, sql_log
):
    await make_task(alice, status="done", priority="high", tags=["a", "b"])
    await make_task(alice, tags=["a"], due_date=YESTERDAY)

    sql_log.clear()
    first = await client.get(STATS, headers=alice.headers)
    first_statements = list(sql_log.statements)
    sql_log.clear()
    second = await client.get(STATS, headers=alice.headers)
    second_statements = list(sql_log.statements)

    assert first.status_code == second.status_code == 200
    assert any("GROUP BY" in s.upper() for s in first_statements), first_statements
    assert not any("GROUP BY" in s.upper() for s in second_statements), second_statements
    assert len(second_statements) < len(first_statements)
    # Byte for byte the computed body, and the right numbers.
    assert second.content == first.content
    assert second.headers["content-type"] == first.headers["content-type"]
    assert second.json() == expected(
        status={"done": 1, "todo": 1},
        priority={"high": 1, "medium": 1},
        tags={"a": 2, "b": 1},
        overdue=1,
    )


async def test_each_user_gets_their_own_cached_stats(stats, alice, bob, make_task):
    await make_task(alice, tags=["mine"])
    await stats.cached(
        alice, expected(status={"todo": 1}, priority={"medium": 1}, tags={"mine": 1})
    )
    await stats.cached(bob, EMPTY)
    await stats.cached(
        alice, expected(status={"todo": 1}, priority={"medium": 1}, tags={"mine": 1})
    )


# --- every write invalidates every affected user -----------------------------------------------


async def test_create_refreshes_the_owner(client, stats, alice, make_task):
    await stats.cached(alice, EMPTY)
    await make_task(alice, status="in_progress", priority="urgent", tags=["x"])
    await stats.cached(
        alice, expected(status={"in_progress": 1}, priority={"urgent": 1}, tags={"x": 1})
    )
    await make_task(alice, status="done", due_date=YESTERDAY)
    assert await stats.get(alice) == expected(
        status={"in_progress": 1, "done": 1}, priority={"urgent": 1, "medium": 1}, tags={"x": 1}
    )


async def test_create_with_an_assignee_refreshes_owner_and_assignee(
    stats, alice, bob, make_user, make_task
):
    carol = await make_user()
    await stats.cached(alice, EMPTY)
    await stats.cached(bob, EMPTY)
    await stats.cached(carol, EMPTY)
    await make_task(alice, priority="low", tags=["team"], due_date=YESTERDAY, assignee_id=bob.id)
    want = expected(status={"todo": 1}, priority={"low": 1}, tags={"team": 1}, overdue=1)
    assert await stats.get(alice) == want
    assert await stats.get(bob) == want
    # An uninvolved user's cached stats stay as they were (and correct).
    assert await stats.get(carol) == EMPTY


@pytest.mark.parametrize(
    ("patch", "after"),
    [
        (
            {"status": "in_progress"},
            expected(status={"in_progress": 1}, priority={"medium": 1}, tags={"a": 1}, overdue=1),
        ),
        (
            {"completed": True},
            expected(status={"done": 1}, priority={"medium": 1}, tags={"a": 1}),
        ),
        (
            {"priority": "urgent"},
            expected(status={"todo": 1}, priority={"urgent": 1}, tags={"a": 1}, overdue=1),
        ),
        (
            {"tags": ["b", "c"]},
            expected(status={"todo": 1}, priority={"medium": 1}, tags={"b": 1, "c": 1}, overdue=1),
        ),
        (
            {"due_date": TOMORROW},
            expected(status={"todo": 1}, priority={"medium": 1}, tags={"a": 1}),
        ),
        (
            {"due_date": None},
            expected(status={"todo": 1}, priority={"medium": 1}, tags={"a": 1}),
        ),
    ],
    ids=["status", "completed", "priority", "tags", "due_date", "clear_due_date"],
)
@pytest.mark.parametrize("writer", ["owner", "assignee"])
async def test_patch_refreshes_owner_and_assignee(
    client, stats, alice, bob, make_task, patch, after, writer
):
    task = await make_task(alice, tags=["a"], due_date=YESTERDAY, assignee_id=bob.id)
    before = expected(status={"todo": 1}, priority={"medium": 1}, tags={"a": 1}, overdue=1)
    await stats.cached(alice, before)
    await stats.cached(bob, before)

    await ok(client, alice if writer == "owner" else bob, "PATCH", task_url(task["id"]), patch)

    assert await stats.get(alice) == after
    assert await stats.get(bob) == after


async def test_put_refreshes_owner_and_assignee(client, stats, alice, bob, make_task):
    task = await make_task(alice, priority="high", tags=["old"], assignee_id=bob.id)
    before = expected(status={"todo": 1}, priority={"high": 1}, tags={"old": 1})
    await stats.cached(alice, before)
    await stats.cached(bob, before)

    body = {
        "title": "replaced",
        "status": "in_progress",
        "priority": "low",
        "tags": ["new", "newer"],
        "due_date": YESTERDAY,
        "assignee_id": bob.id,
    }
    await ok(client, bob, "PUT", task_url(task["id"]), body)
    after = expected(
        status={"in_progress": 1}, priority={"low": 1}, tags={"new": 1, "newer": 1}, overdue=1
    )
    await stats.cached(alice, after)
    await stats.cached(bob, after)

    # A PUT without assignee_id unassigns (omitted fields take their defaults): bob loses it.
    await ok(client, alice, "PUT", task_url(task["id"]), {"title": "mine again"})
    assert await stats.get(alice) == expected(status={"todo": 1}, priority={"medium": 1})
    assert await stats.get(bob) == EMPTY


async def test_transition_refreshes_owner_and_assignee(client, stats, alice, bob, make_task):
    task = await make_task(alice, due_date=YESTERDAY, assignee_id=bob.id)
    await make_task(alice, status="done")
    await stats.cached(
        alice, expected(status={"todo": 1, "done": 1}, priority={"medium": 2}, overdue=1)
    )
    await stats.cached(bob, expected(status={"todo": 1}, priority={"medium": 1}, overdue=1))

    await ok(client, bob, "POST", task_url(task["id"]) + "/transition", {"status": "done"})

    await stats.cached(alice, expected(status={"done": 2}, priority={"medium": 2}))
    await stats.cached(bob, expected(status={"done": 1}, priority={"medium": 1}))

    await ok(client, alice, "POST", task_url(task["id"]) + "/transition", {"status": "todo"})

    assert await stats.get(alice) == expected(
        status={"todo": 1, "done": 1}, priority={"medium": 2}, overdue=1
    )
    assert await stats.get(bob) == expected(status={"todo": 1}, priority={"medium": 1}, overdue=1)


async def test_adding_and_removing_tags_refresh_owner_and_assignee(
    client, stats, alice, bob, make_task
):
    task = await make_task(alice, tags=["keep"], assignee_id=bob.id)
    before = expected(status={"todo": 1}, priority={"medium": 1}, tags={"keep": 1})
    await stats.cached(alice, before)
    await stats.cached(bob, before)

    await ok(client, bob, "POST", task_url(task["id"]) + "/tags", ["Fresh", "keep"])
    with_fresh = expected(status={"todo": 1}, priority={"medium": 1}, tags={"keep": 1, "fresh": 1})
    await stats.cached(alice, with_fresh)
    await stats.cached(bob, with_fresh)

    await ok(client, alice, "DELETE", task_url(task["id"]) + "/tags/keep")
    after = expected(status={"todo": 1}, priority={"medium": 1}, tags={"fresh": 1})
    assert await stats.get(alice) == after
    assert await stats.get(bob) == after


async def test_assign_unassign_and_reassign_move_the_task_between_users(
    client, stats, alice, bob, make_user, make_task
):
    carol = await make_user()
    task = await make_task(alice, priority="high", tags=["moving"], status="in_progress")
    await make_task(bob, tags=["bobs"])
    own_bob = expected(status={"todo": 1}, priority={"medium": 1}, tags={"bobs": 1})
    moving = expected(status={"in_progress": 1}, priority={"high": 1}, tags={"moving": 1})
    both = expected(
        status={"todo": 1, "in_progress": 1},
        priority={"medium": 1, "high": 1},
        tags={"bobs": 1, "moving": 1},
    )
    await stats.cached(alice, moving)
    await stats.cached(bob, own_bob)
    await stats.cached(carol, EMPTY)

    # assign: the new assignee gains it
    await ok(client, alice, "POST", task_url(task["id"]) + "/assign", {"assignee_id": bob.id})
    await stats.cached(bob, both)
    await stats.cached(alice, moving)
    await stats.cached(carol, EMPTY)

    # reassign: the old assignee loses it, the new one gains it
    await ok(client, alice, "POST", task_url(task["id"]) + "/assign", {"assignee_id": carol.id})
    await stats.cached(bob, own_bob)
    await stats.cached(carol, moving)
    await stats.cached(alice, moving)

    # reassign through PATCH
    await ok(client, alice, "PATCH", task_url(task["id"]), {"assignee_id": bob.id})
    await stats.cached(bob, both)
    await stats.cached(carol, EMPTY)

    # unassign: the old assignee loses it
    await ok(client, alice, "POST", task_url(task["id"]) + "/assign", {"assignee_id": None})
    assert await stats.get(bob) == own_bob
    assert await stats.get(carol) == EMPTY
    assert await stats.get(alice) == moving


async def test_bulk_patch_refreshes_every_owner_and_assignee(
    client, stats, alice, bob, make_user, make_task
):
    carol = await make_user()
    mine = await make_task(alice, tags=["a"])
    mine_for_bob = await make_task(alice, tags=["a"], assignee_id=bob.id)
    # carol's task assigned to alice: alice's bulk change must refresh carol too.
    carols = await make_task(carol, tags=["c"], assignee_id=alice.id)
    await stats.cached(
        alice, expected(status={"todo": 3}, priority={"medium": 3}, tags={"a": 2, "c": 1})
    )
    await stats.cached(bob, expected(status={"todo": 1}, priority={"medium": 1}, tags={"a": 1}))
    await stats.cached(carol, expected(status={"todo": 1}, priority={"medium": 1}, tags={"c": 1}))

    response = await ok(
        client,
        alice,
        "PATCH",
        f"{TASKS}/bulk",
        {
            "task_ids": [mine["id"], mine_for_bob["id"], carols["id"]],
            "updates": {"priority": "urgent", "tags": ["z"], "status": "in_progress"},
        },
    )
    assert response.json()["successful"] == 3

    assert await stats.get(alice) == expected(
        status={"in_progress": 3}, priority={"urgent": 3}, tags={"z": 3}
    )
    one_changed = expected(status={"in_progress": 1}, priority={"urgent": 1}, tags={"z": 1})
    await stats.cached(bob, one_changed)
    await stats.cached(carol, one_changed)


async def test_bulk_patch_of_the_assignee_moves_tasks_between_users(
    client, stats, alice, bob, make_user, make_task
):
    carol = await make_user()
    first = await make_task(alice, assignee_id=bob.id, priority="low")
    second = await make_task(alice, assignee_id=bob.id, priority="high")
    await stats.cached(bob, expected(status={"todo": 2}, priority={"low": 1, "high": 1}))
    await stats.cached(carol, EMPTY)

    await ok(
        client,
        alice,
        "PATCH",
        f"{TASKS}/bulk",
        {"task_ids": [first["id"]], "updates": {"assignee_id": carol.id}},
    )
    assert await stats.get(bob) == expected(status={"todo": 1}, priority={"high": 1})
    await stats.cached(carol, expected(status={"todo": 1}, priority={"low": 1}))

    await ok(
        client,
        alice,
        "PATCH",
        f"{TASKS}/bulk",
        {"task_ids": [first["id"], second["id"]], "updates": {"assignee_id": None}},
    )
    assert await stats.get(bob) == EMPTY
    assert await stats.get(carol) == EMPTY
    assert await stats.get(alice) == expected(status={"todo": 2}, priority={"low": 1, "high": 1})


async def test_bulk_status_refreshes_owners_and_assignees_for_the_items_that_succeed(
    client, stats, alice, bob, make_task
):
    todo = await make_task(alice, assignee_id=bob.id, due_date=YESTERDAY)
    cancelled = await make_task(alice, status="cancelled")  # cancelled -> done is invalid
    bobs = await make_task(bob, assignee_id=alice.id)
    await stats.cached(
        alice,
        expected(status={"todo": 2, "cancelled": 1}, priority={"medium": 3}, overdue=1),
    )
    await stats.cached(bob, expected(status={"todo": 2}, priority={"medium": 2}, overdue=1))

    response = await ok(
        client,
        alice,
        "POST",
        f"{TASKS}/bulk-status",
        {"task_ids": [todo["id"], cancelled["id"], bobs["id"]], "target_status": "done"},
    )
    assert (response.json()["successful"], response.json()["failed"]) == (2, 1)

    assert await stats.get(alice) == expected(
        status={"done": 2, "cancelled": 1}, priority={"medium": 3}
    )
    assert await stats.get(bob) == expected(status={"done": 2}, priority={"medium": 2})


async def test_delete_refreshes_owner_and_assignee(client, stats, alice, bob, make_task):
    shared = await make_task(alice, tags=["gone"], assignee_id=bob.id, status="done")
    await make_task(alice, tags=["stays"])
    await stats.cached(
        alice,
        expected(
            status={"done": 1, "todo": 1}, priority={"medium": 2}, tags={"gone": 1, "stays": 1}
        ),
    )
    await stats.cached(bob, expected(status={"done": 1}, priority={"medium": 1}, tags={"gone": 1}))

    # The assignee may not delete: nothing changes.
    assert_problem(await client.delete(task_url(shared["id"]), headers=bob.headers), 403)
    await stats.cached(bob, expected(status={"done": 1}, priority={"medium": 1}, tags={"gone": 1}))

    await ok(client, alice, "DELETE", task_url(shared["id"]))
    assert await stats.get(alice) == expected(
        status={"todo": 1}, priority={"medium": 1}, tags={"stays": 1}
    )
    assert await stats.get(bob) == EMPTY


async def test_deleting_an_owner_account_drops_its_tasks_from_the_assignee_stats(
    client, stats, alice, bob, make_user, make_task
):
    carol = await make_user()
    await make_task(carol, priority="urgent", tags=["carols"], assignee_id=bob.id)
    await make_task(carol, tags=["carols"], assignee_id=alice.id, status="done")
    await make_task(carol, tags=["private"])
    await make_task(bob, tags=["bobs"])
    await stats.cached(
        bob,
        expected(
            status={"todo": 2}, priority={"urgent": 1, "medium": 1}, tags={"carols": 1, "bobs": 1}
        ),
    )
    await stats.cached(
        alice, expected(status={"done": 1}, priority={"medium": 1}, tags={"carols": 1})
    )

    await ok(client, carol, "DELETE", "/api/v1/users/me")

    assert await stats.get(bob) == expected(
        status={"todo": 1}, priority={"medium": 1}, tags={"bobs": 1}
    )
    assert await stats.get(alice) == EMPTY
    # The deleted account can no longer read anything, cached or not.
    assert (await client.get(STATS, headers=carol.headers)).status_code == 401


async def test_deleting_an_assignee_account_keeps_the_owner_stats_consistent(
    client, stats, alice, bob, make_task
):
    task = await make_task(alice, priority="high", tags=["t"], assignee_id=bob.id)
    await make_task(bob, tags=["bobs"], assignee_id=alice.id)  # goes with bob's account
    await stats.cached(
        alice,
        expected(status={"todo": 2}, priority={"high": 1, "medium": 1}, tags={"t": 1, "bobs": 1}),
    )

    await ok(client, bob, "DELETE", "/api/v1/users/me")

    # The task alice owns stays (now unassigned); the one bob owned is gone.
    after = expected(status={"todo": 1}, priority={"high": 1}, tags={"t": 1})
    await stats.cached(alice, after)
    remaining = await client.get(task_url(task["id"]), headers=alice.headers)
    assert remaining.status_code == 200
    assert remaining.json()["assignee_id"] is None


async def test_deleting_an_assignee_account_leaves_an_owner_with_only_owned_tasks_unchanged(
    client, stats, alice, bob, make_task
):
    task = await make_task(alice, status="in_progress", tags=["t"], assignee_id=bob.id)
    want = expected(status={"in_progress": 1}, priority={"medium": 1}, tags={"t": 1})
    await stats.cached(alice, want)

    await ok(client, bob, "DELETE", "/api/v1/users/me")

    assert await stats.get(alice) == want
    # ... and still right after a later change of that task.
    await ok(client, alice, "POST", task_url(task["id"]) + "/transition", {"status": "done"})
    assert await stats.get(alice) == expected(
        status={"done": 1}, priority={"medium": 1}, tags={"t": 1}
    )


# --- failed writes -----------------------------------------------------------------------------


async def test_failed_writes_leave_the_cached_stats_correct(client, stats, alice, bob, make_task):
    task = await make_task(alice, status="done", tags=["a"], assignee_id=bob.id)
    want = expected(status={"done": 1}, priority={"medium": 1}, tags={"a": 1})
    await stats.cached(alice, want)
    await stats.cached(bob, want)
    url = task_url(task["id"])

    # done -> in_progress is not a valid transition, wherever it is asked for.
    transition = await client.post(
        url + "/transition", json={"status": "in_progress"}, headers=alice.headers
    )
    assert_problem(transition, 409, "invalid_transition")
    patch = await client.patch(url, json={"status": "cancelled", "tags": []}, headers=bob.headers)
    assert_problem(patch, 409, "invalid_transition")
    stale = await client.patch(
        url, json={"priority": "urgent"}, headers={**alice.headers, "If-Match": '"999"'}
    )
    assert_problem(stale, 412)
    assert_problem(await client.delete(url + "/tags/nope", headers=alice.headers), 404)
    assert_problem(
        await client.post(url + "/assign", json={"assignee_id": alice.id}, headers=bob.headers),
        403,
    )

    assert await stats.get(alice) == want
    assert await stats.get(bob) == want
    unchanged = await client.get(url, headers=alice.headers)
    assert (unchanged.json()["status"], unchanged.json()["tags"]) == ("done", ["a"])
    # A real change afterwards is still picked up.
    await ok(client, alice, "POST", url + "/transition", {"status": "todo"})
    reopened = expected(status={"todo": 1}, priority={"medium": 1}, tags={"a": 1})
    assert await stats.get(alice) == reopened
    assert await stats.get(bob) == reopened


# --- StatsCache against real Redis -------------------------------------------------------------


@pytest.fixture
async def stats_cache(settings) -> AsyncIterator[tuple[StatsCache, redis.Redis]]:
    client = redis.Redis.from_url(settings.redis_url)
    prefix = f"taskapi-test:{uuid.uuid4().hex}:"
    try:
        yield StatsCache(RedisGuard(client, cooldown_seconds=1.0), prefix, ttl_seconds=60), client
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_stats_cache_returns_what_was_stored_under_the_current_generation(stats_cache):
    cache, _ = stats_cache
    empty = await cache.get(1)
    assert empty.payload is None
    assert empty.generation is not None
    await cache.put(1, empty.generation, b'{"total": 1}')
    assert (await cache.get(1)).payload == b'{"total": 1}'
    # Another user's entry is separate.
    assert (await cache.get(2)).payload is None


async def test_a_value_stored_under_an_old_generation_is_never_returned(stats_cache):
    cache, _ = stats_cache
    old = await cache.get(7)
    await cache.put(7, old.generation, b"old")
    assert (await cache.get(7)).payload == b"old"

    await cache.invalidate([7])
    current = await cache.get(7)
    assert current.payload is None
    assert current.generation != old.generation

    # A reader that read the generation before the write stores its (stale) result late.
    await cache.put(7, old.generation, b"computed before the write")
    assert (await cache.get(7)).payload is None

    await cache.put(7, current.generation, b"new")
    assert (await cache.get(7)).payload == b"new"
    await cache.invalidate([7])
    assert (await cache.get(7)).payload is None


async def test_invalidate_several_users_in_one_call(stats_cache):
    cache, _ = stats_cache
    for user_id in (11, 12, 13):
        entry = await cache.get(user_id)
        await cache.put(user_id, entry.generation, f"user {user_id}".encode())

    await cache.invalidate([11, 13, 11])

    assert (await cache.get(11)).payload is None
    assert (await cache.get(13)).payload is None
    assert (await cache.get(12)).payload == b"user 12"
    # Invalidating nobody changes nothing.
    await cache.invalidate([])
    assert (await cache.get(12)).payload == b"user 12"
