"""Application errors and their RFC 9457 problem+json rendering.

Every error a client can see is an `AppError` subclass carrying its status and a stable `code`;
the handlers installed by `install_error_handlers` are the only place that formats them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any, ClassVar

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from taskapi.kit import strict_query
from taskapi.kit.db_errors import is_database_unavailable
from taskapi.kit.request_context import current_request_id
from taskapi.kit.routes import allowed_methods

logger = logging.getLogger("taskapi.errors")

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:taskapi:problem:"


class AppError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"
    title: ClassVar[str] = "Internal Server Error"
    default_detail: ClassVar[str] = "Something went wrong on our side."
    # When true the request's transaction is committed even though the request fails:
    # for errors that must leave a durable trace (e.g. revoking a login on token reuse).
    commit_transaction: ClassVar[bool] = False

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.detail = detail or self.default_detail
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})
        super().__init__(self.detail)


# 401
class Unauthorized(AppError):
    status, code, title = 401, "not_authenticated", "Not authenticated"
    default_detail = "Authentication is required: send 'Authorization: Bearer <access token>'."
    www_authenticate: ClassVar[str] = 'Bearer realm="taskapi"'

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.headers.setdefault("WWW-Authenticate", self.www_authenticate)


class InvalidToken(Unauthorized):
    code, title = "invalid_token", "Invalid token"
    default_detail = "The token is invalid or has been revoked."
    www_authenticate = 'Bearer realm="taskapi", error="invalid_token"'


class TokenExpired(InvalidToken):
    code, title = "token_expired", "Token expired"
    default_detail = "The token has expired."


class RefreshTokenReused(InvalidToken):
    default_detail = (
        "This refresh token was already used; the login it belongs to has been revoked."
    )
    commit_transaction = True


class InvalidCredentials(Unauthorized):
    code, title = "invalid_credentials", "Invalid credentials"
    default_detail = "Incorrect username or password."


# 403
class Forbidden(AppError):
    status, code, title = 403, "forbidden", "Forbidden"
    default_detail = "You are not allowed to do this."


class InvalidCurrentPassword(Forbidden):
    code, title = "invalid_current_password", "Invalid current password"
    default_detail = "current_password does not match your password."


# 404
class NotFound(AppError):
    status, code, title = 404, "not_found", "Not found"
    default_detail = "The requested resource does not exist."


class TaskNotFound(NotFound):
    code, title = "task_not_found", "Task not found"
    default_detail = "No task with this id exists or it is not visible to you."


class TagNotFound(NotFound):
    code, title = "tag_not_found", "Tag not found"
    default_detail = "The task does not carry this tag."


# 405
class MethodNotAllowed(AppError):  # raised with `Allow`: every method the path supports
    status, code, title = 405, "method_not_allowed", "Method Not Allowed"
    default_detail = "This method is not allowed on this resource."


# 409
class Conflict(AppError):
    status, code, title = 409, "conflict", "Conflict"
    default_detail = "The request conflicts with the current state of the resource."


class UsernameTaken(Conflict):
    code, title = "username_taken", "Username taken"
    default_detail = "This username is already registered."


class EmailTaken(Conflict):
    code, title = "email_taken", "Email taken"
    default_detail = "This email address is already registered."


class InvalidTransition(Conflict):
    code, title = "invalid_transition", "Invalid status transition"
    default_detail = "This status change is not allowed by the workflow."


# 412
class PreconditionFailed(AppError):
    status, code, title = 412, "precondition_failed", "Precondition failed"
    default_detail = "If-Match does not match the current version of the resource."


# 413
class PayloadTooLarge(AppError):
    status, code, title = 413, "payload_too_large", "Payload too large"
    default_detail = "The request body exceeds the size limit."


# 415
class UnsupportedMediaType(AppError):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"
    default_detail = "This endpoint takes JSON: send the body as `Content-Type: application/json`."


# 422
class ValidationFailed(AppError):
    status, code, title = 422, "validation_error", "Validation error"
    default_detail = "The request is not valid."

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: Sequence[Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(detail, **kwargs)
        if errors is not None:
            self.extra["errors"] = [dict(error) for error in errors]


class UnknownParameter(ValidationFailed):  # its body: taskapi.kit.strict_query
    code, title = strict_query.UNKNOWN_PARAMETER, "Unknown query parameter"


class UnknownAssignee(ValidationFailed):
    code, title = "unknown_assignee", "Unknown assignee"
    default_detail = "assignee_id does not refer to an existing user."


# 503
class ServiceUnavailable(AppError):
    status, code, title = 503, "service_unavailable", "Service unavailable"
    default_detail = "A dependency of the service is unavailable; try again shortly."


# Seconds a client is asked to wait while the database is unreachable: long enough not to hammer a
# restarting server, short enough that clients notice its return about when the app does.
DATABASE_RETRY_AFTER_SECONDS = 2


class DatabaseUnavailable(ServiceUnavailable):
    code, title = "database_unavailable", "Database unavailable"
    default_detail = "The database is unreachable; try again shortly."

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.headers.setdefault("Retry-After", str(DATABASE_RETRY_AFTER_SECONDS))


def problem_body(
    *, status: int, code: str, title: str, detail: str, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": current_request_id(),
    }
    if extra:
        body.update(extra)
    return body


def problem_response(
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        problem_body(status=status, code=code, title=title, detail=detail, extra=extra),
        status_code=status,
        headers=dict(headers or {}),
        media_type=PROBLEM_CONTENT_TYPE,
    )


def app_error_response(error: AppError) -> JSONResponse:
    return problem_response(
        status=error.status,
        code=error.code,
        title=error.title,
        detail=error.detail,
        extra=error.extra,
        headers=error.headers,
    )


def _jsonable_loc(loc: Sequence[Any]) -> list[str | int]:
    return [part if isinstance(part, int) else str(part) for part in loc]


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Only loc/msg/type: pydantic's `input` and `ctx` could echo secrets such as passwords.
    return [
        {
            "loc": _jsonable_loc(err.get("loc", ())),
            "msg": str(err.get("msg", "")),
            "type": err.get("type", ""),
        }
        for err in exc.errors()
    ]


async def _handle_app_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    if exc.status >= 500:
        logger.error("request failed: %s (%s)", exc.code, exc.detail)
    return app_error_response(exc)


async def _handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _validation_errors(exc)
    if unknown := strict_query.unknown_names(errors):
        accepted = strict_query.accepted_parameters(request)
        detail, extra = strict_query.unknown_parameter_extra(errors, unknown, accepted)
        return app_error_response(UnknownParameter(detail, extra=extra))
    if any(error["type"] == "json_invalid" for error in errors):
        return problem_response(
            status=400,
            code="malformed_json",
            title="Malformed JSON",
            detail="The request body is not valid JSON.",
            extra={"errors": errors},
        )
    return problem_response(
        status=422,
        code="validation_error",
        title="Validation error",
        detail="The request is not valid; see `errors`.",
        extra={"errors": errors},
    )


_PHRASES = {status.value: status.phrase for status in HTTPStatus}
_HTTP_CODES = {
    400: "malformed_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


async def _handle_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    if status == 405:
        # The router's own `Allow` names the methods of one route, not of the path.
        allow = ", ".join(allowed_methods(request.app.router.routes, request.scope))
        return app_error_response(MethodNotAllowed(headers={"Allow": allow}))
    phrase = _PHRASES.get(status, "Error")
    code = _HTTP_CODES.get(status, phrase.lower().replace(" ", "_").replace("-", "_"))
    if status == 404:
        detail = "No resource exists at this URL."
    elif isinstance(exc.detail, str) and status < 500:
        detail = exc.detail
    else:
        detail = phrase
    return problem_response(
        status=status, code=code, title=phrase, detail=detail, headers=exc.headers
    )


def internal_error_body() -> dict[str, Any]:
    return problem_body(
        status=500,
        code="internal_error",
        title="Internal Server Error",
        detail="Something went wrong on our side; quote the request id if you report it.",
    )


def database_unavailable_response(error: BaseException) -> JSONResponse:
    # One line, no traceback: an outage produces one of these per request.
    logger.warning("database unavailable: %s: %s", type(error).__name__, error)
    return app_error_response(DatabaseUnavailable())


async def _handle_database_error(_request: Request, exc: Exception) -> JSONResponse:
    if not is_database_unavailable(exc):
        raise exc  # a failed statement is a bug: the last-resort 500 (middleware.py) logs it
    return database_unavailable_response(exc)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _handle_app_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_exception)
    for error_type in (
        sa_exc.SQLAlchemyError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        TimeoutError,
    ):
        app.add_exception_handler(error_type, _handle_database_error)
