"""What the trash endpoints take and give."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, model_validator

from taskapi.tasks.list_params import MAX_LIMIT, MAX_OFFSET
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


class TrashListParams(BaseModel):
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT)] = 20
    offset: Annotated[
        int | None,
        Field(ge=0, le=MAX_OFFSET, description="Rows to skip; not together with `cursor`"),
    ] = None
    cursor: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=2048,
            description="The `next_cursor` of the previous page (keyset); not together with "
            "`offset`",
        ),
    ] = None

    @model_validator(mode="after")
    def _check(self) -> TrashListParams:
        if self.offset is not None and self.cursor is not None:
            raise ValueError("use either offset or cursor, not both")
        return self
