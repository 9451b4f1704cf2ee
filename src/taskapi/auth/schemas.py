from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from taskapi.users.schemas import Email, FullName, Password, Username


class RegisterIn(BaseModel):
    username: Username
    email: Email
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
