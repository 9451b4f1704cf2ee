from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response, status
from fastapi.responses import RedirectResponse, StreamingResponse

from taskapi.attachments import service
from taskapi.attachments.schemas import AttachmentOut
from taskapi.attachments.upload import iter_file
from taskapi.auth.dependencies import CurrentUser, requires
from taskapi.auth.scopes import Scope
from taskapi.kit.conditional import none_match
from taskapi.kit.db import DbSession
from taskapi.kit.errors import PayloadTooLarge
from taskapi.kit.openapi import problem_responses
from taskapi.kit.services import services_of
from taskapi.kit.strict_query import NoQueryParameters
from taskapi.kit.validation import MAX_ID
from taskapi.storage import STORAGE, Storage, content_disposition
from taskapi.tasks.dependencies import EditableTask, VisibleTask

router = APIRouter(tags=["attachments"], responses=problem_responses(401, 429))

# Room for the multipart framing around the file itself (also the body limit's margin, app.py).
MULTIPART_OVERHEAD = 64 * 1024
FileId = Annotated[int, Path(ge=1, le=MAX_ID, description="The file's id")]


async def get_storage(request: Request) -> Storage:
    return services_of(request.app).get(STORAGE)


StorageDep = Annotated[Storage, Depends(get_storage)]

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    # An empty file is refused (422): at least one byte.
                    "properties": {"file": {"type": "string", "format": "binary", "minLength": 1}},
                }
            }
        },
    }
}


@router.post(
    "/tasks/{task_id}/files",
    dependencies=[requires(Scope.TASKS_WRITE)],
    status_code=status.HTTP_201_CREATED,
    openapi_extra=_UPLOAD_BODY,
    responses=problem_responses(403, 404, 409, 413, 415, 422, 503),
    summary="Attach a file to a task",
)
async def upload_file(
    request: Request,
    task: EditableTask,
    user: CurrentUser,
    session: DbSession,
    storage: StorageDep,
    response: Response,
) -> AttachmentOut:
    """Multipart form with the file in the field `file`, streamed to storage. Allowed types are
    decided by the file's bytes (PNG, JPEG, GIF, WebP, PDF, UTF-8 text, .docx/.xlsx/.pptx, ZIP);
    over `MAX_UPLOAD_BYTES` is 413, an empty file 422."""
    settings = services_of(request.app).settings
    declared = request.headers.get("content-length")
    if (
        declared
        and declared.isdigit()
        and int(declared) > settings.max_upload_bytes + MULTIPART_OVERHEAD
    ):
        raise PayloadTooLarge(f"Files may be at most {settings.max_upload_bytes} bytes.")
    # Hand the connection back to the pool while the body streams in (it may take minutes);
    # nothing has been written yet, so there is nothing to lose.
    await service.release_connection(session)
    part, chunks = await iter_file(request)
    stored = await service.store_upload(storage, part, chunks, settings.max_upload_bytes)
    attachment = await service.add_attachment(session, storage, user, task, stored)
    response.headers["Location"] = f"/api/v1/files/{attachment.id}"
    return AttachmentOut.model_validate(attachment)


@router.get(
    "/tasks/{task_id}/files",
    dependencies=[requires(Scope.TASKS_READ)],
    responses=problem_responses(404, 422),
    summary="List a task's files",
)
async def list_files(
    task: VisibleTask, session: DbSession, _strict: NoQueryParameters
) -> list[AttachmentOut]:
    return [AttachmentOut.model_validate(a) for a in await service.list_attachments(session, task)]


@router.get(
    "/files/{file_id}",
    dependencies=[requires(Scope.TASKS_READ)],
    response_class=StreamingResponse,
    responses={
        200: {
            # Sent with the type the file was stored with (PNG, PDF, text/plain, ...): `*/*`.
            # Listed first, `application/octet-stream` makes generated clients return the bytes.
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "*/*": {"schema": {"type": "string", "format": "binary"}},
            },
            "description": "The file's bytes, with the type it was stored with",
        },
        304: {"description": "Not modified (If-None-Match matched)"},
        307: {
            "description": "Redirect to a short-lived presigned URL (S3, ?redirect=true)",
            "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
        },
        **problem_responses(404, 422, 503),
    },
    summary="Download a file",
)
async def download_file(
    file_id: FileId,
    user: CurrentUser,
    session: DbSession,
    storage: StorageDep,
    redirect: Annotated[bool, Query(description="On S3: 307 to a presigned URL")] = False,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    attachment = await service.get_file_to_serve(session, user, file_id)
    etag = f'"{attachment.sha256}"'
    # RFC 9110 §13.1.2: weak comparison, and `*` matches any current representation.
    if none_match(if_none_match, etag):
        return Response(status_code=304, headers={"ETag": etag})
    if redirect:
        url = await service.presigned_url(storage, attachment)
        if url is not None:
            return RedirectResponse(url, status_code=307)
    stream = await service.open_download(storage, attachment)
    headers = {
        "Content-Length": str(stream.size),
        "Content-Disposition": content_disposition(attachment.filename),
        "ETag": etag,
        "X-Content-Type-Options": "nosniff",
        # Content addressed by its hash: browsers may keep it but must revalidate (304).
        "Cache-Control": "private, no-cache",
    }
    if stream.whole is not None:
        # Already in memory (at most one chunk): one body, no streaming task per response.
        return Response(stream.whole, media_type=attachment.content_type, headers=headers)
    return StreamingResponse(stream.chunks, media_type=attachment.content_type, headers=headers)


@router.delete(
    "/files/{file_id}",
    dependencies=[requires(Scope.TASKS_WRITE)],
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(403, 404, 409, 422),
    summary="Delete a file",
)
async def delete_file(file_id: FileId, user: CurrentUser, session: DbSession) -> None:
    """The object is removed from storage by a background job, also when storage is down."""
    await service.delete_visible_attachment(session, user, file_id)
