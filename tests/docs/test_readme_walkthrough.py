"""The README's walkthrough, run verbatim: its `sh` blocks, in order, in bash against a real
`taskapi serve` on a fresh database. A status the text does not expect fails the run, so the
walkthrough a newcomer pastes can never rot again."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, TEMPLATE_DB, admin_execute, database_url
from tests.deploy.test_cli_and_socket import (
    TASKAPI,
    _wait_until_healthy,
    cli_env,
    free_port,
    log_text,
)

README = Path(ROOT) / "README.md"
WALKTHROUGH_TIMEOUT = 120.0

_FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.DOTALL | re.MULTILINE)
# An error shown on purpose: the status is captured and compared, nothing else is printed.
_EXPECTED_STATUS = re.compile(
    r"""^test "\$\(curl -s -o /dev/null -w '%\{http_code\}' [^\n]*\)" = [45]\d\d$"""
)


def walkthrough() -> str:
    blocks = [body for info, body in _FENCE.findall(README.read_text()) if info in {"sh", "bash"}]
    assert blocks, "README.md has no sh blocks"
    return "\n".join(blocks)


def logical_lines(script: str) -> list[str]:
    """Lines with backslash continuations joined, as the shell reads them."""
    return [line.strip() for line in script.replace("\\\n", " ").splitlines() if line.strip()]


def test_every_request_fails_loudly_unless_its_error_is_expected() -> None:
    for line in logical_lines(walkthrough()):
        if re.search(r"\bcurl\b", line) is None:
            continue
        assert "--fail-with-body" in line or _EXPECTED_STATUS.match(line), (
            f"this request would let an error status pass unnoticed:\n{line}"
        )


def test_the_walkthrough_shows_the_whole_flow() -> None:
    script = walkthrough()
    for step in (
        "/auth/register",
        "/auth/login",
        '-H "If-Match: $ETAG"',
        "/transition",
        "/tags",
        "/assign",
        "search=",
        "cursor=",
        '-F "file=@',
        '"$API/files/$F1"',
        "/tasks/bulk",
        "/tasks/bulk-status",
        "/tasks/stats",
        "/auth/refresh",
        "/auth/logout",
    ):
        assert step in script, f"the walkthrough no longer shows {step}"
    # Relative dates only: a fixed one is overdue some day.
    assert re.search(r"\d{4}-\d\d-\d\d", script) is None
    # The refresh step keeps the new refresh token for the logout.
    assert re.search(r"^REFRESH=.*\$PAIR", script, re.MULTILINE)


def test_a_task_is_deleted_only_after_its_last_use() -> None:
    lines = logical_lines(walkthrough())
    for variable in ("$T1", "$F1"):
        deleted = [i for i, line in enumerate(lines) if "-X DELETE" in line and variable in line]
        assert deleted, f"the walkthrough never deletes {variable}"
        for line in lines[deleted[-1] + 1 :]:
            if variable in line:
                assert _EXPECTED_STATUS.match(line), f"{variable} used after its deletion:\n{line}"


@pytest.fixture
async def served(migrated_databases: None, tmp_path: Path) -> AsyncIterator[str]:
    """`taskapi serve` as `make run` starts it (rate limits on, the embedded worker running), on
    a fresh database cloned from the migrated template; yields its base URL."""
    name = f"taskapi_readme_{uuid.uuid4().hex[:10]}"
    await admin_execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
    port = free_port()
    env = cli_env(
        DATABASE_URL=database_url(name),
        STORAGE_DIR=str(tmp_path / "storage"),
        REDIS_KEY_PREFIX=f"taskapi-test:{uuid.uuid4().hex}:",
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
            yield base_url
        finally:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
    finally:
        await admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_the_walkthrough_runs_pasted_in_order(served: str, tmp_path: Path) -> None:
    for tool in ("bash", "curl", "jq"):
        assert shutil.which(tool), f"the walkthrough needs {tool} (`make services` installs jq)"
    work = tmp_path / "work"
    work.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "API"}
    # The one thing that differs from `make run`: where the server listens. No ~/.curlrc either.
    env.update(API=served, CURL_HOME=str(work))
    process = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        walkthrough(),
        cwd=work,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), WALKTHROUGH_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    output = out.decode(errors="replace")
    server_log = log_text(tmp_path / "server.log")
    assert process.returncode == 0, f"{output}\n--- server log ---\n{server_log}"
    # What the README says the steps do, seen in what they printed.
    assert "the same bytes came back" in output, output
    # two of the four tasks alice sees done (three of hers, one of the project's)
    assert '"completion_rate": 50' in output, output
    assert '"role": "editor"' in output, output
    assert "Announce the launch" in output, output  # bob sees the project's task
    assert "Write the release notes" in output, output
    assert '"status": "in_progress"' in output, output
    assert "Traceback" not in server_log, server_log
