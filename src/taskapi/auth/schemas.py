"""What an account is made of and shows: the registration rules (which a profile change reuses)
and `UserOut`, the account as its owner sees it. They live here, below `users`, because
registering and `/auth/me` need them and `users` builds on `auth`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, StringConstraints

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


class RegisterIn(BaseModel):
    username: Username
    email: EmailStr
    password: Password
    full_name: FullName | None = None


class LoginIn(BaseModel):
    username: Annotated[str, Field(min_length=1, max_length=320, description="Username or email")]
    # Not held to the registration rules: a wrong password is a 401, not a validation error.
    password: Annotated[str, Field(min_length=1, max_length=1024)]


class RefreshIn(BaseModel):
    refresh_token: Annotated[str, Field(min_length=1, max_length=4096)]


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires")
