"""Auth endpoints: register, login, token (OAuth2 form), refresh rotation, logout, me."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from argon2 import PasswordHasher
from sqlalchemy import select, update

from taskapi.models import RefreshToken, User
from tests.conftest import TEST_SECRET, UserHandle, cloned_app, register_and_login
from tests.refresh_helpers import past_the_grace

API = "/api/v1"
ME = f"{API}/auth/me"
REGISTER = f"{API}/auth/register"
LOGIN = f"{API}/auth/login"
TOKEN = f"{API}/auth/token"
REFRESH = f"{API}/auth/refresh"
LOGOUT = f"{API}/auth/logout"

USER_KEYS = {"id", "username", "email", "full_name", "created_at"}
PROBLEM_KEYS = {"type", "title", "status", "detail", "code", "request_id"}


# --- helpers -----------------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def claims_of(token: str) -> dict[str, Any]:
    """The payload of one of our tokens, checked with the test secret."""
    payload: dict[str, Any] = jwt.decode(
        token, TEST_SECRET, algorithms=["HS256"], audience="taskapi", issuer="taskapi"
    )
    return payload


def forge(
    user_id: int | str,
    session_id: str,
    /,
    *,
    key: str = TEST_SECRET,
    algorithm: str = "HS256",
    drop: tuple[str, ...] = (),
    **overrides: Any,
) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {
        "sub": str(user_id),
        "sid": session_id,
        "jti": uuid.uuid4().hex,
        "type": "access",
        "iat": now,
        "exp": now + 600,
        "iss": "taskapi",
        "aud": "taskapi",
    }
    payload.update(overrides)
    for claim in drop:
        payload.pop(claim)
    return jwt.encode(payload, key, algorithm=algorithm)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body.keys() >= PROBLEM_KEYS
    assert body["status"] == status
    assert body["code"] == code
    assert body["request_id"] == response.headers["x-request-id"]
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


async def refresh(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.post(REFRESH, json={"refresh_token": token})


async def assert_access_works(client: httpx.AsyncClient, token: str, user: UserHandle) -> None:
    response = await client.get(ME, headers=bearer(token))
    assert response.status_code == 200, response.text
    assert response.json()["id"] == user.id


async def assert_access_rejected(client: httpx.AsyncClient, token: str) -> None:
    assert_problem(await client.get(ME, headers=bearer(token)), 401, "invalid_token")


# --- register ----------------------------------------------------------------------------------


async def test_register_returns_user_without_secrets(client):
    response = await client.post(
        REGISTER,
        json={
            "username": "dana",
            "email": "Dana@Example.com",
            "password": "s3cret-passw0rd",
            "full_name": "Dana Scully",
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == USER_KEYS
    assert body["username"] == "dana"
    assert body["email"] == "Dana@example.com"  # domain normalised, local part kept
    assert body["full_name"] == "Dana Scully"
    assert isinstance(body["id"], int)
    created = datetime.fromisoformat(body["created_at"].replace("Z", "+00:00"))
    assert created.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=5)
    assert "s3cret-passw0rd" not in response.text
    assert "argon2" not in response.text


async def test_register_full_name_is_optional(client):
    response = await client.post(
        REGISTER, json={"username": "nofull", "email": "nofull@example.com", "password": "x" * 8}
    )
    assert response.status_code == 201, response.text
    assert response.json()["full_name"] is None


async def test_register_stores_an_argon2_hash_not_the_password(client, db_session):
    response = await client.post(
        REGISTER, json={"username": "hashme", "email": "h@example.com", "password": "plain-text-pw"}
    )
    assert response.status_code == 201
    user = await db_session.get(User, response.json()["id"])
    assert user is not None
    assert user.password_hash.startswith("$argon2id$")
    assert "plain-text-pw" not in user.password_hash
    assert PasswordHasher().verify(user.password_hash, "plain-text-pw")


@pytest.mark.parametrize("taken", ["alice", "ALICE", "Alice"])
async def test_register_duplicate_username_case_insensitive(client, alice, taken):
    response = await client.post(
        REGISTER, json={"username": taken, "email": "other@example.com", "password": "x" * 10}
    )
    body = assert_problem(response, 409, "username_taken")
    assert body["type"].endswith("username_taken")


@pytest.mark.parametrize("taken", ["alice@example.com", "ALICE@EXAMPLE.COM", "Alice@Example.Com"])
async def test_register_duplicate_email_case_insensitive(client, alice, taken):
    response = await client.post(
        REGISTER, json={"username": "alice2", "email": taken, "password": "x" * 10}
    )
    assert_problem(response, 409, "email_taken")


async def test_register_conflict_leaves_no_second_account(client, alice, db_session):
    await client.post(
        REGISTER, json={"username": "ALICE", "email": "new@example.com", "password": "x" * 10}
    )
    count = (await db_session.scalars(select(User).where(User.email == "new@example.com"))).all()
    assert count == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("username", "ab"),
        ("username", "a" * 51),
        ("username", "has space"),
        ("username", "slash/name"),
        ("username", "émile"),
        ("username", "semi;colon"),
        ("username", ""),
        ("email", "not-an-email"),
        ("email", "a@"),
        ("email", ""),
        ("password", "short7!"),
        ("password", "p" * 129),
        ("full_name", "f" * 101),
        ("username", 12345),
    ],
)
async def test_register_validation_errors(client, field, value):
    body = {"username": "valid_user", "email": "valid@example.com", "password": "long enough"}
    body[field] = value
    response = await client.post(REGISTER, json=body)
    problem = assert_problem(response, 422, "validation_error")
    assert problem["errors"], problem
    for error in problem["errors"]:
        assert set(error) == {"loc", "msg", "type"}
    assert any(field in error["loc"] for error in problem["errors"])
    assert "long enough" not in response.text
    # Nothing was created: the valid body still registers.
    valid = {"username": "valid_user", "email": "valid@example.com", "password": "long enough"}
    assert (await client.post(REGISTER, json=valid)).status_code == 201


@pytest.mark.parametrize("missing", ["username", "email", "password"])
async def test_register_missing_field(client, missing):
    body = {"username": "valid_user", "email": "valid@example.com", "password": "long enough"}
    del body[missing]
    problem = assert_problem(await client.post(REGISTER, json=body), 422, "validation_error")
    assert any(missing in error["loc"] for error in problem["errors"])


async def test_register_validation_error_does_not_echo_password(client):
    secret = "tiny-pw"
    response = await client.post(
        REGISTER, json={"username": "echo_user", "email": "e@example.com", "password": secret}
    )
    assert_problem(response, 422, "validation_error")
    assert secret not in response.text


@pytest.mark.parametrize(
    ("username", "password", "full_name"),
    [
        ("abc", "p" * 8, None),
        ("a" * 50, "p" * 128, "f" * 100),
        ("A.b-c_9", "pässwörd", "Zoë"),
    ],
)
async def test_register_boundaries_accepted(client, username, password, full_name):
    body = {"username": username, "email": f"{username}@example.com", "password": password}
    if full_name is not None:
        body["full_name"] = full_name
    response = await client.post(REGISTER, json=body)
    assert response.status_code == 201, response.text
    assert response.json()["username"] == username
    assert response.json()["full_name"] == full_name
    assert (await login(client, username, password)).status_code == 200


async def test_register_ignores_mass_assignment(client, db_session):
    response = await client.post(
        REGISTER,
        json={
            "username": "sneaky",
            "email": "sneaky@example.com",
            "password": "honest password",
            "id": 987654321,
            "password_hash": "plaintext-not-a-hash",
            "created_at": "2000-01-01T00:00:00Z",
            "is_admin": True,
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"] != 987654321
    assert not body["created_at"].startswith("2000")
    assert set(body) == USER_KEYS
    user = await db_session.get(User, body["id"])
    assert user is not None
    assert user.password_hash != "plaintext-not-a-hash"
    assert (await login(client, "sneaky", "honest password")).status_code == 200
    assert (await db_session.get(User, 987654321)) is None


async def test_register_malformed_json_is_400(client):
    response = await client.post(
        REGISTER, content=b'{"username": "x",', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")


# --- login -------------------------------------------------------------------------------------


async def test_login_returns_token_pair_with_expected_claims(client, alice, settings):
    response = await login(client, "alice", alice.password)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == settings.access_token_ttl_seconds

    access = claims_of(body["access_token"])
    refresh_claims = claims_of(body["refresh_token"])
    for claims in (access, refresh_claims):
        assert {"sub", "sid", "jti", "type", "iat", "exp", "iss", "aud"} <= claims.keys()
        assert claims["sub"] == str(alice.id)
        assert claims["iss"] == "taskapi"
        assert claims["aud"] == "taskapi"
    assert access["type"] == "access"
    assert refresh_claims["type"] == "refresh"
    assert access["sid"] == refresh_claims["sid"]
    assert access["jti"] != refresh_claims["jti"]
    assert access["exp"] - access["iat"] == settings.access_token_ttl_seconds
    assert refresh_claims["exp"] - refresh_claims["iat"] == settings.refresh_token_ttl_seconds
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "HS256"
    await assert_access_works(client, body["access_token"], alice)


async def test_each_login_is_a_separate_session(client, alice):
    first = await new_login(client, alice)
    second = await new_login(client, alice)
    assert claims_of(first["access_token"])["sid"] != claims_of(second["access_token"])["sid"]
    assert first["refresh_token"] != second["refresh_token"]


async def test_login_stores_only_a_fingerprint_of_the_refresh_token(client, alice, db_session):
    tokens = await new_login(client, alice)
    rows = (
        await db_session.scalars(select(RefreshToken).where(RefreshToken.user_id == alice.id))
    ).all()
    assert len(rows) == 2  # the fixture's login and this one
    assert all(tokens["refresh_token"] != row.token_hash for row in rows)
    assert all(len(row.token_hash) == 64 for row in rows)


@pytest.mark.parametrize("identifier", ["alice", "ALICE", "aLiCe", "  alice  "])
async def test_login_username_any_case(client, alice, identifier):
    response = await login(client, identifier, alice.password)
    assert response.status_code == 200, response.text
    await assert_access_works(client, response.json()["access_token"], alice)


@pytest.mark.parametrize("identifier", ["alice@example.com", "ALICE@Example.COM"])
async def test_login_with_email_any_case(client, alice, identifier):
    response = await login(client, identifier, alice.password)
    assert response.status_code == 200, response.text
    await assert_access_works(client, response.json()["access_token"], alice)


async def test_login_wrong_password_and_unknown_user_look_the_same(client, alice):
    wrong_password = await login(client, "alice", "not the password")
    unknown_user = await login(client, "nobody_here", "not the password")
    unknown_email = await login(client, "nobody@example.com", "not the password")
    bodies = [
        assert_problem(r, 401, "invalid_credentials")
        for r in (wrong_password, unknown_user, unknown_email)
    ]
    assert len({(b["title"], b["detail"], b["type"]) for b in bodies}) == 1
    headers = {r.headers["www-authenticate"] for r in (wrong_password, unknown_user, unknown_email)}
    assert len(headers) == 1


async def test_login_password_is_case_sensitive(client, alice):
    assert_problem(await login(client, "alice", alice.password.upper()), 401, "invalid_credentials")


async def test_login_overlong_password_is_401_not_422(client, alice):
    assert_problem(await login(client, "alice", "x" * 500), 401, "invalid_credentials")


@pytest.mark.parametrize(
    "body",
    [
        {"username": "alice"},
        {"password": "whatever1"},
        {"username": "", "password": "whatever1"},
        {"username": "alice", "password": ""},
        {},
    ],
)
async def test_login_validation(client, alice, body):
    assert_problem(await client.post(LOGIN, json=body), 422, "validation_error")


@pytest.mark.parametrize("email", ["alice@example.com", "ALICE@Example.COM", " alice@example.com "])
async def test_login_with_an_email_field(client, alice, email):
    response = await client.post(LOGIN, json={"email": email, "password": alice.password})
    assert response.status_code == 200, response.text
    await assert_access_works(client, response.json()["access_token"], alice)


async def test_login_with_an_email_field_checks_the_password(client, alice):
    for body in (
        {"email": "alice@example.com", "password": "not the password"},
        {"email": "nobody@example.com", "password": alice.password},
    ):
        assert_problem(await client.post(LOGIN, json=body), 401, "invalid_credentials")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"username": "alice", "email": "alice@example.com", "password": "x" * 9}, "exactly one"),
        ({"password": "whatever1"}, "exactly one"),
        ({"email": None, "password": "whatever1"}, "cannot be null"),
        ({"username": None, "password": "whatever1"}, "cannot be null"),
        ({"username": "alice", "password": "whatever1", "remember": True}, "Extra inputs"),
        ({"username": None, "email": "alice@example.com", "password": "whatever1"}, "exactly one"),
        ({"email": "", "password": "whatever1"}, "at least 3"),
        ({"email": "alice", "password": "whatever1"}, "pattern"),
        ({"email": "alice@example.com"}, "Field required"),
    ],
)
async def test_login_takes_exactly_one_of_username_and_email(client, alice, body, message):
    problem = assert_problem(await client.post(LOGIN, json=body), 422, "validation_error")
    assert any(message in error["msg"] for error in problem["errors"]), problem["errors"]
    assert alice.password not in json.dumps(problem)


async def test_login_documents_both_shapes(client):
    document = (await client.get("/openapi.json")).json()
    body = document["paths"][LOGIN]["post"]["requestBody"]["content"]["application/json"]
    schema = document["components"]["schemas"][body["schema"]["$ref"].rsplit("/", 1)[-1]]
    assert set(schema["properties"]) == {"username", "email", "password"}
    assert schema["required"] == ["password"]
    # Exactly one of the two names: two properties at least, nothing else, never both.
    assert schema["minProperties"] == 2
    assert schema["additionalProperties"] is False
    assert schema["not"]["required"] == ["username", "email"]
    examples = [set(example["value"]) for example in body["examples"].values()]
    assert examples == [{"username", "password"}, {"email", "password"}]


async def test_login_rehashes_outdated_argon2_hash(client, alice, db_session):
    old_hasher = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    old_hash = old_hasher.hash(alice.password)
    await db_session.execute(update(User).where(User.id == alice.id).values(password_hash=old_hash))
    await db_session.commit()

    response = await login(client, "alice", alice.password)
    assert response.status_code == 200, response.text

    stored = await db_session.scalar(
        select(User.password_hash)
        .where(User.id == alice.id)
        .execution_options(populate_existing=True)
    )
    assert stored is not None
    assert stored != old_hash
    assert "m=8192,t=1" not in stored
    current = PasswordHasher()
    assert current.verify(stored, alice.password)
    # And the rewritten hash keeps working for the next login.
    assert (await login(client, "alice", alice.password)).status_code == 200


async def test_login_keeps_current_hash_unchanged(client, alice, db_session):
    before = await db_session.scalar(select(User.password_hash).where(User.id == alice.id))
    assert (await login(client, "alice", alice.password)).status_code == 200
    after = await db_session.scalar(select(User.password_hash).where(User.id == alice.id))
    assert before == after


async def test_failed_login_does_not_rehash(client, alice, db_session):
    old_hash = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(alice.password)
    await db_session.execute(update(User).where(User.id == alice.id).values(password_hash=old_hash))
    await db_session.commit()
    assert_problem(await login(client, "alice", "wrong password"), 401, "invalid_credentials")
    stored = await db_session.scalar(select(User.password_hash).where(User.id == alice.id))
    assert stored == old_hash


# --- token (OAuth2 form) -----------------------------------------------------------------------


async def test_token_form_flow(client, alice):
    response = await client.post(TOKEN, data={"username": "alice", "password": alice.password})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer"
    await assert_access_works(client, body["access_token"], alice)
    assert claims_of(body["refresh_token"])["type"] == "refresh"


async def test_token_form_accepts_email(client, alice):
    response = await client.post(
        TOKEN, data={"username": "ALICE@example.com", "password": alice.password}
    )
    assert response.status_code == 200, response.text
    await assert_access_works(client, response.json()["access_token"], alice)


async def test_token_form_wrong_password(client, alice):
    response = await client.post(TOKEN, data={"username": "alice", "password": "nope nope"})
    assert_problem(response, 401, "invalid_credentials")


async def test_token_form_unknown_user(client):
    response = await client.post(TOKEN, data={"username": "ghost", "password": "nope nope"})
    assert_problem(response, 401, "invalid_credentials")


async def test_token_form_missing_fields(client):
    assert_problem(await client.post(TOKEN, data={"username": "alice"}), 422, "validation_error")


async def test_token_rejects_json_body(client, alice):
    response = await client.post(TOKEN, json={"username": "alice", "password": alice.password})
    assert_problem(response, 422, "validation_error")


# --- me + forged tokens ------------------------------------------------------------------------


async def test_me_returns_current_user(client, alice, bob):
    response = await client.get(ME, headers=alice.headers)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == USER_KEYS
    assert body["id"] == alice.id
    assert body["username"] == "alice"
    assert body["email"] == "alice@example.com"
    other = await client.get(ME, headers=bob.headers)
    assert other.json()["id"] == bob.id


async def test_me_without_token(client):
    body = assert_problem(await client.get(ME), 401, "not_authenticated")
    assert "Bearer" in body["detail"]


async def test_me_with_non_bearer_scheme(client, alice):
    basic = base64.b64encode(f"alice:{alice.password}".encode()).decode()
    response = await client.get(ME, headers={"Authorization": f"Basic {basic}"})
    assert_problem(response, 401, "not_authenticated")


async def test_me_with_empty_bearer(client):
    assert_problem(
        await client.get(ME, headers={"Authorization": "Bearer "}), 401, "not_authenticated"
    )


async def test_forged_token_with_correct_claims_is_accepted(client, alice):
    """Control for the forgery tests below: the helper makes tokens the API accepts."""
    sid = claims_of(alice.access_token)["sid"]
    await assert_access_works(client, forge(alice.id, sid), alice)


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "not.a.jwt",
        "a.b.c.d",
        "eyJhbGciOiJIUzI1NiJ9.e30.",
        "Bearer",
    ],
)
async def test_me_garbage_token(client, token):
    assert_problem(await client.get(ME, headers=bearer(token)), 401, "invalid_token")


async def test_me_tampered_payload(client, alice, bob):
    header, payload, signature = alice.access_token.split(".")
    claims = json.loads(b64url_decode(payload))
    claims["sub"] = str(bob.id)
    tampered = ".".join([header, b64url(json.dumps(claims).encode()), signature])
    await assert_access_rejected(client, tampered)


async def test_me_tampered_signature(client, alice):
    header, payload, signature = alice.access_token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    await assert_access_rejected(client, ".".join([header, payload, flipped]))


async def test_me_alg_none(client, alice):
    claims = claims_of(alice.access_token)
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    await assert_access_rejected(client, f"{header}.{payload}.")
    # Keeping the original signature does not help either.
    signature = alice.access_token.split(".")[2]
    await assert_access_rejected(client, f"{header}.{payload}.{signature}")


async def test_me_wrong_key(client, alice):
    sid = claims_of(alice.access_token)["sid"]
    await assert_access_rejected(
        client, forge(alice.id, sid, key="another-secret-key-that-is-long-enough-xyz")
    )


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
async def test_me_other_hmac_algorithm_with_right_key(client, alice):
    sid = claims_of(alice.access_token)["sid"]
    await assert_access_rejected(client, forge(alice.id, sid, algorithm="HS512"))


async def test_me_expired_token(client, alice):
    sid = claims_of(alice.access_token)["sid"]
    past = int(time.time()) - 3600
    token = forge(alice.id, sid, iat=past - 900, exp=past)
    body = assert_problem(await client.get(ME, headers=bearer(token)), 401, "token_expired")
    assert body["code"] != "invalid_token"


async def test_me_expired_token_with_wrong_key_is_invalid_not_expired(client, alice):
    sid = claims_of(alice.access_token)["sid"]
    past = int(time.time()) - 3600
    token = forge(alice.id, sid, key="wrong-key-wrong-key-wrong-key-wrong", iat=past - 9, exp=past)
    await assert_access_rejected(client, token)


async def test_me_refresh_token_as_access(client, alice):
    body = assert_problem(
        await client.get(ME, headers=bearer(alice.refresh_token)), 401, "invalid_token"
    )
    assert "access" in body["detail"]


@pytest.mark.parametrize("claim", ["type", "sid", "sub", "exp", "jti", "iat", "iss", "aud"])
async def test_me_missing_claim(client, alice, claim):
    sid = claims_of(alice.access_token)["sid"]
    await assert_access_rejected(client, forge(alice.id, sid, drop=(claim,)))


@pytest.mark.parametrize(
    "overrides",
    [
        {"aud": "someone-else"},
        {"iss": "evil-issuer"},
        {"type": "refresh"},
        {"type": "id"},
        {"sub": "not-a-number"},
        {"sid": "not-a-uuid"},
    ],
)
async def test_me_wrong_claim_values(client, alice, overrides):
    sid = claims_of(alice.access_token)["sid"]
    await assert_access_rejected(client, forge(alice.id, sid, **overrides))


async def test_me_unknown_session_id(client, alice):
    """A correctly signed token whose login never existed is not accepted."""
    await assert_access_rejected(client, forge(alice.id, str(uuid.uuid4())))


async def test_me_session_of_another_user(client, alice, bob):
    """Alice's login id does not authenticate Bob."""
    alice_sid = claims_of(alice.access_token)["sid"]
    await assert_access_rejected(client, forge(bob.id, alice_sid))


async def test_me_token_for_nonexistent_user(client):
    await assert_access_rejected(client, forge(999_999_999, str(uuid.uuid4())))


async def test_me_token_for_deleted_user(client, make_user):
    victim = await make_user()
    sid = claims_of(victim.access_token)["sid"]
    assert (await client.delete(f"{API}/users/me", headers=victim.headers)).status_code == 204
    await assert_access_rejected(client, victim.access_token)
    await assert_access_rejected(client, forge(victim.id, sid))
    assert_problem(await refresh(client, victim.refresh_token), 401, "invalid_token")


# --- refresh -----------------------------------------------------------------------------------


async def test_refresh_rotates_tokens(client, alice, settings):
    response = await refresh(client, alice.refresh_token)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == settings.access_token_ttl_seconds
    assert body["refresh_token"] != alice.refresh_token
    assert body["access_token"] != alice.access_token
    old_sid = claims_of(alice.refresh_token)["sid"]
    assert claims_of(body["access_token"])["sid"] == old_sid
    assert claims_of(body["refresh_token"])["sid"] == old_sid
    await assert_access_works(client, body["access_token"], alice)
    # The login is still alive, so the earlier access token keeps working until it expires.
    await assert_access_works(client, alice.access_token, alice)
    # The new refresh token can be rotated again.
    again = await refresh(client, body["refresh_token"])
    assert again.status_code == 200, again.text


async def test_refresh_old_token_stops_working_after_the_grace(app, client, alice):
    assert (await refresh(client, alice.refresh_token)).status_code == 200
    await past_the_grace(app, alice.id)
    assert_problem(await refresh(client, alice.refresh_token), 401, "invalid_token")


async def test_refresh_reuse_revokes_the_whole_login(app, client, alice):
    first = (await refresh(client, alice.refresh_token)).json()
    second = (await refresh(client, first["refresh_token"])).json()
    other_login = await new_login(client, alice)
    await past_the_grace(app, alice.id)

    # Replay the rotated original: the whole login is ended.
    body = assert_problem(await refresh(client, alice.refresh_token), 401, "invalid_token")
    assert "revoked" in body["detail"]

    assert_problem(await refresh(client, second["refresh_token"]), 401, "invalid_token")
    for token in (alice.access_token, first["access_token"], second["access_token"]):
        await assert_access_rejected(client, token)

    # Another login of the same user is untouched.
    await assert_access_works(client, other_login["access_token"], alice)
    assert (await refresh(client, other_login["refresh_token"])).status_code == 200


async def test_refresh_reuse_revocation_is_durable(app, client, alice, db_session):
    """The 401 on reuse must not roll back the revocation it caused."""
    first = (await refresh(client, alice.refresh_token)).json()
    await past_the_grace(app, alice.id)
    assert (await refresh(client, alice.refresh_token)).status_code == 401
    sid = uuid.UUID(claims_of(alice.refresh_token)["sid"])
    rows = (
        await db_session.scalars(
            select(RefreshToken)
            .where(RefreshToken.family_id == sid)
            .execution_options(populate_existing=True)
        )
    ).all()
    assert len(rows) == 2
    assert all(row.revoked_at is not None for row in rows)
    assert_problem(await refresh(client, first["refresh_token"]), 401, "invalid_token")


async def test_refresh_reuse_does_not_touch_other_users(app, client, alice, bob):
    assert (await refresh(client, alice.refresh_token)).status_code == 200
    await past_the_grace(app, alice.id)
    assert (await refresh(client, alice.refresh_token)).status_code == 401
    await assert_access_works(client, bob.access_token, bob)
    assert (await refresh(client, bob.refresh_token)).status_code == 200


async def test_refresh_with_access_token_is_rejected(client, alice):
    body = assert_problem(await refresh(client, alice.access_token), 401, "invalid_token")
    assert "refresh" in body["detail"]
    # Nothing was revoked by the attempt.
    assert (await refresh(client, alice.refresh_token)).status_code == 200


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "x" * 4096])
async def test_refresh_garbage(client, token):
    assert_problem(await refresh(client, token), 401, "invalid_token")


async def test_refresh_forged_but_unknown_token(client, alice):
    sid = claims_of(alice.refresh_token)["sid"]
    forged = forge(alice.id, sid, type="refresh")
    assert_problem(await refresh(client, forged), 401, "invalid_token")
    # A guess at a token is not "reuse": the real login keeps working.
    assert (await refresh(client, alice.refresh_token)).status_code == 200


async def test_refresh_wrong_key(client, alice):
    sid = claims_of(alice.refresh_token)["sid"]
    forged = forge(alice.id, sid, type="refresh", key="not-the-key-not-the-key-not-the-key")
    assert_problem(await refresh(client, forged), 401, "invalid_token")


async def test_refresh_expired(client, alice):
    sid = claims_of(alice.refresh_token)["sid"]
    past = int(time.time()) - 60
    forged = forge(alice.id, sid, type="refresh", iat=past - 100, exp=past)
    assert_problem(await refresh(client, forged), 401, "token_expired")


async def test_refresh_expired_in_database(client, alice, db_session):
    """The stored expiry is enforced too, not only the JWT's."""
    await db_session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == alice.id)
        .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
    )
    await db_session.commit()
    assert_problem(await refresh(client, alice.refresh_token), 401, "invalid_token")


@pytest.mark.parametrize("body", [{}, {"refresh_token": ""}, {"refresh_token": None}])
async def test_refresh_validation(client, body):
    assert_problem(await client.post(REFRESH, json=body), 422, "validation_error")


async def test_refresh_needs_no_bearer(client, alice):
    response = await client.post(
        REFRESH,
        json={"refresh_token": alice.refresh_token},
        headers={"Authorization": "Bearer garbage"},
    )
    assert response.status_code == 200, response.text


async def test_without_a_grace_concurrent_refresh_has_exactly_one_winner(migrated_databases):
    """REFRESH_REUSE_GRACE_SECONDS=0: every replay is reuse, even a racing client's."""
    async with cloned_app(refresh_reuse_grace_seconds=0) as application:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as live:
            user = await register_and_login(live, "racer")
            responses = await asyncio.gather(
                refresh(live, user.refresh_token), refresh(live, user.refresh_token)
            )
            statuses = sorted(r.status_code for r in responses)
            assert statuses == [200, 401], [r.text for r in responses]
            loser = next(r for r in responses if r.status_code == 401)
            assert "revoked" in assert_problem(loser, 401, "invalid_token")["detail"]


async def test_refresh_reuse_live_is_committed(live_app, live_client):
    """With real commits: after reuse, the successor token stays dead in later transactions."""
    user = await register_and_login(live_client, "replayer")
    rotated = await refresh(live_client, user.refresh_token)
    assert rotated.status_code == 200
    await past_the_grace(live_app, user.id)
    assert (await refresh(live_client, user.refresh_token)).status_code == 401
    assert (await refresh(live_client, rotated.json()["refresh_token"])).status_code == 401
    response = await live_client.get(ME, headers=bearer(rotated.json()["access_token"]))
    assert_problem(response, 401, "invalid_token")


# --- logout ------------------------------------------------------------------------------------


async def test_logout_ends_that_login(client, alice):
    response = await client.post(
        LOGOUT, json={"refresh_token": alice.refresh_token}, headers=alice.headers
    )
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert_problem(await refresh(client, alice.refresh_token), 401, "invalid_token")
    await assert_access_rejected(client, alice.access_token)


async def test_logout_after_rotation_ends_the_rotated_login(client, alice):
    rotated = (await refresh(client, alice.refresh_token)).json()
    response = await client.post(
        LOGOUT,
        json={"refresh_token": rotated["refresh_token"]},
        headers=bearer(rotated["access_token"]),
    )
    assert response.status_code == 204
    assert_problem(await refresh(client, rotated["refresh_token"]), 401, "invalid_token")
    await assert_access_rejected(client, rotated["access_token"])
    await assert_access_rejected(client, alice.access_token)


async def test_logout_keeps_other_logins(client, alice):
    other = await new_login(client, alice)
    response = await client.post(
        LOGOUT, json={"refresh_token": alice.refresh_token}, headers=alice.headers
    )
    assert response.status_code == 204
    await assert_access_works(client, other["access_token"], alice)
    assert (await refresh(client, other["refresh_token"])).status_code == 200
    await assert_access_rejected(client, alice.access_token)


async def test_logout_with_unknown_token_is_204_and_revokes_nothing(client, alice):
    response = await client.post(
        LOGOUT, json={"refresh_token": "not-a-real-token"}, headers=alice.headers
    )
    assert response.status_code == 204
    await assert_access_works(client, alice.access_token, alice)
    assert (await refresh(client, alice.refresh_token)).status_code == 200


async def test_logout_with_someone_elses_token_revokes_nothing(client, alice, bob):
    response = await client.post(
        LOGOUT, json={"refresh_token": bob.refresh_token}, headers=alice.headers
    )
    assert response.status_code == 204
    await assert_access_works(client, bob.access_token, bob)
    assert (await refresh(client, bob.refresh_token)).status_code == 200
    await assert_access_works(client, alice.access_token, alice)


async def test_logout_needs_authentication(client, alice):
    response = await client.post(LOGOUT, json={"refresh_token": alice.refresh_token})
    assert_problem(response, 401, "not_authenticated")
    # The login was not ended by the rejected call.
    await assert_access_works(client, alice.access_token, alice)
    assert (await refresh(client, alice.refresh_token)).status_code == 200


async def test_logout_with_refresh_token_as_bearer_is_rejected(client, alice):
    response = await client.post(
        LOGOUT, json={"refresh_token": alice.refresh_token}, headers=bearer(alice.refresh_token)
    )
    assert_problem(response, 401, "invalid_token")
    await assert_access_works(client, alice.access_token, alice)


async def test_logout_twice(client, alice):
    other = await new_login(client, alice)
    body = {"refresh_token": alice.refresh_token}
    assert (await client.post(LOGOUT, json=body, headers=alice.headers)).status_code == 204
    # The first login's access token is dead now; a second logout from another login is a no-op.
    response = await client.post(LOGOUT, json=body, headers=bearer(other["access_token"]))
    assert response.status_code == 204
    await assert_access_works(client, other["access_token"], alice)


@pytest.mark.parametrize("body", [{}, {"refresh_token": ""}])
async def test_logout_validation(client, alice, body):
    response = await client.post(LOGOUT, json=body, headers=alice.headers)
    assert_problem(response, 422, "validation_error")
    await assert_access_works(client, alice.access_token, alice)
