"""The problems of personal access tokens (API.md part 2, "Personal access tokens"); formatted
by the one handler in taskapi.kit.errors like every other."""

from __future__ import annotations

from typing import Any

from taskapi.kit.errors import Conflict, Forbidden, NotFound


class InsufficientScope(Forbidden):
    """RFC 6750 §3.1: the token is valid but does not carry the scope the request needs."""

    code, title = "insufficient_scope", "Insufficient scope"

    def __init__(self, needed: str | None, **kwargs: Any) -> None:
        if needed is None:
            detail = (
                "Only a login may do this (managing tokens, changing the password or email, "
                "deleting the account): a personal access token never can."
            )
            challenge = (
                'Bearer realm="taskapi", error="insufficient_scope", '
                'error_description="a login is required"'
            )
        else:
            detail = f"This personal access token lacks the scope '{needed}'."
            challenge = f'Bearer realm="taskapi", error="insufficient_scope", scope="{needed}"'
        super().__init__(detail, extra={"required_scope": needed}, **kwargs)
        self.headers.setdefault("WWW-Authenticate", challenge)


class TokenNotFound(NotFound):
    code, title = "token_not_found", "Token not found"
    default_detail = "No personal access token with this id exists or it is not yours."


class TokenLimitReached(Conflict):
    code, title = "token_limit_reached", "Token limit reached"
    default_detail = "You have as many personal access tokens as allowed; revoke one first."
