"""Alembic migrations against fresh databases: up, down, up again, and models == schema."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from taskapi import models  # registers every table on the metadata
from taskapi.kit.db import Base
from tests.conftest import admin_execute, alembic_config, database_url, run_alembic

EXPECTED_TABLES = {"users", "refresh_tokens", "tasks"}
EXPECTED_ENUMS = {"task_status", "task_priority"}

TABLES_SQL = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
ENUMS_SQL = (
    "SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
    "WHERE n.nspname = 'public' AND t.typtype = 'e'"
)
SEQUENCES_SQL = (
    "SELECT sequence_name FROM information_schema.sequences WHERE sequence_schema = 'public'"
)
CONSTRAINTS_SQL = """
    SELECT c.conname, c.contype::text AS contype, rel.relname AS table_name,
           c.confdeltype::text AS confdeltype
    FROM pg_constraint c
    JOIN pg_class rel ON rel.oid = c.conrelid
    JOIN pg_namespace n ON n.oid = rel.relnamespace
    WHERE n.nspname = 'public'
"""
# Functions of our own; those belonging to an extension (e.g. unaccent) may outlive a downgrade.
FUNCTIONS_SQL = (
    "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
    "WHERE n.nspname = 'public' AND NOT EXISTS (SELECT 1 FROM pg_depend d "
    "WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')"
)
TEXT_SEARCH_CONFIGS_SQL = (
    "SELECT c.cfgname FROM pg_ts_config c JOIN pg_namespace n ON n.oid = c.cfgnamespace "
    "WHERE n.nspname = 'public'"
)
INDEXES_SQL = "SELECT indexname, tablename FROM pg_indexes WHERE schemaname = 'public'"


def upgrade(url: str, revision: str = "head") -> None:
    run_alembic(lambda: command.upgrade(alembic_config(url), revision))


def downgrade(url: str, revision: str = "base") -> None:
    run_alembic(lambda: command.downgrade(alembic_config(url), revision))


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    name = f"taskapi_migr_{uuid.uuid4().hex[:12]}"
    await admin_execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url(name)
    finally:
        await admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def scalars(engine: AsyncEngine, sql: str) -> set[Any]:
    async with engine.connect() as conn:
        return set((await conn.execute(text(sql))).scalars())


@pytest.fixture(scope="module")
async def migrated_url() -> AsyncIterator[str]:
    """One fresh database migrated from empty to head, shared by the read-only checks."""
    async with fresh_database() as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="module")
async def migrated_engine(migrated_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(migrated_url, poolclass=NullPool)
    yield engine
    await engine.dispose()


@pytest.fixture
async def rollback_conn(migrated_engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    async with migrated_engine.connect() as conn:
        transaction = await conn.begin()
        try:
            yield conn
        finally:
            await transaction.rollback()


def _schema_diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, Base.metadata))


# --- upgrade from empty ---------------------------------------------------------------------------


async def test_upgrade_head_from_empty_creates_the_schema(migrated_engine: AsyncEngine) -> None:
    assert await scalars(migrated_engine, TABLES_SQL) >= EXPECTED_TABLES | {"alembic_version"}
    assert await scalars(migrated_engine, ENUMS_SQL) >= EXPECTED_ENUMS
    versions = await scalars(migrated_engine, "SELECT version_num FROM alembic_version")
    assert len(versions) == 1


async def test_models_and_migrated_schema_agree(migrated_engine: AsyncEngine) -> None:
    assert models.User.__table__ is Base.metadata.tables["users"]
    assert set(Base.metadata.tables) >= EXPECTED_TABLES
    async with migrated_engine.connect() as conn:
        diff = await conn.run_sync(_schema_diff)
    assert diff == [], f"models and migrations disagree; add a migration: {diff}"


async def test_schema_diff_would_notice_a_missing_migration() -> None:
    """The comparison above is meaningful: on an empty database every table is reported."""
    async with fresh_database() as url:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                diff = await conn.run_sync(_schema_diff)
        finally:
            await engine.dispose()
    added = {entry[1].name for entry in diff if entry[0] == "add_table"}
    assert added >= EXPECTED_TABLES


# --- constraints ----------------------------------------------------------------------------------


async def test_constraint_naming_convention_is_applied(migrated_engine: AsyncEngine) -> None:
    async with migrated_engine.connect() as conn:
        rows = (await conn.execute(text(CONSTRAINTS_SQL))).all()
        indexes = (await conn.execute(text(INDEXES_SQL))).all()
    names = {row.conname for row in rows}
    assert {"pk_users", "pk_tasks", "pk_refresh_tokens"} <= names
    assert {
        "fk_tasks_owner_id_users",
        "fk_tasks_assignee_id_users",
        "fk_refresh_tokens_user_id_users",
    } <= names
    prefixes = {"p": "pk_", "f": "fk_", "u": "uq_", "c": "ck_"}
    for row in rows:
        if row.table_name == "alembic_version":
            continue
        prefix = prefixes[row.contype]
        if row.contype == "p":
            assert row.conname == f"pk_{row.table_name}"
        else:
            assert row.conname.startswith(f"{prefix}{row.table_name}_"), row.conname
    for index in indexes:
        if index.tablename == "alembic_version":
            continue
        assert index.indexname.startswith(("pk_", "uq_", "ix_")), index.indexname


async def test_task_foreign_keys_cascade_and_set_null(migrated_engine: AsyncEngine) -> None:
    async with migrated_engine.connect() as conn:
        rows = (await conn.execute(text(CONSTRAINTS_SQL))).all()
    on_delete = {row.conname: row.confdeltype for row in rows if row.contype == "f"}
    assert on_delete["fk_tasks_owner_id_users"] == "c"  # CASCADE
    assert on_delete["fk_tasks_assignee_id_users"] == "n"  # SET NULL
    assert on_delete["fk_refresh_tokens_user_id_users"] == "c"


async def _insert_user(conn: AsyncConnection, username: str, email: str) -> int:
    result = await conn.execute(
        text(
            "INSERT INTO users (username, email, password_hash) "
            "VALUES (:username, :email, 'not-a-real-hash') RETURNING id"
        ),
        {"username": username, "email": email},
    )
    return int(result.scalar_one())


async def test_deleting_a_user_removes_owned_tasks_and_unassigns_others(
    rollback_conn: AsyncConnection,
) -> None:
    conn = rollback_conn
    owner = await _insert_user(conn, "owner_x", "owner_x@example.com")
    helper = await _insert_user(conn, "helper_x", "helper_x@example.com")
    insert_task = text(
        "INSERT INTO tasks (owner_id, assignee_id, title) VALUES (:owner, :assignee, :title) "
        "RETURNING id"
    )
    owned = (
        await conn.execute(insert_task, {"owner": helper, "assignee": None, "title": "mine"})
    ).scalar_one()
    assigned = (
        await conn.execute(insert_task, {"owner": owner, "assignee": helper, "title": "theirs"})
    ).scalar_one()

    await conn.execute(text("DELETE FROM users WHERE id = :id"), {"id": helper})

    rows = (await conn.execute(text("SELECT id, assignee_id FROM tasks"))).all()
    remaining = {row.id: row.assignee_id for row in rows}
    assert owned not in remaining
    assert remaining[assigned] is None


async def test_usernames_and_emails_are_unique_regardless_of_case(
    rollback_conn: AsyncConnection,
) -> None:
    conn = rollback_conn
    await _insert_user(conn, "Alice", "alice@example.com")

    savepoint = await conn.begin_nested()
    with pytest.raises(IntegrityError, match="uq_users_username_lower"):
        await _insert_user(conn, "alice", "other@example.com")
    await savepoint.rollback()

    savepoint = await conn.begin_nested()
    with pytest.raises(IntegrityError, match="uq_users_email_lower"):
        await _insert_user(conn, "alice2", "ALICE@Example.COM")
    await savepoint.rollback()

    # A different name is still fine in the same transaction.
    assert await _insert_user(conn, "alicia", "alicia@example.com") > 0


async def test_task_check_constraints_hold_at_the_database(
    rollback_conn: AsyncConnection,
) -> None:
    conn = rollback_conn
    owner = await _insert_user(conn, "checker", "checker@example.com")
    bad_rows = [
        ("", []),  # empty title
        ("ok", [f"t{i}" for i in range(21)]),  # 21 tags
    ]
    for title, tags in bad_rows:
        savepoint = await conn.begin_nested()
        with pytest.raises(IntegrityError, match="ck_tasks_"):
            await conn.execute(
                text("INSERT INTO tasks (owner_id, title, tags) VALUES (:o, :t, :g)"),
                {"o": owner, "t": title, "g": tags},
            )
        await savepoint.rollback()


# --- downgrade and upgrade again ------------------------------------------------------------------


async def test_downgrade_base_removes_everything_and_upgrade_works_again() -> None:
    async with fresh_database() as url:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            upgrade(url)
            assert await scalars(engine, TABLES_SQL) >= EXPECTED_TABLES

            downgrade(url)
            assert await scalars(engine, TABLES_SQL) <= {"alembic_version"}
            assert await scalars(engine, ENUMS_SQL) == set()
            assert await scalars(engine, SEQUENCES_SQL) == set()
            assert await scalars(engine, FUNCTIONS_SQL) == set()
            assert await scalars(engine, TEXT_SEARCH_CONFIGS_SQL) == set()
            assert await scalars(engine, "SELECT version_num FROM alembic_version") == set()

            upgrade(url)
            assert await scalars(engine, TABLES_SQL) >= EXPECTED_TABLES
            assert await scalars(engine, ENUMS_SQL) >= EXPECTED_ENUMS
            async with engine.connect() as conn:
                assert await conn.run_sync(_schema_diff) == []
        finally:
            await engine.dispose()
