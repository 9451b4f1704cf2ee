from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic.config import JsonDict
from pydantic.json_schema import SkipJsonSchema

from taskapi.auth.schemas import Email, FullName, Password
from taskapi.kit.openapi import NUL
from taskapi.kit.strict_query import StrictQuery
from taskapi.kit.validation import reject_nul


class UserSummary(BaseModel):
    """What other users may learn about someone: enough to pick an assignee."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str


class UserSearchParams(StrictQuery):
    search: Annotated[
        str,
        Field(
            min_length=1,
            max_length=50,
            description="Username prefix",
            json_schema_extra={"pattern": f"^[^{NUL}]*$"},
        ),
        AfterValidator(reject_nul),
    ]
    limit: Annotated[int, Field(ge=1, le=100)] = 20
    offset: Annotated[int, Field(ge=0, le=10_000_000)] = 0


class UserSearchPage(BaseModel):
    items: list[UserSummary]
    total: int
    limit: int
    offset: int
    next_cursor: str | None = None


# A new password needs the current one (a non-empty string), as the validator below says.
_PASSWORD_NEEDS_CURRENT: JsonDict = {
    "if": {"properties": {"password": {"type": "string"}}, "required": ["password"]},
    "then": {
        "properties": {"current_password": {"type": "string", "minLength": 1}},
        "required": ["current_password"],
    },
}


class UserUpdate(BaseModel):
    """PATCH /users/me. Fields left out are unchanged; unknown fields are ignored."""

    model_config = ConfigDict(json_schema_extra=_PASSWORD_NEEDS_CURRENT)

    full_name: FullName | None = None
    # Cannot be cleared: `None` is only the "not sent" default (refused below), not in the schema.
    email: Email | SkipJsonSchema[None] = None
    password: Password | None = None
    current_password: Annotated[str, Field(max_length=1024)] | None = None

    @model_validator(mode="after")
    def _password_change_needs_current(self) -> UserUpdate:
        if self.password is not None and not self.current_password:
            raise ValueError("current_password is required to change the password")
        if "email" in self.model_fields_set and self.email is None:
            raise ValueError("email cannot be null")
        return self
