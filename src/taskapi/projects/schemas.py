"""The bodies and query parameters of /projects, and what it answers (API.md part 2, "Projects")."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Final

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from taskapi.kit.openapi import NUL, STRIPPED_BY_PYDANTIC, trimmed_text_pattern
from taskapi.kit.pagination import PageParams
from taskapi.kit.validation import reject_nul
from taskapi.models import Project, ProjectRole
from taskapi.tasks.schemas import Description, JsonBool

MAX_NAME_LENGTH: Final = 100

NAME_PATTERN: Final = trimmed_text_pattern(
    min_length=1, max_length=MAX_NAME_LENGTH, forbidden=NUL, trimmed=STRIPPED_BY_PYDANTIC
)
ProjectName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NAME_LENGTH),
    AfterValidator(reject_nul),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": NAME_PATTERN,
            "description": f"1-{MAX_NAME_LENGTH} characters once surrounding whitespace is "
            "trimmed; no NUL. Unique among its owner's projects, ignoring case",
        }
    ),
]


class ProjectCreate(BaseModel):
    """A new project; you become its first admin. Unknown fields are ignored."""

    name: ProjectName
    description: Description | None = None


class ProjectPatch(BaseModel):
    """Only the fields sent change; `null` clears `description`."""

    name: ProjectName | SkipJsonSchema[None] = None
    description: Description | None = None
    archived: JsonBool | SkipJsonSchema[None] = Field(
        default=None, description="An archived project's tasks are read-only"
    )

    @model_validator(mode="after")
    def _check(self) -> ProjectPatch:
        for name in ("name", "archived"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"`{name}` cannot be null")
        return self

    def changes(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.model_fields_set}


class ProjectOut(BaseModel):
    id: int
    name: str
    description: str | None
    owner_id: int | None = Field(description="Its creator; null once their account is deleted")
    role: ProjectRole = Field(description="Your role in the project")
    member_count: int
    archived: bool
    created_at: datetime
    updated_at: datetime
    version: int

    @classmethod
    def of(cls, project: Project, role: ProjectRole) -> ProjectOut:
        return cls(
            id=project.id,
            name=project.name,
            description=project.description,
            owner_id=project.owner_id,
            role=role,
            member_count=project.member_count,
            archived=project.archived,
            created_at=project.created_at,
            updated_at=project.updated_at,
            version=project.version,
        )


class ProjectPage(BaseModel):
    items: list[ProjectOut]
    total: int
    limit: int
    offset: int | None = Field(description="null when the page follows a cursor")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")


class ProjectListParams(PageParams):
    archived: bool | None = Field(
        default=None, description="true: only archived projects; false: only active ones"
    )


class MemberIn(BaseModel):
    role: ProjectRole


class MemberOut(BaseModel):
    user_id: int
    username: str
    role: ProjectRole
    added_at: datetime
