"""The `taskapi` command: serve, migrate (and more as the service grows)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from taskapi.kit.cli_args import non_negative, positive
from taskapi.kit.config import Settings, SettingsError, get_settings
from taskapi.kit.logs import configure_logging

# Each command imports what only it needs when it runs (the `from ... import` inside cmd_*), so
# that starting any one command, or --help, does not load every domain, aioboto3, uvicorn and
# alembic. None of them avoids an import cycle: nothing in taskapi imports this module.

logger = logging.getLogger("taskapi.cli")

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# `taskapi seed --password`'s default; demo accounts only, printed by --help.
DEFAULT_SEED_PASSWORD = "demo-password"


def _alembic_ini(settings: Settings) -> Path:
    return (settings.alembic_config or PROJECT_ROOT / "alembic.ini").resolve()


def _alembic_config(settings: Settings) -> object:
    from alembic.config import Config

    ini = _alembic_ini(settings)
    config = Config(str(ini))
    config.set_main_option("script_location", str(ini.parent / "migrations"))
    config.attributes["database_url"] = settings.database_url
    # Keep our own log configuration (JSON in production) instead of alembic.ini's.
    config.attributes["configure_logging"] = False
    return config


def _alembic_ini_found(settings: Settings) -> bool:
    ini = _alembic_ini(settings)
    if ini.is_file() and (ini.parent / "migrations").is_dir():
        return True
    print(
        f"taskapi: no alembic.ini with migrations/ beside it at {ini}; "
        "set ALEMBIC_CONFIG to the alembic.ini that ships with taskapi.",
        file=sys.stderr,
    )
    return False


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    """Create the database if it is missing, then upgrade it to the latest schema."""
    from taskapi.kit.dbadmin import DatabaseUnreachable, ensure_database

    # Checked first: without it Alembic fails only after the database was created, with a traceback.
    if not _alembic_ini_found(settings):
        return 2
    try:
        created = asyncio.run(ensure_database(settings.database_url))
    except DatabaseUnreachable as error:
        print(f"taskapi: {error}", file=sys.stderr)
        return 1
    if created:
        print(f"taskapi: created database {created!r}", file=sys.stderr)
    # Imported only now: importing alembic logs its plugin setup at INFO, which would bury the
    # one-sentence message above when PostgreSQL is down.
    from alembic import command

    command.upgrade(_alembic_config(settings), args.revision)  # type: ignore[arg-type]
    return 0


def cmd_wait_for_schema(settings: Settings, args: argparse.Namespace) -> int:
    """Wait until the database schema is this release's (or a later release's), then exit 0; exit
    1 after --timeout seconds. Run as an init container, it holds new pods back until the
    migration Job of their release has run, while the old pods go on serving."""
    from alembic.script import ScriptDirectory

    if not _alembic_ini_found(settings):
        return 2
    script = ScriptDirectory.from_config(_alembic_config(settings))  # type: ignore[arg-type]
    heads = frozenset(script.get_heads())
    known = frozenset(revision.revision for revision in script.walk_revisions())
    return asyncio.run(_wait_for_schema(settings.database_url, heads, known, args.timeout))


async def _wait_for_schema(
    database_url: str, heads: frozenset[str], known: frozenset[str], seconds: float
) -> int:
    from taskapi.kit.dbadmin import DatabaseUnreachable, schema_revisions

    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        try:
            current = await schema_revisions(database_url)
            # A revision this release does not know is a later release's: newer, not older.
            if current and all(rev in heads or rev not in known for rev in current):
                print(f"taskapi: schema at {', '.join(sorted(current))}", file=sys.stderr)
                return 0
            state = f"schema at {', '.join(sorted(current)) or 'nothing'}"
        except DatabaseUnreachable as error:
            state = f"database unreachable ({error})"
        if loop.time() >= deadline:
            print(
                f"taskapi: after {seconds} s the schema is not at {', '.join(sorted(heads))}"
                f" ({state}); has `taskapi migrate` run for this release?",
                file=sys.stderr,
            )
            return 1
        await asyncio.sleep(min(2.0, max(0.0, deadline - loop.time())))


def _exit_after_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    """Serve the API with uvicorn (uvloop + httptools) on HOST:PORT with WEB_CONCURRENCY workers."""
    import os
    import shutil
    import tempfile

    import uvicorn

    from taskapi.kit.http_protocol import HeaderLimitedHttpToolsProtocol

    workers = args.workers or settings.web_concurrency
    metrics_dir: str | None = None
    if workers > 1:
        # Each worker writes its metrics into this directory and a scrape sums them all. It must
        # be set before the workers are spawned (they read it when prometheus_client is
        # imported) and be fresh: files left by an earlier run would be counted again.
        metrics_dir = tempfile.mkdtemp(prefix="taskapi-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    else:
        # One process serves everything from its own registry; an inherited directory would
        # only add stale files to the scrape.
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    # uvicorn drains on SIGTERM, then raises the signal again so the process dies of it (status
    # 143, which Docker and Kubernetes report as an error). A drained stop is a success: this
    # handler, which uvicorn restores before re-raising, turns it into exit status 0. Before
    # uvicorn installs its own handlers it simply exits, as the default would.
    signal.signal(signal.SIGTERM, _exit_after_sigterm)
    try:
        uvicorn.run(
            # Configures logging in each worker process, then builds the app.
            "taskapi.app:create_served_app",
            factory=True,
            host=args.host or settings.host,
            port=args.port if args.port is not None else settings.port,
            workers=workers,
            # None: uvicorn leaves our logging alone and its loggers propagate to our handler.
            log_config=None,
            log_level=settings.log_level.lower(),
            server_header=False,
            proxy_headers=False,
            # RequestContextMiddleware writes the access log (route template, request id, user).
            access_log=False,
            timeout_graceful_shutdown=30,
            # httptools with a bound on the request line + headers (431 beyond it); the h11
            # limit is the same bound for anyone running the app under uvicorn's h11 instead.
            http=HeaderLimitedHttpToolsProtocol,
            h11_max_incomplete_event_size=settings.max_request_header_bytes,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    """Run background jobs (file deletion, sweeps, notifications) and webhook deliveries until
    SIGTERM or Ctrl-C, finishing what is in hand first. Any number can run at once."""
    from taskapi.events.wakeup import EventWaker
    from taskapi.jobs.worker import Worker
    from taskapi.kit.db import create_engine, create_sessionmaker
    from taskapi.storage.factory import create_storage
    from taskapi.webhooks.dispatcher import WebhookDispatcher
    from taskapi.wiring import JOBS

    async def run() -> None:
        engine = create_engine(settings)
        storage = await create_storage(settings)
        # New events wake the webhook dispatcher (as they wake event streams in the API).
        waker = EventWaker(settings)
        await waker.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        sessionmaker = create_sessionmaker(engine)
        try:
            await asyncio.gather(
                Worker(sessionmaker, storage, settings, JOBS).run(stop),
                WebhookDispatcher(sessionmaker, settings, wake=waker.signal).run(stop),
            )
        finally:
            await waker.stop()
            await storage.close()
            await engine.dispose()

    asyncio.run(run())
    return 0


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        # One line, like `docker login --password-stdin`: the password stays out of argv and
        # shell history; only the line break is stripped, spaces are part of the password.
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        # getpass would fall back to reading the piped input with an echo warning, and fail on
        # an empty one with no message at all (CI, cron, `docker exec` without -t).
        raise ValueError(
            "no terminal to ask for the password: pipe it in with --password-stdin "
            "(printf '%s\\n' \"$PASSWORD\" | taskapi create-user NAME EMAIL --password-stdin)."
        )
    import getpass

    password = getpass.getpass("Password: ")
    if getpass.getpass("Repeat password: ") != password:
        raise ValueError("The passwords do not match.")
    return password


def cmd_create_user(settings: Settings, args: argparse.Namespace) -> int:
    """Create a user account with the same rules as POST /api/v1/auth/register (username 3-50 of
    [A-Za-z0-9_.-], a valid email, a password of 8-128 characters). The password is prompted for
    (twice, in a terminal) or read from one line of standard input with --password-stdin."""
    from taskapi.accounts import CommandError, create_user

    try:
        password = _read_password(args)
    except (ValueError, EOFError, KeyboardInterrupt) as error:
        print(f"taskapi: {str(error) or 'no password given.'}", file=sys.stderr)
        return 1
    try:
        user = asyncio.run(
            create_user(settings, args.username, args.email, password, args.full_name)
        )
    except CommandError as error:
        print(f"taskapi: {error}", file=sys.stderr)
        return 1
    print(f"created user {user.username!r} (id {user.id}, {user.email})")
    return 0


def cmd_seed(settings: Settings, args: argparse.Namespace) -> int:
    """Fill the database with demo data: users user1..N (email userN@example.com) sharing one
    password, each owning M tasks with realistic titles, descriptions, tags, priorities,
    statuses and due dates (some overdue), some assigned to other seeded users (with their
    notifications), and a few small files (Markdown notes, PNG screenshots) in the configured
    storage; and three shared projects with admins, editors, viewers and tasks of their own.
    Users that already exist are skipped, so running it again adds only new users."""
    from taskapi.accounts import CommandError
    from taskapi.seed import seed

    try:
        report = asyncio.run(
            seed(
                settings,
                users=args.users,
                tasks_per_user=args.tasks_per_user,
                password=args.password,
                attachments_per_user=args.attachments,
            )
        )
    except CommandError as error:
        print(f"taskapi: {error}", file=sys.stderr)
        return 1
    print(
        f"seeded {report.created_users} users ({report.skipped_users} already existed), "
        f"{report.tasks} tasks ({report.assigned} assigned, {report.overdue} overdue), "
        f"{report.attachments} files, {report.projects}; log in as user1 .. "
        f"user{args.users} with the password "
        f"{args.password!r}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskapi",
        description="taskapi: an asynchronous task-management REST API. "
        "Configuration comes from environment variables and .env (see README).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve the HTTP API", description=cmd_serve.__doc__)
    serve.add_argument("--host", help="interface to bind (default: HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default: PORT or 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (default: WEB_CONCURRENCY)")
    serve.set_defaults(handler=cmd_serve)

    migrate = commands.add_parser(
        "migrate",
        help="create the database if needed and apply migrations",
        description=cmd_migrate.__doc__,
    )
    migrate.add_argument(
        "revision", nargs="?", default="head", help="target revision (default: head)"
    )
    migrate.set_defaults(handler=cmd_migrate)

    wait_for_schema = commands.add_parser(
        "wait-for-schema",
        help="wait until `migrate` has brought the schema to this release",
        description=cmd_wait_for_schema.__doc__,
    )
    wait_for_schema.add_argument(
        "--timeout", type=non_negative, default=600, metavar="S", help="give up after S seconds"
    )
    wait_for_schema.set_defaults(handler=cmd_wait_for_schema)

    worker = commands.add_parser(
        "worker", help="run background jobs", description=cmd_worker.__doc__
    )
    worker.set_defaults(handler=cmd_worker)

    create_user = commands.add_parser(
        "create-user",
        help="create a user account (e.g. the first one)",
        description=cmd_create_user.__doc__,
    )
    create_user.add_argument("username", metavar="USERNAME", help="3-50 of A-Z a-z 0-9 _ . -")
    create_user.add_argument("email", metavar="EMAIL", help="the user's email address")
    create_user.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input instead of prompting",
    )
    create_user.add_argument("--full-name", help="display name, up to 100 characters")
    create_user.set_defaults(handler=cmd_create_user)

    seed = commands.add_parser(
        "seed",
        help="fill the database with demo users, tasks and files",
        description=cmd_seed.__doc__,
    )
    seed.add_argument(
        "--users", type=positive, default=10, metavar="N", help="users user1..N (default: 10)"
    )
    seed.add_argument(
        "--tasks-per-user",
        type=non_negative,
        default=20,
        metavar="M",
        help="tasks each new user owns (default: 20)",
    )
    seed.add_argument(
        "--password",
        default=DEFAULT_SEED_PASSWORD,
        metavar="P",
        help=f"the password of every seeded user (default: {DEFAULT_SEED_PASSWORD})",
    )
    seed.add_argument(
        "--attachments",
        type=non_negative,
        default=2,
        metavar="K",
        help="small files per new user, each on a different task (default: 2)",
    )
    seed.set_defaults(handler=cmd_seed)
    from taskapi.webhooks.cli import register  # its schemas: imported only when parsing

    register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
        # Every command logs the same way: JSON or text (LOG_FORMAT), request ids, no secrets.
        configure_logging(settings)
    except SettingsError as error:
        print(f"taskapi: {error}", file=sys.stderr)
        return 2
    handler = args.handler
    result: int = handler(settings, args)
    return result
