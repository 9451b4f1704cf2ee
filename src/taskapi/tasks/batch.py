"""`POST /tasks/batch`: operations applied in order, each by the single-task rules of
taskapi.tasks.service and taskapi.tasks.trash (visibility, project roles, workflow, If-Match,
notifications, events), all in the request's one transaction.

- Every operation is checked before it writes anything (the services' `check_*`, then their
  `apply_*`, which refuse nothing), so a refused one leaves nothing behind: the non-atomic mode
  reports it and goes on, with no savepoint to set and release per operation.
- Atomic: the first failure raises 409 `batch_failed`, and the request's transaction is rolled
  back: no task, no event, no notification, no stats change.

Consecutive creates are inserted together when the run of them ends (one INSERT for the tasks),
and every operation's events are written together at the end (`events.deferring`: one INSERT
and one notification): 500 creates cost a few statements, not 500 requests' worth. Nothing
later in the batch can see the difference, since an operation can only name a created task
after the run that created it. The tasks the batch names are read and locked together at the
start; each is read again only if an earlier operation of the batch changed it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from functools import partial

from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.events import service as events
from taskapi.kit.batch_errors import TempIdNotFound, batch_failed, problem_of
from taskapi.kit.errors import AppError
from taskapi.models import Task, User
from taskapi.tasks import access, repository, service, trash
from taskapi.tasks.batch_schemas import (
    BatchIn,
    BatchItemResult,
    BatchResult,
    CreateOp,
    DeleteOp,
    TransitionOp,
    UpdateOp,
)
from taskapi.tasks.conditional import IfMatch
from taskapi.tasks.overdue import today
from taskapi.tasks.schemas import TaskOut

ChangeOp = UpdateOp | TransitionOp | DeleteOp


@dataclass
class _Batch:
    session: AsyncSession
    user: User
    atomic: bool
    today: date
    # The named tasks as the batch's lock read them, each until an operation takes it.
    locked: dict[int, Task]
    results: dict[int, BatchItemResult] = field(default_factory=dict)
    temp_ids: dict[str, int] = field(default_factory=dict)
    # The outcome of `service.check_new_task` per (project_id, assignee_id): None when allowed.
    checked: dict[tuple[int | None, int | None], AppError | None] = field(default_factory=dict)
    # Creates checked and waiting to be inserted: (index, temp_id, task).
    pending: list[tuple[int, str | None, Task]] = field(default_factory=list)

    def fail(self, index: int, task_id: int | None, error: AppError) -> None:
        if self.atomic:
            raise batch_failed(index, error) from error
        result = BatchItemResult(index=index, success=False, error=problem_of(error))
        if task_id is not None:
            result["task_id"] = task_id
        self.results[index] = result

    def succeed(self, index: int, task_id: int, task: Task | None) -> None:
        result = BatchItemResult(index=index, success=True, task_id=task_id)
        if task is not None:
            result["task"] = TaskOut.of(task, self.today)
        self.results[index] = result

    async def create(self, index: int, op: CreateOp) -> None:
        # What `check_new_task` decides depends on the project and the assignee alone, and
        # holds for the whole batch (the project stays held from the first check on): asked
        # once per pair, so 500 creates into one project cost its few statements once.
        key = (op.task.project_id, op.task.assignee_id)
        if key not in self.checked:
            try:
                await service.check_new_task(self.session, self.user, op.task)
                self.checked[key] = None
            except AppError as refused:
                self.checked[key] = refused
        if (outcome := self.checked[key]) is not None:
            self.fail(index, None, outcome)
            return
        self.pending.append((index, op.temp_id, service.new_task(self.user, op.task)))

    async def insert_pending(self) -> None:
        if not self.pending:
            return
        await service.add_tasks(self.session, self.user, [task for _, _, task in self.pending])
        for index, temp_id, task in self.pending:
            if temp_id is not None:
                self.temp_ids[temp_id] = task.id
            self.succeed(index, task.id, task)
        self.pending.clear()

    async def change(self, index: int, op: ChangeOp) -> None:
        task_id = op.task_id
        if task_id is None and op.temp_id is not None:
            task_id = self.temp_ids.get(op.temp_id)
            if task_id is None:
                self.fail(index, None, TempIdNotFound())
                return
        assert task_id is not None  # the schema requires one of the two
        try:
            write = await self._check(op, task_id)
        except AppError as error:
            self.fail(index, task_id, error)
            return
        self.succeed(index, task_id, await write())

    async def _check(self, op: ChangeOp, task_id: int) -> Callable[[], Awaitable[Task | None]]:
        """One operation's checks, exactly as its single-task endpoint makes them; then what it
        writes, to run once they have passed."""
        session, user = self.session, self.user
        # Locked since the start and untouched by the batch so far: as a read now would find it.
        task = self.locked.pop(task_id, None) or await service.visible_for_update(
            session, user, task_id
        )
        if_match = IfMatch(op.if_match)
        if isinstance(op, DeleteOp):
            await trash.check_trash(session, user, task, if_match)
            return partial(trash.apply_trash, session, user, task)
        if isinstance(op, UpdateOp):
            checked = await service.check_change(
                session, user, task, op.changes.changes(), if_match
            )
        else:
            checked = await service.check_transition_to(session, user, task, op.status, if_match)
        return partial(service.apply_change, session, user, checked)


def _target_project(op: CreateOp | ChangeOp) -> int | None:
    """The project an operation puts a task into, if any."""
    if isinstance(op, CreateOp):
        return op.task.project_id
    if isinstance(op, UpdateOp):
        return op.changes.changes().get("project_id")
    return None


async def apply_batch(session: AsyncSession, user: User, batch: BatchIn) -> BatchResult:
    # Locks in the order every writer takes them (taskapi.tasks.access), before anything
    # changes: the projects tasks go into, then every existing task the batch names, in id
    # order (concurrent batches on overlapping tasks then wait for each other instead of
    # deadlocking).
    for project_id in sorted({p for p in map(_target_project, batch.operations) if p}):
        await access.hold_target(session, project_id)
    named = {
        op.task_id
        for op in batch.operations
        if not isinstance(op, CreateOp) and op.task_id is not None
    }
    locked = await repository.get_visible_many(session, user.id, sorted(named)) if named else []
    run = _Batch(session, user, batch.atomic, today(), {task.id: task for task in locked})
    async with events.deferring(session):  # one INSERT of every change's event, at the end
        for index, op in enumerate(batch.operations):
            if isinstance(op, CreateOp):
                await run.create(index, op)
            else:
                await run.insert_pending()  # a create's id is known once it is inserted
                await run.change(index, op)
        await run.insert_pending()
    return BatchResult(
        results=[run.results[index] for index in range(len(batch.operations))],
        temp_ids=run.temp_ids,
    )
