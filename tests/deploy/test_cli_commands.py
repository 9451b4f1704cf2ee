"""`taskapi create-user`, `taskapi seed` and `taskapi webhooks` as an operator runs them:
subprocesses against a cloned database, their results checked through the API (in-process, on
the same database and storage) and, for counts, SQL."""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from taskapi.app import create_app
from tests.conftest import (
    admin_execute,
    clone_template,
    database_url,
    make_settings,
    register_and_login,
)
from tests.deploy.test_cli_and_socket import (
    CLI_TIMEOUT,
    TASKAPI,
    Completed,
    _plain_dsn,
    cli_env,
    free_port,
)

FAST_ARGON2 = {"ARGON2_MEMORY_COST_KIB": "1024", "ARGON2_TIME_COST": "1"}


@dataclass
class Deployment:
    """One cloned database plus the storage directory and Redis prefix the commands share with
    the API that checks their work."""

    db: str
    storage: Path
    redis_prefix: str
    cwd: Path

    @property
    def env(self) -> dict[str, str]:
        return cli_env(
            DATABASE_URL=database_url(self.db),
            STORAGE_DIR=str(self.storage),
            REDIS_KEY_PREFIX=self.redis_prefix,
            **FAST_ARGON2,
        )

    async def run(self, *args: str, stdin: str | None = None) -> Completed:
        process = await asyncio.create_subprocess_exec(
            TASKAPI,
            *args,
            env=self.env,
            cwd=self.cwd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        data = stdin.encode() if stdin is not None else b""
        try:
            out, err = await asyncio.wait_for(process.communicate(data), timeout=CLI_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        assert process.returncode is not None
        return Completed(process.returncode, out.decode(), err.decode())

    async def fetchval(self, query: str, *args: Any) -> Any:
        conn = await asyncpg.connect(_plain_dsn(database_url(self.db)))
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(_plain_dsn(database_url(self.db)))
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    @asynccontextmanager
    async def api(self) -> AsyncIterator[httpx.AsyncClient]:
        settings = make_settings(
            self.db,
            storage_dir=self.storage,
            redis_key_prefix=self.redis_prefix,
        )
        application = create_app(settings)
        async with application.router.lifespan_context(application):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                yield c


@pytest.fixture
async def deployment(migrated_databases: None, tmp_path: Path) -> AsyncIterator[Deployment]:
    name = f"taskapi_clicmd_{uuid.uuid4().hex[:10]}"
    await clone_template(name)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    try:
        yield Deployment(name, tmp_path / "storage", f"taskapi-test:{uuid.uuid4().hex}:", cwd)
    finally:
        await admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def login(client: httpx.AsyncClient, username: str, password: str) -> dict[str, str]:
    response = await client.post(
        "/api/v1/auth/login", json={"username": username, "password": password}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def one_sentence(result: Completed) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert message.startswith("taskapi: ")
    assert "\n" not in message, f"expected one line, got {result.stderr!r}"
    return message


# --- create-user ----------------------------------------------------------------------------------


async def test_created_user_can_log_in_through_the_api(deployment: Deployment) -> None:
    result = await deployment.run(
        "create-user",
        "Carol_Ops",
        "carol@example.com",
        "--password-stdin",
        "--full-name",
        "Carol Operator",
        stdin="a long enough password\n",
    )
    assert result.returncode == 0, result.stderr
    assert "Carol_Ops" in result.stdout

    async with deployment.api() as client:
        # Login is case-insensitive, as for registered users; the password keeps its spaces.
        headers = await login(client, "carol_ops", "a long enough password")
        me = (await client.get("/api/v1/auth/me", headers=headers)).json()
        assert me["username"] == "Carol_Ops"
        assert me["email"] == "carol@example.com"
        assert me["full_name"] == "Carol Operator"
        wrong = await client.post(
            "/api/v1/auth/login", json={"username": "carol_ops", "password": "a long enough"}
        )
        assert wrong.status_code == 401


async def test_duplicates_and_invalid_input_fail_with_one_sentence(
    deployment: Deployment,
) -> None:
    first = await deployment.run(
        "create-user", "dave", "dave@example.com", "--password-stdin", stdin="password one\n"
    )
    assert first.returncode == 0, first.stderr

    same_name = await deployment.run(
        "create-user", "DAVE", "other@example.com", "--password-stdin", stdin="password two\n"
    )
    assert "username is already registered" in one_sentence(same_name)

    same_email = await deployment.run(
        "create-user", "dave2", "Dave@Example.com", "--password-stdin", stdin="password two\n"
    )
    assert "email address is already registered" in one_sentence(same_email)

    short = await deployment.run(
        "create-user", "erin", "erin@example.com", "--password-stdin", stdin="short\n"
    )
    assert "password" in one_sentence(short)

    bad = await deployment.run(
        "create-user", "no spaces!", "not-an-email", "--password-stdin", stdin="password ok\n"
    )
    message = one_sentence(bad)
    assert "username" in message
    assert "email" in message

    # Only the first one exists, and its password is still the first one.
    assert await deployment.fetchval("SELECT count(*) FROM users") == 1
    async with deployment.api() as client:
        await login(client, "dave", "password one")


@pytest.mark.parametrize("piped", ["", "password ok\n"])
async def test_create_user_with_no_terminal_says_how_to_give_the_password(
    deployment: Deployment, piped: str
) -> None:
    # As in CI or `docker exec` without -t: standard input is not a terminal to prompt on, and
    # a password piped without --password-stdin is not taken either (it would be echoed).
    result = await deployment.run("create-user", "gina", "gina@example.com", stdin=piped)
    message = one_sentence(result)
    assert "password" in message
    assert "--password-stdin" in message
    assert "password ok" not in message
    assert await deployment.fetchval("SELECT count(*) FROM users") == 0


async def test_create_user_with_postgres_down_says_so(tmp_path: Path) -> None:
    port = free_port()  # nothing listens here
    env = cli_env(DATABASE_URL=f"postgresql+asyncpg://postgres@127.0.0.1:{port}/taskapi")
    process = await asyncio.create_subprocess_exec(
        *(TASKAPI, "create-user", "frank", "frank@example.com", "--password-stdin"),
        env=env,
        cwd=tmp_path,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(b"password ok\n"), CLI_TIMEOUT)
    assert process.returncode is not None
    message = one_sentence(Completed(process.returncode, out.decode(), err.decode()))
    assert "PostgreSQL is not reachable" in message
    assert f"127.0.0.1:{port}" in message


# --- seed ---------------------------------------------------------------------------------------


async def test_seed_fills_a_realistic_backlog(deployment: Deployment) -> None:
    password = "seeded password"
    result = await deployment.run(
        "seed", "--users", "3", "--tasks-per-user", "10", "--attachments", "2",
        "--password", password,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "seeded 3 users" in result.stdout

    async with deployment.api() as client:
        seen: dict[int, dict[str, Any]] = {}
        assigned_to_someone = 0
        for n in (1, 2, 3):
            headers = await login(client, f"user{n}", password)
            owned = (
                await client.get(
                    "/api/v1/tasks?scope=owned&project_id=none&limit=100", headers=headers
                )
            ).json()
            assert owned["total"] == 10
            for item in owned["items"]:
                seen[item["id"]] = item
            assigned_to_someone += sum(1 for t in owned["items"] if t["assignee_id"] is not None)

            overdue = (await client.get("/api/v1/tasks?overdue=true", headers=headers)).json()
            assert overdue["total"] >= 1
            assert all(task["is_overdue"] for task in overdue["items"])
            stats = (await client.get("/api/v1/tasks/stats", headers=headers)).json()
            assert stats["overdue"] == overdue["total"]
            assert stats["total"] >= 10

            # Files: listed on their task, downloadable, bytes matching size and hash.
            with_files = [t for t in owned["items"] if t["attachment_count"]]
            assert len(with_files) == 2
            for task in with_files:
                files = (
                    await client.get(f"/api/v1/tasks/{task['id']}/files", headers=headers)
                ).json()
                assert len(files) == 1
                download = await client.get(f"/api/v1/files/{files[0]['id']}", headers=headers)
                assert download.status_code == 200
                assert download.headers["content-type"].startswith(files[0]["content_type"])
                assert len(download.content) == files[0]["size"]
                assert hashlib.sha256(download.content).hexdigest() == files[0]["sha256"]

        assert len(seen) == 30
        # Assigned tasks are visible to the assignee, who was told about them.
        assert assigned_to_someone >= 3
        some_assigned = next(t for t in seen.values() if t["assignee_id"] is not None)
        assignee = await deployment.fetchval(
            "SELECT username FROM users WHERE id = $1", some_assigned["assignee_id"]
        )
        headers = await login(client, assignee, password)
        visible = await client.get(f"/api/v1/tasks/{some_assigned['id']}", headers=headers)
        assert visible.status_code == 200
        notes = (await client.get("/api/v1/notifications", headers=headers)).json()
        assert any(n["task_id"] == some_assigned["id"] for n in notes["items"])

        # A backlog, not thirty copies of one row.
        tasks = list(seen.values())
        assert len({t["title"] for t in tasks}) >= 10
        assert len({t["status"] for t in tasks}) >= 3
        assert len({t["priority"] for t in tasks}) >= 3
        assert len({tag for t in tasks for tag in t["tags"]}) >= 4
        assert sum(1 for t in tasks if t["description"]) >= 10
        assert sum(1 for t in tasks if t["due_date"]) >= 10
        assert all(t["completed_at"] for t in tasks if t["status"] == "done")

        # Full-text search finds seeded words.
        owner = await login(client, "user1", password)
        me = (await client.get("/api/v1/auth/me", headers=owner)).json()
        titles = " ".join(t["title"] for t in tasks if t["owner_id"] == me["id"]).lower()
        word = next(w for w in ("write", "review", "fix", "update", "test", "plan") if w in titles)
        found = (await client.get(f"/api/v1/tasks?search={word}", headers=owner)).json()
        assert found["total"] >= 1
        assert all(
            word in t["title"].lower() + (t["description"] or "").lower() for t in found["items"]
        )

        # Shared projects: member counts agree with the member rows, every role is used,
        # assignees are members, and a member lists each project's tasks.
        projects = await deployment.fetch(
            "SELECT p.id, p.member_count, count(m.user_id) AS members,"
            " array_agg(DISTINCT m.role::text) AS roles"
            " FROM projects p JOIN project_members m ON m.project_id = p.id GROUP BY p.id"
        )
        assert len(projects) == 3
        assert all(p["member_count"] == p["members"] for p in projects)
        assert {role for p in projects for role in p["roles"]} == {"admin", "editor", "viewer"}
        assert (
            await deployment.fetchval(
                "SELECT count(*) FROM tasks t WHERE t.assignee_id IS NOT NULL"
                " AND t.project_id IS NOT NULL AND NOT EXISTS (SELECT FROM project_members m"
                " WHERE m.project_id = t.project_id AND m.user_id = t.assignee_id)"
            )
            == 0
        )
        for project in projects:
            in_project = await deployment.fetchval(
                "SELECT count(*) FROM tasks WHERE project_id = $1", project["id"]
            )
            assert in_project >= 1
            listed = (
                await client.get(f"/api/v1/tasks?project_id={project['id']}", headers=owner)
            ).json()
            assert listed["total"] == in_project
        shared = (await client.get("/api/v1/notifications", headers=headers)).json()
        assert any(n["kind"] == "project_shared" for n in shared["items"])


async def test_seeding_twice_skips_existing_users(deployment: Deployment) -> None:
    first = await deployment.run("seed", "--users", "2", "--tasks-per-user", "5")
    assert first.returncode == 0, first.stderr
    second = await deployment.run("seed", "--users", "3", "--tasks-per-user", "5")
    assert second.returncode == 0, second.stderr
    assert "seeded 1 users (2 already existed)" in second.stdout

    assert await deployment.fetchval("SELECT count(*) FROM users") == 3
    assert await deployment.fetchval("SELECT count(*) FROM tasks WHERE project_id IS NULL") == 15
    for n in (1, 2, 3):
        owned = await deployment.fetchval(
            "SELECT count(*) FROM tasks t JOIN users u ON u.id = t.owner_id"
            " WHERE u.username = $1 AND t.project_id IS NULL",
            f"user{n}",
        )
        assert owned == 5
    # The demo projects of the first run are neither repeated nor changed by the second.
    assert await deployment.fetchval("SELECT count(*) FROM projects") == 3
    assert await deployment.fetchval("SELECT count(*) FROM project_members") == 6
    # The default password from --help works.
    async with deployment.api() as client:
        await login(client, "user3", "demo-password")


async def test_seed_refuses_a_password_the_api_would_refuse(deployment: Deployment) -> None:
    result = await deployment.run("seed", "--users", "1", "--password", "short")
    assert "password" in one_sentence(result)
    assert await deployment.fetchval("SELECT count(*) FROM users") == 0


async def test_help_explains_create_user_and_seed(deployment: Deployment) -> None:
    top = await deployment.run("--help")
    assert "create-user" in top.stdout
    assert "seed" in top.stdout

    create = await deployment.run("create-user", "--help")
    assert create.returncode == 0
    for text in ("USERNAME", "EMAIL", "--password-stdin", "--full-name", "register"):
        assert text in create.stdout

    seed = await deployment.run("seed", "--help")
    assert seed.returncode == 0
    for text in ("--users", "--tasks-per-user", "--password", "--attachments"):
        assert text in seed.stdout
    # argparse wraps to the terminal width, also inside words with hyphens.
    assert "(default:demo-password)" in re.sub(r"\s+", "", seed.stdout)
    assert "overdue" in seed.stdout

    bad = await deployment.run("seed", "--users", "0")
    assert bad.returncode != 0
    assert "at least 1" in bad.stderr


WEBHOOKS = "/api/v1/webhooks"


async def test_the_operator_lists_and_redelivers_from_the_command_line(
    deployment: Deployment,
) -> None:
    async with deployment.api() as client:
        alice = await register_and_login(client)
        created = await client.post(
            WEBHOOKS,
            json={"url": "https://hooks.example.com/in", "events": ["*"]},
            headers=alice.headers,
        )
        webhook_id = created.json()["id"]
        pings = [
            (await client.post(f"{WEBHOOKS}/{webhook_id}/ping", headers=alice.headers)).json()
            for _ in range(2)
        ]
    failed_id, pending_id = (p["delivery_id"] for p in pings)
    await deployment.fetchval(
        "UPDATE webhook_deliveries SET status = 2, attempts = 11, last_error = 'HTTP 503' "
        "WHERE id = $1",
        failed_id,
    )

    listed = await deployment.run("webhooks", "deliveries", "--status", "failed")
    assert listed.returncode == 0, listed.stderr
    [header, row] = listed.stdout.splitlines()
    assert header.split("\t")[:4] == ["id", "webhook", "event", "status"]
    assert row.split("\t") == [
        str(failed_id),
        str(webhook_id),
        "ping",
        "failed",
        "11",
        "HTTP 503",
        "",
        "https://hooks.example.com/in",
    ]
    everything = await deployment.run("webhooks", "deliveries", "--webhook", str(webhook_id))
    assert [line.split("\t")[0] for line in everything.stdout.splitlines()[1:]] == [
        str(pending_id),
        str(failed_id),
    ]

    again = await deployment.run("webhooks", "redeliver", "--all-failed")
    assert (again.returncode, again.stdout.strip()) == (0, "queued 1 deliveries again")
    statuses = await deployment.fetch("SELECT id, status FROM webhook_deliveries ORDER BY id")
    assert [tuple(r) for r in statuses] == [(failed_id, 0), (pending_id, 0)]

    unknown = await deployment.run("webhooks", "redeliver", "999999")
    assert unknown.returncode == 1
    assert "no such delivery: 999999" in unknown.stderr
    nothing = await deployment.run("webhooks", "redeliver")
    assert nothing.returncode == 1
    assert "give delivery ids or --all-failed" in nothing.stderr
