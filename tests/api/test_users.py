"""Users endpoints: /users/me (GET, PATCH, DELETE) and username-prefix search."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from taskapi.models import RefreshToken, Task, User
from tests.conftest import UserHandle

API = "/api/v1"
USERS_ME = f"{API}/users/me"
USERS = f"{API}/users"
AUTH_ME = f"{API}/auth/me"
LOGIN = f"{API}/auth/login"
REFRESH = f"{API}/auth/refresh"

USER_KEYS = {"id", "username", "email", "full_name", "created_at"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail", "code", "request_id"} <= body.keys()
    assert body["status"] == status
    assert body["code"] == code
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    return body


async def login(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await client.post(LOGIN, json={"username": username, "password": password})


async def new_login(client: httpx.AsyncClient, user: UserHandle) -> dict[str, Any]:
    response = await login(client, user.username, user.password)
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    return tokens


async def patch_me(client: httpx.AsyncClient, user: UserHandle, body: Any) -> httpx.Response:
    return await client.patch(USERS_ME, json=body, headers=user.headers)


async def get_me(client: httpx.AsyncClient, user: UserHandle) -> dict[str, Any]:
    response = await client.get(USERS_ME, headers=user.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# --- authentication is required ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "kwargs"),
    [
        ("GET", USERS_ME, {}),
        ("PATCH", USERS_ME, {"json": {"full_name": "x"}}),
        ("DELETE", USERS_ME, {}),
        ("GET", USERS, {"params": {"search": "a"}}),
    ],
)
@pytest.mark.parametrize("token", [None, "garbage"])
async def test_users_endpoints_require_auth(client, alice, method, url, kwargs, token):
    headers = bearer(token) if token else {}
    response = await client.request(method, url, headers=headers, **kwargs)
    assert_problem(response, 401, "invalid_token" if token else "not_authenticated")
    # Nothing happened to alice.
    me = await get_me(client, alice)
    assert me["full_name"] is None


async def test_users_endpoints_reject_refresh_token_as_bearer(client, alice):
    for method in ("GET", "DELETE"):
        response = await client.request(method, USERS_ME, headers=bearer(alice.refresh_token))
        assert_problem(response, 401, "invalid_token")
    assert (await client.get(USERS_ME, headers=alice.headers)).status_code == 200


# --- GET /users/me -----------------------------------------------------------------------------


async def test_get_me_matches_auth_me(client, make_user):
    user = await make_user("gina", full_name="Gina Linetti")
    users_me = await client.get(USERS_ME, headers=user.headers)
    auth_me = await client.get(AUTH_ME, headers=user.headers)
    assert users_me.status_code == 200
    assert users_me.json() == auth_me.json()
    body = users_me.json()
    assert set(body) == USER_KEYS
    assert body["id"] == user.id
    assert body["username"] == "gina"
    assert body["email"] == "gina@example.com"
    assert body["full_name"] == "Gina Linetti"
    assert "hash" not in users_me.text
    assert "argon2" not in users_me.text


# --- PATCH /users/me: profile ------------------------------------------------------------------


async def test_patch_full_name(client, alice):
    response = await patch_me(client, alice, {"full_name": "Alice Liddell"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == USER_KEYS
    assert body["full_name"] == "Alice Liddell"
    assert body["username"] == "alice"
    assert (await get_me(client, alice))["full_name"] == "Alice Liddell"


async def test_patch_full_name_is_trimmed_and_null_clears(client, alice):
    response = await patch_me(client, alice, {"full_name": "  Alice  "})
    assert response.json()["full_name"] == "Alice"
    cleared = await patch_me(client, alice, {"full_name": None})
    assert cleared.status_code == 200
    assert cleared.json()["full_name"] is None
    assert (await get_me(client, alice))["full_name"] is None


async def test_patch_full_name_length_limit(client, alice):
    assert (await patch_me(client, alice, {"full_name": "f" * 100})).status_code == 200
    problem = assert_problem(
        await patch_me(client, alice, {"full_name": "f" * 101}), 422, "validation_error"
    )
    assert any("full_name" in error["loc"] for error in problem["errors"])
    assert (await get_me(client, alice))["full_name"] == "f" * 100


async def test_patch_omitted_fields_unchanged(client, make_user):
    user = await make_user("harry", full_name="Harry P")
    before = await get_me(client, user)
    response = await patch_me(client, user, {})
    assert response.status_code == 200
    assert response.json() == before
    email_only = await patch_me(client, user, {"email": "harry.new@example.com"})
    assert email_only.json()["full_name"] == "Harry P"


async def test_patch_email(client, alice):
    response = await patch_me(client, alice, {"email": "alice.new@example.com"})
    assert response.status_code == 200, response.text
    assert response.json()["email"] == "alice.new@example.com"
    assert (await login(client, "alice.new@example.com", alice.password)).status_code == 200
    assert_problem(
        await login(client, "alice@example.com", alice.password), 401, "invalid_credentials"
    )


@pytest.mark.parametrize("taken", ["bob@example.com", "BOB@EXAMPLE.COM", "Bob@example.com"])
async def test_patch_email_taken_case_insensitive(client, alice, bob, taken):
    assert_problem(await patch_me(client, alice, {"email": taken}), 409, "email_taken")
    assert (await get_me(client, alice))["email"] == "alice@example.com"


async def test_patch_email_conflict_changes_nothing_else(client, alice, bob):
    response = await patch_me(client, alice, {"full_name": "New Name", "email": "bob@example.com"})
    assert_problem(response, 409, "email_taken")
    me = await get_me(client, alice)
    assert me["full_name"] is None
    assert me["email"] == "alice@example.com"


async def test_patch_email_own_address_in_other_case(client, alice):
    response = await patch_me(client, alice, {"email": "ALICE@example.com"})
    assert response.status_code == 200, response.text
    assert response.json()["email"] == "ALICE@example.com"
    assert (await login(client, "alice@example.com", alice.password)).status_code == 200


async def test_patch_email_freed_address_can_be_taken(client, alice, bob):
    assert (await patch_me(client, alice, {"email": "alice2@example.com"})).status_code == 200
    response = await patch_me(client, bob, {"email": "Alice@example.com"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("email", ["not-an-email", "a@", "@example.com", "", None, 42])
async def test_patch_email_invalid(client, alice, email):
    problem = assert_problem(
        await patch_me(client, alice, {"email": email}), 422, "validation_error"
    )
    assert problem["errors"]
    assert all(set(error) == {"loc", "msg", "type"} for error in problem["errors"])
    assert (await get_me(client, alice))["email"] == "alice@example.com"


@pytest.mark.parametrize("body", [[], "string", 7])
async def test_patch_non_object_body(client, alice, body):
    assert_problem(await patch_me(client, alice, body), 422, "validation_error")


async def test_patch_ignores_mass_assignment(client, alice, bob, db_session):
    before = await get_me(client, alice)
    response = await patch_me(
        client,
        alice,
        {
            "id": bob.id,
            "username": "mallory",
            "password_hash": "plaintext",
            "created_at": "2000-01-01T00:00:00Z",
            "full_name": "Still Alice",
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == alice.id
    assert body["username"] == "alice"
    assert body["created_at"] == before["created_at"]
    assert body["full_name"] == "Still Alice"
    stored = await db_session.scalar(select(User.password_hash).where(User.id == alice.id))
    assert stored != "plaintext"
    assert (await login(client, "alice", alice.password)).status_code == 200
    assert (await get_me(client, bob))["full_name"] is None


# --- PATCH /users/me: password -----------------------------------------------------------------


async def test_patch_password_requires_current_password(client, alice):
    for body in (
        {"password": "brand new password"},
        {"password": "brand new password", "current_password": ""},
        {"password": "brand new password", "current_password": None},
    ):
        problem = assert_problem(await patch_me(client, alice, body), 422, "validation_error")
        assert problem["errors"]
    assert (await login(client, "alice", alice.password)).status_code == 200
    assert (await login(client, "alice", "brand new password")).status_code == 401


async def test_patch_password_wrong_current_is_403(client, alice):
    other = await new_login(client, alice)
    response = await patch_me(
        client, alice, {"password": "brand new password", "current_password": "wrong one"}
    )
    assert_problem(response, 403, "invalid_current_password")
    assert "wrong one" not in response.text
    assert (await login(client, "alice", alice.password)).status_code == 200
    assert (await login(client, "alice", "brand new password")).status_code == 401
    # No login was ended by the failed attempt.
    assert (await client.get(AUTH_ME, headers=bearer(other["access_token"]))).status_code == 200


async def test_patch_password_wrong_current_changes_nothing_else(client, alice):
    response = await patch_me(
        client,
        alice,
        {"password": "brand new password", "current_password": "wrong one", "full_name": "X"},
    )
    assert response.status_code == 403
    assert (await get_me(client, alice))["full_name"] is None


@pytest.mark.parametrize("new_password", ["tiny7pw", "p" * 129])
async def test_patch_password_validation(client, alice, new_password):
    response = await patch_me(
        client, alice, {"password": new_password, "current_password": alice.password}
    )
    problem = assert_problem(response, 422, "validation_error")
    assert any("password" in error["loc"] for error in problem["errors"])
    assert new_password not in response.text
    assert (await login(client, "alice", alice.password)).status_code == 200


async def test_patch_password_success_ends_other_logins(client, alice, bob):
    other = await new_login(client, alice)
    third = await new_login(client, alice)

    response = await patch_me(
        client, alice, {"password": "brand new password", "current_password": alice.password}
    )
    assert response.status_code == 200, response.text
    assert "brand new password" not in response.text
    assert set(response.json()) == USER_KEYS

    # Every other login is over: access and refresh tokens.
    for session in (other, third):
        response = await client.get(AUTH_ME, headers=bearer(session["access_token"]))
        assert_problem(response, 401, "invalid_token")
        response = await client.post(REFRESH, json={"refresh_token": session["refresh_token"]})
        assert_problem(response, 401, "invalid_token")

    # The session that made the change keeps working, including its refresh token.
    assert (await client.get(AUTH_ME, headers=alice.headers)).status_code == 200
    rotated = await client.post(REFRESH, json={"refresh_token": alice.refresh_token})
    assert rotated.status_code == 200, rotated.text
    me = await client.get(AUTH_ME, headers=bearer(rotated.json()["access_token"]))
    assert me.status_code == 200

    # The new password logs in; the old one does not.
    assert (await login(client, "alice", "brand new password")).status_code == 200
    assert_problem(await login(client, "alice", alice.password), 401, "invalid_credentials")

    # Other users are unaffected.
    assert (await client.get(AUTH_ME, headers=bob.headers)).status_code == 200
    assert (
        await client.post(REFRESH, json={"refresh_token": bob.refresh_token})
    ).status_code == 200


async def test_patch_password_stores_new_argon2_hash(client, alice, db_session):
    before = await db_session.scalar(select(User.password_hash).where(User.id == alice.id))
    response = await patch_me(
        client, alice, {"password": "brand new password", "current_password": alice.password}
    )
    assert response.status_code == 200
    after = await db_session.scalar(select(User.password_hash).where(User.id == alice.id))
    assert after != before
    assert after is not None
    assert after.startswith("$argon2id$")
    assert "brand new password" not in after


async def test_patch_password_together_with_profile(client, alice):
    response = await patch_me(
        client,
        alice,
        {
            "password": "brand new password",
            "current_password": alice.password,
            "full_name": "Changed Too",
        },
    )
    assert response.status_code == 200
    assert response.json()["full_name"] == "Changed Too"
    assert (await login(client, "alice", "brand new password")).status_code == 200


async def test_current_password_alone_changes_nothing(client, alice):
    other = await new_login(client, alice)
    response = await patch_me(client, alice, {"current_password": "whatever it is"})
    assert response.status_code == 200
    assert (await login(client, "alice", alice.password)).status_code == 200
    assert (await client.get(AUTH_ME, headers=bearer(other["access_token"]))).status_code == 200


# --- DELETE /users/me --------------------------------------------------------------------------


async def test_delete_me(client, make_user, bob, make_task, db_session):
    victim = await make_user("victim")
    second_login = await new_login(client, victim)
    own_task = await make_task(victim, title="mine")
    own_shared = await make_task(victim, title="mine, for bob", assignee_id=bob.id)
    assigned_to_victim = await make_task(bob, title="for victim", assignee_id=victim.id)
    bob_task = await make_task(bob, title="bob's own")
    assert assigned_to_victim["assignee_id"] == victim.id

    response = await client.delete(USERS_ME, headers=victim.headers)
    assert response.status_code == 204, response.text
    assert response.content == b""

    # Can't log in; tokens of every login are dead.
    assert_problem(await login(client, "victim", victim.password), 401, "invalid_credentials")
    for access in (victim.access_token, second_login["access_token"]):
        assert_problem(await client.get(AUTH_ME, headers=bearer(access)), 401, "invalid_token")
    for refresh_token in (victim.refresh_token, second_login["refresh_token"]):
        response = await client.post(REFRESH, json={"refresh_token": refresh_token})
        assert_problem(response, 401, "invalid_token")

    # Their tasks are gone, including the one bob could see as assignee.
    remaining = await db_session.scalar(
        select(func.count()).select_from(Task).where(Task.owner_id == victim.id)
    )
    assert remaining == 0
    for task in (own_task, own_shared):
        assert (await db_session.get(Task, task["id"])) is None
    shared = await client.get(f"{API}/tasks/{own_shared['id']}", headers=bob.headers)
    assert shared.status_code == 404

    # A task bob assigned to them survives, unassigned.
    survivor = await client.get(f"{API}/tasks/{assigned_to_victim['id']}", headers=bob.headers)
    assert survivor.status_code == 200, survivor.text
    assert survivor.json()["assignee_id"] is None
    assert survivor.json()["title"] == "for victim"
    untouched = await client.get(f"{API}/tasks/{bob_task['id']}", headers=bob.headers)
    assert untouched.status_code == 200

    # No rows of the account remain.
    assert (await db_session.get(User, victim.id)) is None
    tokens = await db_session.scalar(
        select(func.count()).select_from(RefreshToken).where(RefreshToken.user_id == victim.id)
    )
    assert tokens == 0


async def test_delete_me_frees_username_and_email(client, make_user):
    victim = await make_user("reborn")
    assert (await client.delete(USERS_ME, headers=victim.headers)).status_code == 204
    response = await client.post(
        f"{API}/auth/register",
        json={"username": "Reborn", "email": "REBORN@example.com", "password": "second life"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["id"] != victim.id
    assert (await login(client, "reborn", "second life")).status_code == 200


async def test_delete_me_twice_is_401(client, make_user):
    victim = await make_user()
    assert (await client.delete(USERS_ME, headers=victim.headers)).status_code == 204
    assert_problem(await client.delete(USERS_ME, headers=victim.headers), 401, "invalid_token")


async def test_delete_me_leaves_other_users(client, alice, bob):
    assert (await client.delete(USERS_ME, headers=alice.headers)).status_code == 204
    assert (await get_me(client, bob))["username"] == "bob"
    assert (await login(client, "bob", bob.password)).status_code == 200


async def test_delete_me_with_logged_out_token_is_rejected(client, alice):
    response = await client.post(
        f"{API}/auth/logout", json={"refresh_token": alice.refresh_token}, headers=alice.headers
    )
    assert response.status_code == 204
    assert_problem(await client.delete(USERS_ME, headers=alice.headers), 401, "invalid_token")
    assert (await login(client, "alice", alice.password)).status_code == 200


# --- GET /users?search= ------------------------------------------------------------------------


async def search(client: httpx.AsyncClient, user: UserHandle, **params: Any) -> httpx.Response:
    return await client.get(USERS, params=params, headers=user.headers)


async def test_search_by_username_prefix(client, make_user, alice):
    prefix = "zeb"
    zebra = await make_user(f"{prefix}ra")
    zebu = await make_user(f"{prefix.upper()}U")
    await make_user("azeb")  # contains the prefix, but not at the start
    await make_user("zeal")

    response = await search(client, alice, search=prefix)
    assert response.status_code == 200, response.text
    page = response.json()
    assert set(page) == {"items", "total", "limit", "offset", "next_cursor"}
    assert page["total"] == 2
    results = page["items"]
    assert {r["username"] for r in results} == {zebra.username, zebu.username}
    assert {r["id"] for r in results} == {zebra.id, zebu.id}
    for result in results:
        assert set(result) == {"id", "username"}
    assert "@example.com" not in response.text


async def test_search_is_case_insensitive(client, make_user, alice):
    target = await make_user("Quentin")
    for term in ("qu", "QU", "Quen", "quentin"):
        results = (await search(client, alice, search=term)).json()["items"]
        assert [r["id"] for r in results] == [target.id], term


async def test_search_finds_yourself_and_orders_by_username(client, make_user):
    me = await make_user("kk_me")
    await make_user("KK_b")
    await make_user("kk_a")
    results = (await search(client, me, search="kk_")).json()["items"]
    assert [r["username"] for r in results] == ["kk_a", "KK_b", "kk_me"]


async def test_search_no_match(client, alice):
    response = await search(client, alice, search="nobody-has-this-prefix")
    assert response.status_code == 200
    assert response.json()["items"] == []
    assert response.json()["total"] == 0


async def test_search_wildcards_are_literal(client, make_user, alice):
    underscore = await make_user("w_x")
    await make_user("wax")
    results = (await search(client, alice, search="w_")).json()["items"]
    assert [r["id"] for r in results] == [underscore.id]
    assert (await search(client, alice, search="%")).json()["items"] == []
    assert (await search(client, alice, search="\\")).json()["items"] == []


async def test_search_does_not_match_email(client, make_user, alice):
    await make_user("plainname", email="xyzzy@example.com")
    assert (await search(client, alice, search="xyzzy")).json()["items"] == []


async def test_search_limit(client, make_user, alice):
    for n in range(3):
        await make_user(f"lim{n}")
    assert len((await search(client, alice, search="lim")).json()["items"]) == 3
    limited = (await search(client, alice, search="lim", limit=2)).json()
    assert [r["username"] for r in limited["items"]] == ["lim0", "lim1"]
    assert limited["total"] == 3
    second = (await search(client, alice, search="lim", limit=2, offset=2)).json()
    assert [r["username"] for r in second["items"]] == ["lim2"]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"search": ""},
        {"search": "x" * 51},
        {"search": "a", "limit": 0},
        {"search": "a", "limit": 101},
        {"search": "a", "limit": "many"},
    ],
)
async def test_search_validation(client, alice, params):
    problem = assert_problem(await search(client, alice, **params), 422, "validation_error")
    assert problem["errors"]
    assert all(set(error) == {"loc", "msg", "type"} for error in problem["errors"])


async def test_search_deleted_user_disappears(client, make_user, alice):
    gone = await make_user("vanish")
    found = (await search(client, alice, search="vanish")).json()["items"]
    assert [r["id"] for r in found] == [gone.id]
    assert (await client.delete(USERS_ME, headers=gone.headers)).status_code == 204
    assert (await search(client, alice, search="vanish")).json()["items"] == []
