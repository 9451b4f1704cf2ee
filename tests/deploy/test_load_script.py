"""`load/locustfile.py` as `make load` runs it: locust headless against a real `taskapi serve`,
once with accounts from `taskapi seed` and once registering its own; the CSV report must show
every kind of request, and none may fail."""

from __future__ import annotations

import asyncio
import csv
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, admin_execute, clone_template, database_url
from tests.deploy.test_cli_and_socket import (
    TASKAPI,
    _wait_until_healthy,
    cli_env,
    free_port,
    log_text,
)

LOCUST = os.path.join(ROOT, ".venv", "bin", "locust")
LOCUSTFILE = os.path.join(ROOT, "load", "locustfile.py")

# The rows of the report: one per route template, whatever the ids.
EVERY_REQUEST = {
    ("POST", "POST /auth/login"),
    ("GET", "GET /tasks?scope=owned"),
    ("GET", "GET /tasks"),
    ("GET", "GET /tasks?filters"),
    ("GET", "GET /tasks?search"),
    ("GET", "GET /tasks/{id}"),
    ("GET", "GET /tasks/stats"),
    ("POST", "POST /tasks"),
    ("PATCH", "PATCH /tasks/{id}"),
    ("POST", "POST /tasks/{id}/transition"),
    ("POST", "POST /tasks/{id}/files"),
    ("GET", "GET /files/{id}"),
    # ProjectMemberUser (one of the four simulated users): a member of shared projects.
    ("GET", "GET /projects"),
    ("GET", "GET /tasks?project_id"),
    ("POST", "POST /tasks (project)"),
    # MachineClientUser: a script with a personal access token.
    ("POST", "POST /tokens"),
    ("GET", "GET /events"),
    ("POST", "POST /tasks/batch"),
    ("POST", "POST /tasks/batch (replay)"),
    ("GET", "GET /events?since"),
    ("GET", "GET /tasks?updated_since"),
}


@pytest.fixture
async def server(
    migrated_databases: None, tmp_path: Path
) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """`taskapi serve` on a fresh database, limits on but far above what 4 users send."""
    name = f"taskapi_load_{uuid.uuid4().hex[:10]}"
    await clone_template(name)
    port = free_port()
    env = cli_env(
        DATABASE_URL=database_url(name),
        STORAGE_DIR=str(tmp_path / "storage"),
        REDIS_KEY_PREFIX=f"taskapi-test:{uuid.uuid4().hex}:",
        RATE_LIMIT_ENABLED="true",
        RATE_LIMIT_USER_BURST="100000",
        RATE_LIMIT_USER_PER_MINUTE="1000000",
        RATE_LIMIT_AUTH_BURST="10000",
        RATE_LIMIT_AUTH_PER_MINUTE="100000",
        ARGON2_MEMORY_COST_KIB="1024",
        ARGON2_TIME_COST="1",
    )
    log_path = tmp_path / "server.log"
    try:
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                TASKAPI, "serve", "--port", str(port), env=env, cwd=tmp_path, stdout=log, stderr=log
            )
        try:
            base_url = f"http://127.0.0.1:{port}"
            await _wait_until_healthy(base_url, process, log_path)
            yield base_url, env
        finally:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
    finally:
        await admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def run(*command: str, env: dict[str, str], cwd: Path, seconds: float) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *command, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), seconds)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


def read_csv(path: str) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("accounts", ["seeded", "registered"])
async def test_locust_exercises_every_endpoint_without_failures(
    server: tuple[str, dict[str, str]], tmp_path: Path, accounts: str
) -> None:
    base_url, server_env = server
    load_env = {k: v for k, v in os.environ.items() if not k.startswith("LOAD_")}
    # Short think times, so 8 seconds cover even the rarest action several times.
    load_env.update({"LOAD_WAIT_MIN": "0.02", "LOAD_WAIT_MAX": "0.1"})
    expected = set(EVERY_REQUEST)
    if accounts == "seeded":
        code, output = await run(
            TASKAPI, "seed", "--users", "2", "--tasks-per-user", "5",
            env=server_env, cwd=tmp_path, seconds=60,
        )  # fmt: skip
        assert code == 0, output
        # Five simulated users over two accounts: shared accounts are part of the model.
        load_env["LOAD_SEED_USERS"] = "2"
    else:
        # A new account is in no project: the project member creates one first.
        expected |= {("POST", "POST /auth/register"), ("POST", "POST /projects")}

    prefix = tmp_path / "reports" / "load"
    prefix.parent.mkdir()
    code, output = await run(
        LOCUST, "-f", LOCUSTFILE, "--headless", "-u", "5", "-r", "5", "-t", "8s",
        "--host", base_url, "--csv", str(prefix), "--html", str(prefix) + ".html",
        "--only-summary", "--loglevel", "WARNING",
        env=load_env, cwd=tmp_path, seconds=60,
    )  # fmt: skip
    assert code == 0, output + log_text(tmp_path / "server.log")

    rows = {(row["Type"], row["Name"]): row for row in read_csv(f"{prefix}_stats.csv")}
    aggregated = rows.pop(("", "Aggregated"))
    assert set(rows) == expected
    for key, row in rows.items():
        assert int(row["Request Count"]) >= 1, key
        assert int(row["Failure Count"]) == 0, (key, output)
        assert float(row["Median Response Time"]) > 0, key
    assert int(aggregated["Request Count"]) >= 200
    assert int(aggregated["Failure Count"]) == 0

    assert read_csv(f"{prefix}_failures.csv") == []
    assert len(read_csv(f"{prefix}_stats_history.csv")) >= 3  # a line per second of the run
    assert "GET /tasks/stats" in log_text(Path(f"{prefix}.html"))
