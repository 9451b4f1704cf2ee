"""What the benchmark scripts of scripts/bench/ share: a free port, their own database's URL on
the server DATABASE_URL names, statements run on that server's `postgres` database, a fresh
database migrated by `taskapi migrate`, a scratch directory and database cleaned up after a run,
a checked response, and the table they print."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import asyncpg
import httpx
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv the script runs in
DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/taskapi"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def database_url(database: str) -> str:
    """`database` on the server of DATABASE_URL (or the local default), for SQLAlchemy."""
    url = make_url(os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL)
    return url.set(drivername="postgresql+asyncpg", database=database).render_as_string(
        hide_password=False
    )


async def admin(statement: str) -> None:
    """One statement on the server's `postgres` database (creating or dropping ours)."""
    url = make_url(database_url("postgres")).set(drivername="postgresql")
    conn = await asyncpg.connect(url.render_as_string(hide_password=False), timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


class BenchError(RuntimeError):
    """The run cannot go on; the message says why."""


def fresh_database(database: str, env: Mapping[str, str]) -> None:
    """`database` dropped, then created and migrated by `taskapi migrate` (DATABASE_URL in
    `env` names it)."""
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    migrate = subprocess.run(  # noqa: S603 - our own venv's executable
        [str(BIN / "taskapi"), "migrate"],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        check=False,
    )
    if migrate.returncode != 0:
        raise BenchError(f"taskapi migrate failed:\n{(migrate.stdout + migrate.stderr)[-3000:]}")


T = TypeVar("T")


def run_scratch(name: str, database: str, keep: bool, run: Callable[[Path], T]) -> T | None:
    """`run(workdir)` in a scratch directory of its own; then the directory removed (kept, and
    said so, after a failure or with `keep`) and `database` dropped (unless `keep`). None when
    the run failed: the error is printed."""
    workdir = Path(tempfile.mkdtemp(prefix=f"taskapi-bench-{name}-"))
    failed = True
    try:
        result = run(workdir)
        failed = False
        return result
    except (BenchError, OSError, asyncpg.PostgresError, httpx.HTTPError) as error:
        print(f"{name} bench: {type(error).__name__}: {error}", file=sys.stderr)
        return None
    finally:
        if keep or failed:
            print(f"kept: {workdir} (the logs)", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        if not keep:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                asyncio.run(admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))


def check(response: httpx.Response, status: int) -> httpx.Response:
    """`response`, if it has `status`; else the run stops, saying what came back."""
    if response.status_code != status:
        raise BenchError(
            f"{response.request.method} {response.request.url.path}: "
            f"{response.status_code} {response.text[:300]}"
        )
    return response


def table_text(
    title: str, header: Sequence[str], align: str, rows: Sequence[Sequence[str]], notes: list[str]
) -> str:
    """A plain-text table: `align` has a letter per column, l(eft) or r(ight)."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(width) if side == "r" else cell.ljust(width)
            for cell, width, side in zip(cells, widths, align, strict=True)
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([title, line(header), rule, *(line(row) for row in rows), *notes])
