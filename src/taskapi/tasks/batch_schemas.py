"""The body and answer of `POST /tasks/batch` (API.md part 2, "Batch writes").

A batch is validated as a whole before anything runs: an operation the schema refuses (a blank
title, an unknown `op`, both or neither of `task_id` and `temp_id`, a `temp_id` declared twice)
is a 422 for the request, locating the value (`["body", "operations", 3, "task", "title"]`).
What only the data can tell (a task you cannot see, a forbidden transition, a stale `if_match`)
fails that operation alone.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal, NotRequired

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

# pydantic needs typing_extensions' TypedDict before Python 3.12.
from typing_extensions import TypedDict

from taskapi.kit.openapi import PROBLEM_REF
from taskapi.models import TaskStatus
from taskapi.tasks.schemas import JsonBool, JsonId, TaskCreate, TaskOut, TaskPatch

MAX_BATCH_OPERATIONS: Final = 500
# One rate-limit token per this many operations (the request's own included).
OPERATIONS_PER_TOKEN: Final = 10

# The `type` of the validation error of a temp_id declared twice (a rule JSON Schema cannot state).
DUPLICATE_TEMP_ID: Final = "duplicate_temp_id"
TEMP_ID_PATTERN: Final = r"^[A-Za-z0-9_.:-]{1,64}$"
TempId = Annotated[
    str,
    Field(
        pattern=TEMP_ID_PATTERN,
        description="The client's name for a task created in this batch: 1-64 of "
        "`A-Za-z0-9_.:-`, unique within the batch",
    ),
]
IfMatchValue = Annotated[
    str,
    Field(
        min_length=1,
        max_length=1000,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="As the If-Match header: the operation fails with 412 "
        "`precondition_failed` unless the task's current ETag is listed (`*` matches any)",
    ),
]

# Exactly one of the two names the task an operation acts on.
_ONE_TARGET: Final[dict[str, Any]] = {
    "oneOf": [
        {"properties": {name: {}}, "required": [name]}  # (the property's schema is above)
        for name in ("task_id", "temp_id")
    ]
}


class _Op(BaseModel):
    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        # No field of an operation is nullable: an optional one is left out, never sent as null
        # (the defaults below only stand for "not sent").
        if isinstance(data, dict):
            for name in cls.model_fields:
                if name in data and data[name] is None:
                    raise ValueError(f"`{name}` cannot be null: leave it out")
        return data


class _Targeted(_Op):
    model_config = ConfigDict(json_schema_extra=_ONE_TARGET)

    task_id: JsonId | SkipJsonSchema[None] = Field(default=None, description="An existing task")
    temp_id: TempId | SkipJsonSchema[None] = Field(
        default=None, description="A task an earlier `create` of this batch made"
    )

    @model_validator(mode="after")
    def _one_target(self) -> _Targeted:
        if (self.task_id is None) == (self.temp_id is None):
            raise ValueError("give exactly one of `task_id` and `temp_id`")
        return self


class CreateOp(_Op):
    """Create a task, as `POST /tasks` would."""

    op: Literal["create"]
    temp_id: TempId | SkipJsonSchema[None] = None
    task: TaskCreate


class UpdateOp(_Targeted):
    """Change some fields, as `PATCH /tasks/{task_id}` would."""

    op: Literal["update"]
    changes: TaskPatch
    if_match: IfMatchValue | SkipJsonSchema[None] = None


class TransitionOp(_Targeted):
    """Change the status, as `POST /tasks/{task_id}/transition` would."""

    op: Literal["transition"]
    status: TaskStatus
    if_match: IfMatchValue | SkipJsonSchema[None] = None


class DeleteOp(_Targeted):
    """Move the task to the trash, as `DELETE /tasks/{task_id}` would."""

    op: Literal["delete"]
    if_match: IfMatchValue | SkipJsonSchema[None] = None


Operation = Annotated[CreateOp | UpdateOp | TransitionOp | DeleteOp, Field(discriminator="op")]


class BatchIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "operations": [
                        {"op": "create", "temp_id": "t1", "task": {"title": "Write the report"}},
                        {"op": "transition", "temp_id": "t1", "status": "in_progress"},
                        {"op": "update", "task_id": 42, "changes": {"priority": "high"}},
                        {"op": "delete", "task_id": 43},
                    ],
                    "atomic": False,
                }
            ]
        }
    )

    operations: list[Operation] = Field(min_length=1, max_length=MAX_BATCH_OPERATIONS)
    atomic: JsonBool = Field(
        default=False,
        description="true: all operations apply or none (the first failure is a 409 "
        "`batch_failed`); false: each one fails on its own",
    )

    @field_validator("operations")
    @classmethod
    def _temp_ids_unique(cls, operations: list[Operation]) -> list[Operation]:
        seen: set[str] = set()
        for op in operations:
            if isinstance(op, CreateOp) and op.temp_id is not None:
                if op.temp_id in seen:
                    raise PydanticCustomError(
                        DUPLICATE_TEMP_ID,
                        "temp_id '{temp_id}' is declared by two creates",
                        {"temp_id": op.temp_id},
                    )
                seen.add(op.temp_id)
        return operations

    @property
    def tokens(self) -> int:
        """What the batch costs in rate-limit tokens."""
        return -(-len(self.operations) // OPERATIONS_PER_TOKEN)


# A problem object (as kit.errors formats it: its extras such as `errors` included), documented as
# the one shared `Problem` schema.
ProblemObject = Annotated[dict[str, Any], WithJsonSchema({"allOf": [PROBLEM_REF]})]


class BatchItemResult(TypedDict):
    index: Annotated[int, Field(description="The operation's position in `operations`, from 0")]
    success: bool
    task_id: NotRequired[Annotated[int, Field(description="The task acted on, when known")]]
    task: NotRequired[
        Annotated[TaskOut, Field(description="The task after the operation (not for a delete)")]
    ]
    # Why it failed: the problem its own endpoint would answer.
    error: NotRequired[ProblemObject]


class BatchResult(TypedDict):
    results: list[BatchItemResult]
    temp_ids: Annotated[
        dict[str, int],
        Field(description="The id of each task created under a temp_id (successful creates only)"),
    ]


# The answer as JSON, keys that do not apply left out (not sent as null).
BATCH_RESULT_JSON: Final = TypeAdapter(BatchResult)
