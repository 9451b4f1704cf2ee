"""The problems of batch writes (API.md part 2, "Batch writes"), and an error as the problem
object a batch result carries (the same shape and code the single-task endpoint answers with)."""

from __future__ import annotations

from typing import Any

from taskapi.kit.errors import AppError, Conflict, NotFound, problem_body


class TempIdNotFound(NotFound):
    code, title = "temp_id_not_found", "Temporary id not found"
    default_detail = (
        "No earlier operation of this batch created a task with this temp_id (an operation may "
        "only refer to a task created before it, by a create that succeeded)."
    )


class BatchFailed(Conflict):
    code, title = "batch_failed", "Batch failed"
    default_detail = "An operation of this atomic batch failed: nothing was applied."


def problem_of(error: AppError) -> dict[str, Any]:
    """`error` as a problem object inside a 200 response (what its own response's body would
    be)."""
    return problem_body(
        status=error.status,
        code=error.code,
        title=error.title,
        detail=error.detail,
        extra=error.extra,
    )


def batch_failed(index: int, error: AppError) -> BatchFailed:
    """The 409 of an atomic batch: which operation failed, and its problem object."""
    return BatchFailed(
        f"Operation {index} failed ({error.code}): nothing was applied.",
        extra={"index": index, "error": problem_of(error)},
    )
