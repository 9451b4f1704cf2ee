"""/tokens: personal access tokens for scripts and integrations (API.md part 2, "Personal access
tokens"). Only a login manages them: a personal access token gets 403 `insufficient_scope`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, Response, status

from taskapi.auth.dependencies import CurrentUser, login_only
from taskapi.auth.personal_tokens import PERSONAL_TOKENS, PersonalTokens
from taskapi.auth.schemas import (
    PersonalTokenCreate,
    PersonalTokenCreated,
    PersonalTokenList,
    PersonalTokenOut,
)
from taskapi.kit.conditional import IfNoneMatch, conditional_json
from taskapi.kit.db import DbSession
from taskapi.kit.openapi import problem_responses
from taskapi.kit.services import services_of
from taskapi.kit.strict_query import NoQueryParameters
from taskapi.kit.validation import MAX_ID

router = APIRouter(
    prefix="/tokens",
    tags=["tokens"],
    dependencies=[login_only],
    responses=problem_responses(401, 403, 429),
)


async def get_personal_tokens(request: Request) -> PersonalTokens:
    return services_of(request.app).get(PERSONAL_TOKENS)


PersonalTokensDep = Annotated[PersonalTokens, Depends(get_personal_tokens)]
TokenId = Annotated[int, Path(ge=1, le=MAX_ID, description="The token's id")]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=problem_responses(409, 422),
    summary="Create a personal access token",
)
async def create_token(
    data: PersonalTokenCreate,
    user: CurrentUser,
    session: DbSession,
    tokens: PersonalTokensDep,
    response: Response,
) -> PersonalTokenCreated:
    """The answer holds the `token` (`tap_...`), shown this once: only its hash is stored. Send
    it as `Authorization: Bearer tap_...`; it may do what its `scopes` allow (403
    `insufficient_scope` otherwise), never manage tokens or the account, and spends from your
    rate-limit bucket. A password change keeps it working; deleting the account ends it. 409
    `token_limit_reached` beyond 50 tokens."""
    row, token = await tokens.create(session, user, data)
    response.headers["Location"] = f"/api/v1/tokens/{row.id}"
    return PersonalTokenCreated(**PersonalTokenOut.model_validate(row).model_dump(), token=token)


@router.get("", response_model=PersonalTokenList, summary="List your personal access tokens")
async def list_tokens(
    user: CurrentUser,
    session: DbSession,
    tokens: PersonalTokensDep,
    request: Request,
    _strict: NoQueryParameters,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """Oldest first, without the tokens themselves."""
    rows = await tokens.list_of(session, user)
    page = PersonalTokenList(
        items=[PersonalTokenOut.model_validate(row) for row in rows], total=len(rows)
    )
    return await conditional_json(request, if_none_match, page.model_dump_json().encode())


@router.delete(
    "/{token_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(404, 422),
    summary="Revoke a personal access token",
)
async def revoke_token(
    token_id: TokenId, user: CurrentUser, session: DbSession, tokens: PersonalTokensDep
) -> None:
    """It stops working at once, on every server process: the very next request with it is
    401. 404 `token_not_found` for an unknown id or someone else's token."""
    await tokens.revoke(session, user, token_id)
