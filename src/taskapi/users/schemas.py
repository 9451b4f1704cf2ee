from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    model_validator,
)

from taskapi.kit.validation import reject_nul

Username = Annotated[
    str, StringConstraints(min_length=3, max_length=50, pattern=r"^[A-Za-z0-9_.\-]+$")
]
Password = Annotated[str, Field(min_length=8, max_length=128)]
# PostgreSQL text cannot hold U+0000: refused here (422) instead of failing the INSERT (500).
FullName = Annotated[
    str, StringConstraints(strip_whitespace=True, max_length=100), AfterValidator(reject_nul)
]


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    email: str
    full_name: str | None
    created_at: datetime


class UserSummary(BaseModel):
    """What other users may learn about someone: enough to pick an assignee."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str


class UserSearchPage(BaseModel):
    items: list[UserSummary]
    total: int
    limit: int
    offset: int
    next_cursor: str | None = None


class UserUpdate(BaseModel):
    """PATCH /users/me. Fields left out are unchanged; unknown fields are ignored."""

    full_name: FullName | None = None
    email: EmailStr | None = None
    password: Password | None = None
    current_password: Annotated[str, Field(max_length=1024)] | None = None

    @model_validator(mode="after")
    def _password_change_needs_current(self) -> UserUpdate:
        if self.password is not None and not self.current_password:
            raise ValueError("current_password is required to change the password")
        if "email" in self.model_fields_set and self.email is None:
            raise ValueError("email cannot be null")
        return self
