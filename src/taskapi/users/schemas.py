from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

import email_validator
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    WithJsonSchema,
    model_validator,
)
from pydantic.config import JsonDict
from pydantic.json_schema import SkipJsonSchema

from taskapi.kit.openapi import NUL, STRIPPED_BY_PYDANTIC, trimmed_text_pattern
from taskapi.tasks.schemas import reject_nul

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
