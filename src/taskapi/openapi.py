"""Shapes used only to document the API: the problem+json body and per-status error responses."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from taskapi.errors import PROBLEM_CONTENT_TYPE


class ValidationErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem details object."""

    type: str = Field(examples=["urn:taskapi:problem:task_not_found"])
    title: str
    status: int
    detail: str
    code: str = Field(description="Stable machine-readable error code", examples=["task_not_found"])
    request_id: str | None
    errors: list[ValidationErrorItem] | None = Field(
        default=None, description="Present on validation errors"
    )


_DESCRIPTIONS = {
    400: "Malformed request",
    401: "Missing, invalid or expired credentials",
    403: "Visible but not allowed",
    404: "Not found, or not visible to you",
    409: "Conflict with the current state",
    412: "If-Match did not match the current version",
    413: "Body too large",
    415: "Unsupported media type",
    422: "Validation error",
    429: "Rate limited",
    503: "A dependency is unavailable",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {
            "description": _DESCRIPTIONS.get(status, "Error"),
            "model": Problem,
            "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }
