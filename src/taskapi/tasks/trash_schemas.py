"""What the trash endpoints take and give."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from taskapi.kit.pagination import PageParams
from taskapi.tasks.schemas import TaskOut


class TrashedTaskOut(TaskOut):
    deleted_at: datetime = Field(description="When it was moved to the trash")
    purge_at: datetime = Field(
        description="When it will be deleted for good (`TRASH_RETENTION_DAYS` after deletion)"
    )


class TrashPage(BaseModel):
    items: list[TrashedTaskOut]
    total: int
    limit: int
    offset: int | None
    next_cursor: str | None


class TrashListParams(PageParams):
    """The trash pages like the other lists; it has no filters."""
