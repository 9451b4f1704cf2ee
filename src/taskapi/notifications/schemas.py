from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from taskapi.kit.strict_query import StrictQuery
from taskapi.models import NotificationKind


class NotificationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: NotificationKind
    task_id: int | None
    project_id: int | None = Field(description="The project a `project_shared` is about")
    message: str
    read: bool
    created_at: datetime


class NotificationPage(BaseModel):
    items: list[NotificationOut]
    total: int
    limit: int
    offset: int | None
    next_cursor: str | None


class NotificationListParams(StrictQuery):
    unread: bool | None = Field(default=None, description="true: only unread; false: only read")
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    offset: Annotated[int, Field(ge=0, le=10_000_000)] = 0
