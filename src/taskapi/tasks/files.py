"""The files of tasks being deleted.

A task's files belong to the attachments domain, which builds on tasks (a file is reached only
through a task its caller can see), so tasks cannot call it. Yet the stored objects of those
files must be scheduled for deletion in the very transaction that deletes the tasks, while the
attachment rows naming them still exist (they go with their task, ON DELETE CASCADE). So whoever
deletes tasks calls `release_files` first, and the composition root (`taskapi.wiring`) connects
the function that does it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy import ColumnElement
from sqlalchemy.ext.asyncio import AsyncSession

# (session, condition on Task choosing the tasks about to be deleted)
ReleaseFiles = Callable[[AsyncSession, ColumnElement[bool]], Awaitable[None]]

_connected: list[ReleaseFiles] = []


def connect(release: ReleaseFiles) -> None:
    """Set what `release_files` runs; connecting again replaces it."""
    _connected[:] = [release]


async def release_files(session: AsyncSession, which: ColumnElement[bool]) -> None:
    """In the deleting transaction, before the delete: let go of the files of the tasks `which`
    selects. Refuses to run unconnected rather than silently leave their objects behind."""
    if not _connected:
        raise RuntimeError("taskapi.tasks.files is not connected (taskapi.wiring does that)")
    await _connected[0](session, which)
