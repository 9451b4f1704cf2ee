"""Refresh under concurrency (API.md part 2): a rotated refresh token presented again within
REFRESH_REUSE_GRACE_SECONDS is a client of the same login that lost a race, not a thief
(RFC 9700 section 4.14.2); it gets a working pair of that login. After the grace it is reuse, as
before. The grace never revives an ended login, nor an expired token.

The race runs on an app with real commits (busy_app: its own database and pool), many requests
at once; "after the grace" moves the recorded rotation times back (tests/refresh_helpers.py)
instead of waiting."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select, update

from taskapi.kit.security import fingerprint_token
from taskapi.kit.services import services_of
from taskapi.models import RefreshToken
from tests.conftest import register_and_login
from tests.refresh_helpers import past_the_grace
from tests.task_helpers import assert_problem

REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
ME = "/api/v1/auth/me"
CLIENTS = 10
ROUNDS = 50


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(REFRESH, json={"refresh_token": token})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def refresh_all(client: httpx.AsyncClient, tokens: list[str]) -> list[dict[str, Any]]:
    """Refresh every token at once; each answer must be a pair."""
    responses = await asyncio.gather(*(refresh(client, token) for token in tokens))
    for response in responses:
        assert response.status_code == 200, response.text
    return [response.json() for response in responses]


async def family_rows(app: Any, user_id: int) -> list[RefreshToken]:
    async with services_of(app).sessionmaker() as session:
        query = select(RefreshToken).where(RefreshToken.user_id == user_id)
        return list((await session.scalars(query)).all())


async def test_ten_clients_of_one_login_refresh_at_once_50_rounds(busy_app, busy_client):
    user = await register_and_login(busy_client, "tabs")
    first_token = token = user.refresh_token
    for _round in range(ROUNDS):
        # Ten clients holding the same token refresh at once: every one gets a pair.
        pairs = await refresh_all(busy_client, [token] * CLIENTS)
        assert len({pair["refresh_token"] for pair in pairs}) == CLIENTS
        # Every refresh token returned works (once, as any other), at once too.
        successors = await refresh_all(busy_client, [pair["refresh_token"] for pair in pairs])
        token = successors[_round % CLIENTS]["refresh_token"]
        # The login survives: its newest access token works.
        me = await busy_client.get(ME, headers=bearer(successors[0]["access_token"]))
        assert me.status_code == 200, me.text
    # Every access token of the last round works; nothing of the login was revoked.
    for pair in [*pairs, *successors]:
        me = await busy_client.get(ME, headers=bearer(pair["access_token"]))
        assert me.status_code == 200, me.text
    rows = await family_rows(busy_app, user.id)
    assert len(rows) == 1 + ROUNDS * 2 * CLIENTS
    assert all(row.revoked_at is None for row in rows)

    # After the grace, presenting a rotated token is reuse again: the whole login ends.
    await past_the_grace(busy_app, user.id, first_token)
    reused = assert_problem(await refresh(busy_client, first_token), 401, "invalid_token")
    assert "revoked" in reused["detail"]
    assert_problem(await refresh(busy_client, token), 401, "invalid_token")
    for pair in successors:
        me = await busy_client.get(ME, headers=bearer(pair["access_token"]))
        assert_problem(me, 401, "invalid_token")
    assert all(row.revoked_at is not None for row in await family_rows(busy_app, user.id))


async def test_within_the_grace_a_second_presentation_gets_a_pair_of_the_same_login(
    app, client, alice
):
    first = await refresh(client, alice.refresh_token)
    again = await refresh(client, alice.refresh_token)
    assert first.status_code == again.status_code == 200, again.text
    pairs = [first.json(), again.json()]
    assert pairs[0]["refresh_token"] != pairs[1]["refresh_token"]
    for pair in pairs:
        me = await client.get(ME, headers=bearer(pair["access_token"]))
        assert me.json()["id"] == alice.id
    # Both refresh tokens belong to the login and work.
    sid = {row.family_id for row in await family_rows(app, alice.id)}
    assert len(sid) == 1
    for pair in pairs:
        assert (await refresh(client, pair["refresh_token"])).status_code == 200


async def test_a_login_ended_by_logout_is_not_revived(app, client, alice):
    rotated = (await refresh(client, alice.refresh_token)).json()
    ended = await client.post(
        LOGOUT, json={"refresh_token": rotated["refresh_token"]}, headers=alice.headers
    )
    assert ended.status_code == 204
    # Well within the grace of its rotation, yet the login has ended.
    assert_problem(await refresh(client, alice.refresh_token), 401, "invalid_token")
    assert_problem(await refresh(client, rotated["refresh_token"]), 401, "invalid_token")
    assert_problem(await client.get(ME, headers=alice.headers), 401, "invalid_token")
    assert all(row.revoked_at is not None for row in await family_rows(app, alice.id))


async def test_a_login_ended_by_reuse_is_not_revived(app, client, alice):
    first = (await refresh(client, alice.refresh_token)).json()
    second = (await refresh(client, first["refresh_token"])).json()  # `first` rotated just now
    await past_the_grace(app, alice.id, alice.refresh_token)
    assert_problem(await refresh(client, alice.refresh_token), 401, "invalid_token")  # reuse
    # `first` was rotated within the grace, but its login has ended.
    assert_problem(await refresh(client, first["refresh_token"]), 401, "invalid_token")
    assert_problem(await refresh(client, second["refresh_token"]), 401, "invalid_token")
    assert_problem(await client.get(ME, headers=bearer(second["access_token"])), 401)


async def test_a_login_ended_by_a_password_change_is_not_revived(client, alice):
    other = await register_and_login(client, email="second@example.com")
    login = (
        await client.post(
            "/api/v1/auth/login", json={"username": alice.username, "password": alice.password}
        )
    ).json()
    assert (await refresh(client, login["refresh_token"])).status_code == 200
    changed = await client.patch(
        "/api/v1/users/me",
        json={"password": "a brand new password", "current_password": alice.password},
        headers=alice.headers,
    )
    assert changed.status_code == 200, changed.text
    assert_problem(await refresh(client, login["refresh_token"]), 401, "invalid_token")
    # Nobody else's login was touched.
    assert (await refresh(client, other.refresh_token)).status_code == 200


async def test_an_expired_token_gets_no_grace(app, client, alice):
    rotated = (await refresh(client, alice.refresh_token)).json()
    async with services_of(app).sessionmaker() as session:
        await session.execute(
            update(RefreshToken)
            .where(RefreshToken.token_hash == fingerprint_token(alice.refresh_token))
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await session.commit()
    assert_problem(await refresh(client, alice.refresh_token), 401, "token_expired")
    # Not taken for reuse: the login goes on.
    assert (await refresh(client, rotated["refresh_token"])).status_code == 200


async def test_a_logout_racing_grace_refreshes_leaves_nothing_alive(live_app, live_client):
    """Whatever the order, once the logout has answered, no token of that login works: a grace
    answer committed before it is revoked with the rest, one after it is refused."""
    for _round in range(10):
        user = await register_and_login(live_client, f"race_{uuid.uuid4().hex[:8]}")
        rotated = (await refresh(live_client, user.refresh_token)).json()
        logout = live_client.post(
            LOGOUT, json={"refresh_token": rotated["refresh_token"]}, headers=user.headers
        )
        results = await asyncio.gather(
            *(refresh(live_client, user.refresh_token) for _ in range(5)), logout
        )
        assert results[-1].status_code == 204
        for response in results[:-1]:
            assert response.status_code in (200, 401), response.text
        pairs = [response.json() for response in results[:-1] if response.status_code == 200]
        for pair in pairs:
            assert_problem(await refresh(live_client, pair["refresh_token"]), 401)
            assert_problem(await live_client.get(ME, headers=bearer(pair["access_token"])), 401)
        assert all(row.revoked_at is not None for row in await family_rows(live_app, user.id))
