"""What an account is made of and shows: the registration rules (which a profile change reuses)
and `UserOut`, the account as its owner sees it. They live here, below `users`, because
registering and `/auth/me` need them and `users` builds on `auth`."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Final, Literal

import email_validator
from fastapi.openapi.models import Example
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.config import JsonDict
from pydantic.json_schema import SkipJsonSchema

from taskapi.auth.scopes import Scope
from taskapi.kit.openapi import NUL, STRIPPED_BY_PYDANTIC, trimmed_text_pattern
from taskapi.kit.validation import reject_nul

Username = Annotated[
    str, StringConstraints(min_length=3, max_length=50, pattern=r"^[A-Za-z0-9_.\-]+$")
]
Password = Annotated[str, Field(min_length=8, max_length=128)]
# PostgreSQL text cannot hold U+0000: refused here (422) instead of failing the INSERT (500).
FullName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, max_length=100),
    AfterValidator(reject_nul),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": trimmed_text_pattern(
                min_length=0, max_length=100, forbidden=NUL, trimmed=STRIPPED_BY_PYDANTIC
            ),
            "description": "At most 100 characters once surrounding whitespace is trimmed; no NUL",
        }
    ),
]


def _any_case(word: str) -> str:
    return "".join(f"[{ch}{ch.upper()}]" if ch.isalpha() else re.escape(ch) for ch in word)


# What email-validator (behind EmailStr) takes, which the `email` format alone does not say: at
# most 254 characters, a domain of dot-separated labels (no leading or
# trailing hyphen, none longer than 63) whose last label ends with a letter, and no special-use
# name (`user@host.test`; from the validator's own list). It also takes internationalised
# addresses, which this pattern, kept to ASCII, does not promise.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"(?![A-Za-z0-9]{2}--)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_LAST_LABEL = r"(?:[A-Za-z0-9][A-Za-z0-9-]{0,61})?[A-Za-z]"
_SPECIAL_USE = "|".join(_any_case(name) for name in email_validator.SPECIAL_USE_DOMAIN_NAMES)
EMAIL_PATTERN = (
    rf"^(?=.{{1,254}}$){_ATOM}(?:\.{_ATOM})*"
    rf"@(?!(?:.*\.)?(?:{_SPECIAL_USE})$)(?:{_LABEL}\.)+{_LAST_LABEL}$"
)
Email = Annotated[EmailStr, Field(json_schema_extra={"pattern": EMAIL_PATTERN})]


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    email: str
    full_name: str | None
    created_at: datetime


class RegisterIn(BaseModel):
    username: Username
    email: Email
    password: Password
    full_name: FullName | None = None


# Not held to the registration rules: a wrong password is a 401, not a validation error.
LoginPassword = Annotated[str, Field(min_length=1, max_length=1024)]


# What the validator below says, in the schema too (a generated client still gets one model):
# exactly one of `username` and `email` besides `password`, nothing else.
_ONE_LOGIN_NAME: JsonDict = {
    "minProperties": 2,
    "not": {"properties": {"username": {}, "email": {}}, "required": ["username", "email"]},
}


class LoginIn(BaseModel):
    """`{"username", "password"}`, the username possibly being the email, or `{"email",
    "password"}`: exactly one of `username` and `email`. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_ONE_LOGIN_NAME)

    # `None` is only the "not sent" default (refused when sent), not in the schema.
    username: (
        Annotated[str, Field(min_length=1, max_length=320, description="Username or email")]
        | SkipJsonSchema[None]
    ) = None
    email: (
        Annotated[
            str, Field(min_length=3, max_length=320, pattern="@", description="The email address")
        ]
        | SkipJsonSchema[None]
    ) = None
    password: LoginPassword

    @model_validator(mode="after")
    def _exactly_one_name(self) -> LoginIn:
        sent = [name for name in ("username", "email") if name in self.model_fields_set]
        if len(sent) != 1:
            raise ValueError("send exactly one of username and email (not both, not neither)")
        if not self.login_name:
            raise ValueError(f"{sent[0]} cannot be null")
        return self

    @property
    def login_name(self) -> str:
        """What names the account: the username (or email) sent, or the email."""
        return self.username or self.email or ""


_PASSWORD_EXAMPLE = "correct horse battery"
LOGIN_EXAMPLES: Final[dict[str, Example]] = {
    "username": {
        "summary": "By username (or email, in `username`)",
        "value": {"username": "alice", "password": _PASSWORD_EXAMPLE},
    },
    "email": {
        "summary": "By email",
        "value": {"email": "alice@example.com", "password": _PASSWORD_EXAMPLE},
    },
}


class RefreshIn(BaseModel):
    refresh_token: Annotated[str, Field(min_length=1, max_length=4096)]


class TokenPair(BaseModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires")


MAX_TOKENS_PER_USER = 50
TokenName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=100),
    AfterValidator(reject_nul),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": trimmed_text_pattern(
                min_length=1, max_length=100, forbidden=NUL, trimmed=STRIPPED_BY_PYDANTIC
            ),
            "description": "1-100 characters once surrounding whitespace is trimmed; no NUL",
        }
    ),
]


class PersonalTokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: TokenName = Field(description="What the token is for, e.g. `nightly import`")
    scopes: Annotated[
        list[Scope],
        Field(min_length=1, max_length=len(Scope), description="What the token may do"),
    ]
    expires_in_days: Annotated[
        int | None,
        Field(ge=1, le=366, description="Days until it stops working; omitted or null: never"),
    ] = None

    @field_validator("scopes")
    @classmethod
    def _unique(cls, scopes: list[Scope]) -> list[Scope]:
        return sorted(set(scopes))


class PersonalTokenOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    scopes: list[Scope]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = Field(
        description="When it was last used (kept to within a minute, not per request)"
    )


class PersonalTokenCreated(PersonalTokenOut):
    token: str = Field(description="The token (`tap_...`): shown this once, never again")


class PersonalTokenList(BaseModel):
    items: list[PersonalTokenOut]
    total: int
