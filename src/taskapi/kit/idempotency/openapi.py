"""How the `Idempotency-Key` header and its errors are documented on every POST operation."""

from __future__ import annotations

from typing import Any

from taskapi.kit.idempotency.key import HEADER, REPLAYED_HEADER

_PARAMETER = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "description": (
        "Makes a retried POST safe: the same key from the same user (the same client IP for "
        "register, login, token and refresh) with the same request within 24 hours replays "
        f"the first response with `{REPLAYED_HEADER}: true` and does nothing again. The same "
        "key with a different request is 422 `idempotency_key_reused`; while the first request "
        "is still running, 409 `idempotency_key_in_use`. Responses with a 5xx, 401, 408 or "
        "429 status are not kept, so such a request can be retried with the same key."
    ),
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
}
_ERROR_DESCRIPTIONS = {
    "400": "Malformed request, or an invalid Idempotency-Key",
    "409": "Conflict, or the Idempotency-Key is still in use",
    "422": "Validation error, or the Idempotency-Key was used with a different request",
}


def document_idempotency(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {})
    components.setdefault("parameters", {})["IdempotencyKey"] = _PARAMETER
    reference = {"$ref": "#/components/parameters/IdempotencyKey"}
    problem = {"$ref": "#/components/schemas/Problem"}
    replayed = {
        "description": "`true` when this response is the replay of an earlier one",
        "schema": {"type": "string", "enum": ["true"]},
    }
    for path_item in schema.get("paths", {}).values():
        operation = path_item.get("post")
        if operation is None:
            continue
        parameters = operation.setdefault("parameters", [])
        if reference not in parameters:
            parameters.append(reference)
        responses = operation.setdefault("responses", {})
        for status, response in responses.items():
            if status.startswith("2"):
                response.setdefault("headers", {})[REPLAYED_HEADER] = replayed
        for status, description in _ERROR_DESCRIPTIONS.items():
            responses.setdefault(
                status,
                {
                    "description": description,
                    "content": {"application/problem+json": {"schema": problem}},
                },
            )
