"""The `taskapi` command: serve, migrate (and more as the service grows)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from taskapi.config import Settings, SettingsError, get_settings

logger = logging.getLogger("taskapi.cli")

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # Alembic announces each of its plugins at INFO; only the migrations it runs are news.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def _alembic_config(settings: Settings) -> object:
    from alembic.config import Config

    ini = PROJECT_ROOT / "alembic.ini"
    config = Config(str(ini))
    config.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    config.attributes["database_url"] = settings.database_url
    return config


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    """Create the database if it is missing, then upgrade it to the latest schema."""
    from taskapi.dbadmin import DatabaseUnreachable, ensure_database

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


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    """Serve the API with uvicorn (uvloop + httptools) on HOST:PORT with WEB_CONCURRENCY workers."""
    import uvicorn

    uvicorn.run(
        "taskapi.app:create_app",
        factory=True,
        host=args.host or settings.host,
        port=args.port if args.port is not None else settings.port,
        workers=args.workers or settings.web_concurrency,
        log_level=settings.log_level.lower(),
        server_header=False,
        proxy_headers=False,
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    """Run background jobs (object deletion, orphan sweep, due-soon notifications) until SIGTERM
    or Ctrl-C; the job in hand is finished first. Any number of workers can run at once."""
    import signal

    from taskapi.db import create_engine, create_sessionmaker
    from taskapi.jobs.worker import Worker
    from taskapi.storage.s3 import create_storage

    async def run() -> None:
        engine = create_engine(settings)
        storage = await create_storage(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await Worker(create_sessionmaker(engine), storage, settings).run(stop)
        finally:
            await storage.close()
            await engine.dispose()

    asyncio.run(run())
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

    worker = commands.add_parser(
        "worker", help="run background jobs", description=cmd_worker.__doc__
    )
    worker.set_defaults(handler=cmd_worker)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except SettingsError as error:
        print(f"taskapi: {error}", file=sys.stderr)
        return 2
    _configure_logging(settings)
    handler = args.handler
    result: int = handler(settings, args)
    return result
