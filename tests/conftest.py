"""Test fixtures: a real PostgreSQL migrated by Alembic, one rolled-back transaction per test.

* `client` talks to the app over httpx's ASGITransport. Every request of a test runs on one
  connection inside an outer transaction that is rolled back afterwards; the app's own commit
  point releases a SAVEPOINT instead (join_transaction_mode="create_savepoint").
* `live_client` is for tests that need real concurrency and real commits: the app runs with its
  own engine on a fresh database cloned from the migrated template, dropped afterwards.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from alembic import command
from alembic.config import Config
from fastapi import FastAPI
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from taskapi.app import create_app, running_services
from taskapi.auth.service import AUTH_SERVICE
from taskapi.kit.config import Settings
from taskapi.kit.db import create_engine
from taskapi.kit.services import install_services, services_of
from taskapi.models import User

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER_URL = os.environ.get("TEST_DATABASE_SERVER", "postgresql+asyncpg://postgres@127.0.0.1:5432")
# pytest-xdist runs the suite in one process per core; each process (worker gw0, gw1, ...) has
# its own databases, storage directory and Redis key prefixes, so workers never meet.
RUN_ID = f"{os.getpid()}_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
TEMPLATE_DB = f"taskapi_test_template_{RUN_ID}"
MAIN_DB = f"taskapi_test_{RUN_ID}"
TEST_SECRET = "test-secret-key-that-is-long-enough-0123456789"
STORAGE_ROOT = Path(tempfile.gettempdir()) / f"taskapi-test-storage-{RUN_ID}"


def database_url(name: str) -> str:
    return f"{SERVER_URL}/{name}"


def _plain_dsn(name: str) -> str:
    return make_url(database_url(name)).set(drivername="postgresql").render_as_string(False)


async def admin_execute(*statements: str) -> None:
    conn = await asyncpg.connect(_plain_dsn("postgres"))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def alembic_config(url: str) -> Config:
    config = Config(os.path.join(ROOT, "alembic.ini"))
    config.set_main_option("script_location", os.path.join(ROOT, "migrations"))
    config.attributes["database_url"] = url
    config.attributes["configure_logging"] = False
    return config


def run_alembic(action: Callable[[], None]) -> None:
    """Alembic's async env calls asyncio.run(); give it a thread with no running loop."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            action()
        except BaseException as error:  # re-raised in the caller's thread
            errors.append(error)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def make_settings(db_name: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "database_url": database_url(db_name),
        "secret_key": TEST_SECRET,
        "database_pool_size": 5,
        "database_max_overflow": 5,
        # Limits are tested on their own (test_ratelimit); elsewhere they would only get in the way.
        "rate_limit_enabled": False,
        # Own Redis keys per settings object: databases cloned per test reuse user ids.
        "redis_key_prefix": f"taskapi-test:{uuid.uuid4().hex}:",
        # Jobs are run explicitly by the tests that are about them.
        "worker_embedded": False,
        "storage_dir": STORAGE_ROOT / uuid.uuid4().hex,
        # Nearly every test registers and logs users in: at OWASP cost (~20 ms per hash) that
        # was minutes of the suite. The real parameters are the Settings defaults, checked in
        # test_settings; tests about hashing itself set their own.
        "argon2_memory_cost_kib": 1024,
        "argon2_time_cost": 1,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
async def migrated_databases() -> AsyncIterator[None]:
    await admin_execute(
        f'DROP DATABASE IF EXISTS "{MAIN_DB}" WITH (FORCE)',
        f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)',
        f'CREATE DATABASE "{TEMPLATE_DB}"',
    )
    run_alembic(lambda: command.upgrade(alembic_config(database_url(TEMPLATE_DB)), "head"))
    await admin_execute(f'CREATE DATABASE "{MAIN_DB}" TEMPLATE "{TEMPLATE_DB}"')
    yield
    await admin_execute(
        f'DROP DATABASE IF EXISTS "{MAIN_DB}" WITH (FORCE)',
        f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)',
    )


@pytest.fixture(scope="session")
def settings(migrated_databases: None) -> Settings:
    return make_settings(MAIN_DB)


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    # Pooled: a test takes a warm connection (catalog caches, prepared statements) instead of
    # opening one; everything it did is rolled back before the connection goes back.
    engine = create_engine(settings)
    yield engine
    await engine.dispose()


@pytest.fixture
async def connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    async with engine.connect() as conn:
        outer = await conn.begin()
        try:
            yield conn
        finally:
            await outer.rollback()


@pytest.fixture
async def db_session(connection: AsyncConnection) -> AsyncIterator[AsyncSession]:
    """A session inside the test's transaction, for arranging and inspecting rows directly."""
    sessionmaker = async_sessionmaker(
        bind=connection, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )
    async with sessionmaker() as session:
        yield session


def bind_to_connection(application: FastAPI, connection: AsyncConnection) -> None:
    """Run the app's reads and writes inside the test's transaction (both session makers: reads
    normally get an autocommit one, which cannot join a transaction)."""
    sessionmaker = async_sessionmaker(
        bind=connection,
        expire_on_commit=False,
        autoflush=False,
        join_transaction_mode="create_savepoint",
    )
    services_of(application).sessionmaker = sessionmaker
    services_of(application).read_sessionmaker = sessionmaker


@pytest.fixture(scope="session")
def built_app(settings: Settings) -> FastAPI:
    """The app's routes, middleware and OpenAPI document, built once per worker: building them
    costs more CPU than most tests. They hold no state; everything a request can change (engine,
    Redis client, caches, storage) is made anew by each test's own run of the lifespan."""
    return create_app(settings)


@asynccontextmanager
async def as_built(application: FastAPI) -> AsyncIterator[None]:
    """A test may add routes of its own (test_logging does) or override dependencies: the next
    test that is lent the same app gets it as it was built."""
    routes = list(application.router.routes)
    overrides = dict(application.dependency_overrides)
    openapi_schema = application.openapi_schema
    try:
        yield
    finally:
        application.router.routes[:] = routes
        application.dependency_overrides.clear()
        application.dependency_overrides.update(overrides)
        application.openapi_schema = openapi_schema


@pytest.fixture
async def app(built_app: FastAPI, connection: AsyncConnection) -> AsyncIterator[FastAPI]:
    async with as_built(built_app), built_app.router.lifespan_context(built_app):
        bind_to_connection(built_app, connection)
        yield built_app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as ac:
        yield ac


# Apps built for `cloned_app`, idle, by overrides: building one costs ~0.25 s of CPU with
# coverage, and a hundred tests use one. What a build takes from the settings (body size limits,
# CORS) depends on the overrides only; everything that names the database, the Redis keys or the
# storage is made by the services each test starts. An app is lent to one test at a time.
_IDLE_APPS: dict[tuple[tuple[str, Any], ...], list[FastAPI]] = {}


async def clone_template(name: str) -> None:
    """A fresh database `name` from the migrated template. Its commits do not wait for the WAL
    to reach the disk (synchronous_commit off, set on the database, so for every connection and
    process using it): no test depends on surviving a crash of the shared server, and live
    tests commit thousands of times."""
    await admin_execute(
        f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"',
        f'ALTER DATABASE "{name}" SET synchronous_commit = off',
    )


@asynccontextmanager
async def cloned_app(**overrides: Any) -> AsyncIterator[FastAPI]:
    """An app with its own engine on a fresh database cloned from the migrated template (real
    commits, real concurrency), its services started and stopped as its lifespan does; the
    database is dropped afterwards. Needs the `migrated_databases` fixture."""
    name = f"taskapi_live_{uuid.uuid4().hex[:10]}"
    await clone_template(name)
    key = tuple(sorted(overrides.items()))
    try:
        idle = _IDLE_APPS.setdefault(key, [])
    except TypeError:  # an override that cannot be a key (a list): an app of its own
        idle = []
    application = idle.pop() if idle else create_app(make_settings("unused", **overrides))
    try:
        # The lifespan the app was built with would serve the settings it was built with.
        async with (
            as_built(application),
            running_services(make_settings(name, **overrides)) as services,
        ):
            install_services(application, services)
            yield application
    finally:
        idle.append(application)
        await admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def live_app(migrated_databases: None) -> AsyncIterator[FastAPI]:
    async with cloned_app() as application:
        yield application


@pytest.fixture
async def live_client(live_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=live_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as ac:
        yield ac


@pytest.fixture
async def busy_app(migrated_databases: None) -> AsyncIterator[FastAPI]:
    # Writers, followers and held transactions at once: more connections than the tests' 10.
    async with cloned_app(database_pool_size=20, database_max_overflow=10) as application:
        yield application


@pytest.fixture
async def busy_client(busy_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=busy_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


# --- users -------------------------------------------------------------------------------------

_counter = itertools.count(1)


@dataclass
class UserHandle:
    id: int
    username: str
    email: str
    password: str
    access_token: str
    refresh_token: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


MakeUser = Callable[..., Awaitable[UserHandle]]


async def register_and_login(
    client: httpx.AsyncClient,
    username: str | None = None,
    *,
    email: str | None = None,
    password: str = "correct horse battery",  # noqa: S107
    full_name: str | None = None,
) -> UserHandle:
    n = next(_counter)
    username = username or f"user{n}_{uuid.uuid4().hex[:6]}"
    email = email or f"{username.lower()}@example.com"
    body: dict[str, Any] = {"username": username, "email": email, "password": password}
    if full_name is not None:
        body["full_name"] = full_name
    registered = await client.post("/api/v1/auth/register", json=body)
    assert registered.status_code == 201, registered.text
    tokens = await client.post(
        "/api/v1/auth/login", json={"username": username, "password": password}
    )
    assert tokens.status_code == 200, tokens.text
    data = tokens.json()
    return UserHandle(
        id=registered.json()["id"],
        username=username,
        email=email,
        password=password,
        access_token=data["access_token"],
        refresh_token=data["refresh_token"],
    )


# Password hashes by password, made once per worker: every test needs users, few are about
# registering (those call the API: tests/api/test_auth.py, register_and_login).
_HASHES: dict[str, str] = {}


async def create_user(
    application: FastAPI,
    username: str | None = None,
    *,
    email: str | None = None,
    password: str = "correct horse battery",  # noqa: S107
    full_name: str | None = None,
) -> UserHandle:
    """A new user and a login of theirs, made by the app's own auth service in the test's
    transaction: what `register_and_login` gets through two requests, for a fraction of the cost
    (the suite makes thousands of users)."""
    n = next(_counter)
    username = username or f"user{n}_{uuid.uuid4().hex[:6]}"
    email = email or f"{username.lower()}@example.com"
    services = services_of(application)
    auth = services.get(AUTH_SERVICE)
    if password not in _HASHES:
        _HASHES[password] = await auth.hashing.hash(password)
    async with services.sessionmaker() as session, session.begin():
        user = User(
            username=username, email=email, full_name=full_name, password_hash=_HASHES[password]
        )
        session.add(user)
        await session.flush()
        tokens = await auth.issue_tokens(session, user.id, family_id=uuid.uuid4())
    return UserHandle(
        id=user.id,
        username=username,
        email=email,
        password=password,
        access_token=tokens.access_token,
        refresh_token=tokens.refresh_token,
    )


@pytest.fixture
def make_user(app: FastAPI, client: httpx.AsyncClient) -> MakeUser:
    """A new user with a login: `await make_user()` or with a username (see `create_user`)."""

    async def factory(username: str | None = None, **kwargs: Any) -> UserHandle:
        return await create_user(app, username, **kwargs)

    return factory


@pytest.fixture
async def alice(make_user: MakeUser) -> UserHandle:
    return await make_user("alice")


@pytest.fixture
async def bob(make_user: MakeUser) -> UserHandle:
    return await make_user("bob")


@pytest.fixture
def make_task(client: httpx.AsyncClient) -> Callable[..., Awaitable[dict[str, Any]]]:
    """Create a task through the API as `user`; keyword arguments become the JSON body."""

    async def factory(user: UserHandle, **body: Any) -> dict[str, Any]:
        body.setdefault("title", f"task {next(_counter)}")
        response = await client.post("/api/v1/tasks", json=body, headers=user.headers)
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result

    return factory


@pytest.fixture(scope="session")
def unique() -> Callable[[str], str]:
    def make(prefix: str) -> str:
        return f"{prefix}{next(_counter)}_{uuid.uuid4().hex[:6]}"

    return make


@dataclass
class StatementLog:
    statements: list[str] = field(default_factory=list)
    savepoints: int = 0  # SAVEPOINTs set (not in `statements`)

    def clear(self) -> None:
        self.statements.clear()
        self.savepoints = 0

    @property
    def count(self) -> int:
        return len(self.statements)


_TRANSACTION_CONTROL = ("SAVEPOINT", "RELEASE", "ROLLBACK", "BEGIN", "COMMIT")


@pytest.fixture
async def sql_log(connection: AsyncConnection) -> AsyncIterator[StatementLog]:
    """Every SQL statement the app sends on the test's connection (transaction control
    excluded): through SQLAlchemy, and straight to asyncpg (the list's compiled queries)."""
    log = StatementLog()
    sync_connection = connection.sync_connection
    assert sync_connection is not None

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        keyword = statement.lstrip().upper()
        if not keyword.startswith(_TRANSACTION_CONTROL):
            log.statements.append(statement)
        elif keyword.startswith("SAVEPOINT"):
            log.savepoints += 1

    # SQLAlchemy runs statements as prepared ones, which asyncpg's query logger does not see;
    # it sees the queries sent with Connection.fetch/execute, so nothing is counted twice.
    def record_direct(query: Any) -> None:
        record(None, None, query.query)

    driver = (await connection.get_raw_connection()).driver_connection
    assert driver is not None
    event.listen(sync_connection, "before_cursor_execute", record)
    driver.add_query_logger(record_direct)
    yield log
    driver.remove_query_logger(record_direct)
    event.remove(sync_connection, "before_cursor_execute", record)


# The modules whose tests take longest (5-25 s each, measured by `make test --durations`): run
# first, so that no worker is still busy with one while the other has run out of tests. xdist's
# worksteal hands each worker half of the collection in order and lets it take not-yet-started
# tests from the other's end: the long ones started early, the run ends on short ones.
SLOW_FIRST = (
    "tests/api/test_visibility_state_machine.py",
    "tests/faults/test_faults_under_load.py",
    "tests/deploy/test_graceful_shutdown.py",
    "tests/fuzz/test_visibility_property.py",
    "tests/deploy/test_load_script.py",
    "tests/deploy/test_cli_commands.py",
    "tests/deploy/test_k8s_manifests.py",
    "tests/docs/test_sync_example.py",
    "tests/faults/test_redis_outage.py",
    "tests/faults/test_storage_outage.py",
    "tests/deploy/test_event_stream_processes.py",
    "tests/deploy/test_webhook_worker.py",
    "tests/api/test_webhook_concurrency.py",
    "tests/api/test_member_removal_races.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: n for n, path in enumerate(SLOW_FIRST)}
    last = len(SLOW_FIRST)
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], last))
