"""The event log: `record` (what every write calls, in its own transaction), the feed and a
task's activity.

Services call `record` / `record_many` after their change is flushed, with the task as it now
is; one INSERT statement per call writes the events and their recipients (fan-out on write,
resolved inside PostgreSQL: a project of 1,000 members sends no member list through Python).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

from pydantic_core import to_jsonable_python
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.events import repository
from taskapi.events.schemas import (
    ActivityPage,
    ActivityParams,
    Audience,
    EventOut,
    EventPage,
    EventSpec,
    FeedParams,
)
from taskapi.kit.event_errors import CursorExpired
from taskapi.kit.pagination import CursorCodec, InvalidCursor

FEED_FINGERPRINT = "events.v1"


def json_value(value: Any) -> Any:
    """A column value as the API writes it in JSON (enums by value, dates as pydantic writes
    them: `...Z`)."""
    return to_jsonable_python(value)


def changes_of(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list[Any]]:
    """`{"field": [old, new]}` for every field of `new` whose value differs from `old`'s."""
    return {
        name: [json_value(old.get(name)), json_value(value)]
        for name, value in new.items()
        if old.get(name) != value
    }


async def record(
    session: AsyncSession,
    *,
    type: str,
    actor_id: int | None,
    audience: Audience,
    task: Mapping[str, Any] | None = None,
    task_id: int | None = None,
    project_id: int | None = None,
    changes: dict[str, list[Any]] | None = None,
    task_version: int | None = None,
) -> None:
    """Record one event in the caller's transaction (see `record_many`). An event about a task
    carries its version after the change (from `task`, or `task_version` when it has no `task`,
    as `task.purged`): the feed orders a task's events by it."""
    await record_many(
        session,
        [
            spec(
                type,
                actor_id,
                audience,
                task=task,
                task_id=task_id,
                project_id=project_id,
                changes=changes,
                task_version=task_version,
            )
        ],
    )


def spec(
    type: str,
    actor_id: int | None,
    audience: Audience,
    *,
    task: Mapping[str, Any] | None = None,
    task_id: int | None = None,
    project_id: int | None = None,
    changes: dict[str, list[Any]] | None = None,
    task_version: int | None = None,
) -> EventSpec:
    if task is not None:
        task_id = task["id"] if task_id is None else task_id
        if project_id is None and "project_id" in task:
            project_id = task["project_id"]
    return EventSpec(
        type=type,
        actor_id=actor_id,
        audience=audience,
        task_id=task_id,
        project_id=project_id,
        changes=changes or None,
        task=dict(task) if task is not None else None,
        task_version=task["version"] if task is not None else task_version,
    )


async def record_many(session: AsyncSession, specs: Sequence[EventSpec]) -> None:
    """Record events in the caller's transaction, in order: one statement whatever their
    number and audience (or none yet, while the session defers them: `deferring`)."""
    deferred: list[EventSpec] | None = session.info.get(_DEFERRED)
    if deferred is not None:
        deferred.extend(specs)
    elif specs:
        await repository.insert(session, specs)


_DEFERRED = "taskapi.events_deferred"


@asynccontextmanager
async def deferring(session: AsyncSession) -> AsyncIterator[None]:
    """Events recorded inside the block are kept in memory and written, in the order recorded,
    in one statement (and one wake-up notification) as it ends: a batch of 500 changes costs
    one INSERT of their events instead of 500 INSERTs and 500 notifications. They are still
    written in the changes' own transaction, before it commits. Nothing may read the event log
    inside the block, and nothing inside it may be rolled back alone (a savepoint would leave
    its events recorded)."""
    if _DEFERRED in session.info:
        raise RuntimeError("events are already deferred in this session")
    session.info[_DEFERRED] = []
    try:
        yield
    except BaseException:
        session.info.pop(_DEFERRED, None)
        raise
    specs: list[EventSpec] = session.info.pop(_DEFERRED)
    if specs:
        await repository.insert(session, specs)


async def record_project_access_lost(
    session: AsyncSession, actor_id: int | None, project_id: int, user_id: int
) -> None:
    """`user_id` leaves `project_id`: a `task.access_lost` for each of its tasks, theirs alone
    (call it while they are still a member, before anything else changes the tasks)."""
    await repository.insert_project_access_lost(session, actor_id, project_id, user_id)


# --- reading -------------------------------------------------------------------------------------


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise InvalidCursor()
    return value


def _feed_cursor(cursors: CursorCodec, xid: int, event_id: int, issued: datetime) -> str:
    return cursors.encode([xid, event_id, int(issued.timestamp())], FEED_FINGERPRINT)


def _out(row: Mapping[str, Any]) -> EventOut:
    return EventOut.model_validate({k: v for k, v in row.items() if k != "xid"})


async def feed(
    session: AsyncSession,
    user_id: int,
    params: FeedParams,
    cursors: CursorCodec,
    retention_days: int,
) -> EventPage:
    """GET /events: the reader's events after `since` in (xid, id) order, below the horizon."""
    page, _ = await feed_positions(session, user_id, params, cursors, retention_days)
    return page


async def feed_positions(
    session: AsyncSession,
    user_id: int,
    params: FeedParams,
    cursors: CursorCodec,
    retention_days: int,
) -> tuple[EventPage, list[str]]:
    """`feed`, with the cursor right after each item (GET /events/stream's `id:` lines: a
    stream cut between two events resumes from the last one received)."""
    horizon, now = await repository.horizon(session)
    if params.since is None:
        return EventPage(
            items=[], next_cursor=_feed_cursor(cursors, horizon, 0, now), has_more=False
        ), []
    values = cursors.decode(params.since, FEED_FINGERPRINT)
    if len(values) != 3:
        raise InvalidCursor()
    after = (_int(values[0]), _int(values[1]))
    issued = _int(values[2])
    if issued < (now - timedelta(days=retention_days)).timestamp():
        raise CursorExpired()
    rows = await repository.feed_page(session, user_id, after, horizon, params.limit + 1)
    has_more = len(rows) > params.limit
    page = rows[: params.limit]
    if has_more:
        last = page[-1]
        # Its age is the age of the events it points at (410 once they may be purged).
        next_cursor = _feed_cursor(cursors, int(last["xid"]), last["id"], last["occurred_at"])
    else:
        # Everything below the horizon was read: the next page starts there.
        next_cursor = _feed_cursor(cursors, *max(after, (horizon, 0)), now)
    positions = [_feed_cursor(cursors, int(r["xid"]), r["id"], r["occurred_at"]) for r in page]
    page_out = EventPage(items=[_out(r) for r in page], next_cursor=next_cursor, has_more=has_more)
    return page_out, positions


async def activity(
    session: AsyncSession,
    user_id: int,
    task_id: int,
    params: ActivityParams,
    cursors: CursorCodec,
) -> ActivityPage:
    """The events of one task the reader got, newest first (the caller checked the task is
    visible to them)."""
    fingerprint = f"activity:{task_id}"
    before = repository.MAX_POSITION
    if params.cursor is not None:
        values = cursors.decode(params.cursor, fingerprint)
        if len(values) != 2:
            raise InvalidCursor()
        before = (_int(values[0]), _int(values[1]))
    rows = await repository.activity_page(session, user_id, task_id, before, params.limit + 1)
    page = rows[: params.limit]
    next_cursor = None
    if len(rows) > params.limit:
        next_cursor = cursors.encode([int(page[-1]["xid"]), page[-1]["id"]], fingerprint)
    return ActivityPage(items=[_out(r) for r in page], limit=params.limit, next_cursor=next_cursor)


async def purge(session: AsyncSession, older_than: datetime, batch: int) -> int:
    return await repository.purge_events(session, older_than, batch)


async def purge_orphan_recipients(session: AsyncSession) -> int:
    return await repository.purge_recipients(session)
