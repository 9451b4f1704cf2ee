"""Attachments: streamed upload with type checks and size limit, listing, download, deletion.

Bytes go to storage first; the row is written after the object is stored, and if the request's
transaction then fails the object is deleted again. Deleting rows enqueues the deletion of their
objects as a durable job in the same transaction.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, bindparam, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from taskapi.attachments.naming import sanitize_filename
from taskapi.attachments.sniffing import SNIFF_BYTES, TextValidator, detect
from taskapi.attachments.upload import BadMultipart, FilePart
from taskapi.events.schemas import ATTACHMENT_ADDED, ATTACHMENT_DELETED
from taskapi.jobs import queue
from taskapi.kit.db import CompiledQuery, on_rollback
from taskapi.kit.errors import NotFound, PayloadTooLarge
from taskapi.models import Attachment, Task, User
from taskapi.storage import ObjectStream, Storage, StorageUnavailable, new_object_key
from taskapi.storage.base import UploadSink
from taskapi.tasks import access, audit
from taskapi.tasks.visibility import USER_ID, visible_to

logger = logging.getLogger("taskapi.attachments")
# The job that removes stored objects whose rows are gone (attachments/jobs.py runs it).
DELETE_OBJECTS = "delete_objects"
KEYS_PER_JOB = 1000


class FileNotFound(NotFound):
    code, title = "file_not_found", "File not found"
    default_detail = "No file with this id exists or it is not visible to you."


@dataclass(frozen=True, slots=True)
class StoredUpload:
    key: str
    filename: str
    content_type: str
    size: int
    sha256: str


async def store_upload(
    storage: Storage, part: FilePart, chunks: AsyncIterator[bytes], max_bytes: int
) -> StoredUpload:
    """Stream the file into storage, checking type, size and (for text) encoding on the way.
    On any failure nothing is left in storage."""
    filename = sanitize_filename(part.filename)
    digest = hashlib.sha256()
    size = 0
    head = bytearray()
    sink: UploadSink | None = None
    text: TextValidator | None = None
    key = new_object_key()
    kind = None

    async def start(first: bytes) -> UploadSink:
        nonlocal kind, text
        kind = detect(first, filename, part.content_type)
        text = TextValidator() if kind.is_text else None
        try:
            return await storage.start_upload(key, kind.content_type)
        except OSError as error:
            raise StorageUnavailable() from error

    async def write(data: bytes) -> None:
        assert sink is not None
        if text is not None:
            text.feed(data)
        try:
            await sink.write(data)
        except OSError as error:
            raise StorageUnavailable() from error

    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise PayloadTooLarge(f"Files may be at most {max_bytes} bytes.")
            digest.update(chunk)
            if sink is None:
                head += chunk
                if len(head) < SNIFF_BYTES:
                    continue
                sink = await start(bytes(head))
                await write(bytes(head))
                head.clear()
            else:
                await write(chunk)
        if size == 0:
            raise BadMultipart("The file is empty.")
        if sink is None:
            sink = await start(bytes(head))
            await write(bytes(head))
        if text is not None:
            text.finish()
        try:
            await sink.commit()
        except OSError as error:
            raise StorageUnavailable() from error
    except BaseException:
        if sink is not None:
            await sink.abort()
        raise
    assert kind is not None
    return StoredUpload(key, filename, kind.content_type, size, digest.hexdigest())


async def _bump_task(session: AsyncSession, task_id: int, delta: int) -> Task:
    # attachment_count is part of the task's representation, so its version (ETag) moves too.
    # The row is read back (the task as it now is: its event carries it).
    bumped = await session.scalars(
        update(Task)
        .where(Task.id == task_id)
        .values(
            attachment_count=Task.attachment_count + delta,
            version=Task.version + 1,
            updated_at=func.now(),
        )
        .returning(Task)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    return bumped.one()


def _file_of(attachment: Attachment) -> dict[str, object]:
    return {
        "id": attachment.id,
        "filename": attachment.filename,
        "content_type": attachment.content_type,
        "size": attachment.size,
    }


async def _record(
    session: AsyncSession, user: User | None, type_: str, task: Task, old: object, new: object
) -> None:
    count = task.attachment_count
    before = count - 1 if type_ == ATTACHMENT_ADDED else count + 1
    await audit.task_touched(
        session,
        user,
        type_,
        task,
        {"attachment": [old, new], "attachment_count": [before, count]},
    )


async def add_attachment(
    session: AsyncSession, storage: Storage, user: User, task: Task, stored: StoredUpload
) -> Attachment:
    async def discard_object() -> None:
        try:
            await storage.delete(stored.key)
        except Exception:  # the orphan sweep will get it
            logger.warning("could not delete %s after a failed commit", stored.key)

    on_rollback(session, discard_object)
    attachment = Attachment(
        task_id=task.id,
        uploader_id=user.id,
        storage_key=stored.key,
        filename=stored.filename,
        content_type=stored.content_type,
        size=stored.size,
        sha256=stored.sha256,
    )
    session.add(attachment)
    await session.flush()
    bumped = await _bump_task(session, task.id, +1)
    await _record(session, user, ATTACHMENT_ADDED, bumped, None, _file_of(attachment))
    return attachment


async def list_attachments(session: AsyncSession, task: Task) -> Sequence[Attachment]:
    query = (
        select(Attachment)
        .where(Attachment.task_id == task.id)
        .order_by(Attachment.created_at, Attachment.id)
    )
    return (await session.scalars(query)).all()


@dataclass(frozen=True, slots=True)
class FileToServe:
    """What a download needs of an attachment row."""

    id: int
    storage_key: str
    filename: str
    content_type: str
    sha256: str


_FILE_TO_SERVE = CompiledQuery.of(
    select(
        Attachment.id,
        Attachment.storage_key,
        Attachment.filename,
        Attachment.content_type,
        Attachment.sha256,
    )
    .join(Task, Task.id == Attachment.task_id)
    .where(Attachment.id == bindparam("file_id"), visible_to(USER_ID))
)


async def get_file_to_serve(session: AsyncSession, user: User, file_id: int) -> FileToServe:
    """The download's lookup, read straight from the database (no ORM object): downloads are
    a hot read."""
    rows = await _FILE_TO_SERVE.fetch(session, {"file_id": file_id, "user_id": user.id})
    if not rows:
        raise FileNotFound()
    return FileToServe(*rows[0])


async def get_visible_attachment(
    session: AsyncSession, user: User, attachment_id: int
) -> Attachment:
    attachment = await session.scalar(
        select(Attachment)
        .join(Task, Task.id == Attachment.task_id)
        .where(Attachment.id == attachment_id, visible_to(user.id))
    )
    if attachment is None:
        raise FileNotFound()
    return attachment


async def delete_visible_attachment(session: AsyncSession, user: User, attachment_id: int) -> None:
    """Delete a file of a task the caller sees and may change (taskapi.tasks.access)."""
    attachment = await get_visible_attachment(session, user, attachment_id)
    task = await session.get_one(Task, attachment.task_id)
    await access.require_edit(session, user, task)
    await delete_attachment(session, attachment, user)


async def enqueue_object_deletion(session: AsyncSession, keys: Iterable[str]) -> None:
    """Durable: the objects are deleted by a job that exists exactly when the rows are gone."""
    pending = list(keys)
    for start in range(0, len(pending), KEYS_PER_JOB):
        await queue.enqueue(
            session, DELETE_OBJECTS, {"keys": pending[start : start + KEYS_PER_JOB]}
        )


async def delete_attachment(
    session: AsyncSession, attachment: Attachment, user: User | None = None
) -> None:
    await session.execute(delete(Attachment).where(Attachment.id == attachment.id))
    bumped = await _bump_task(session, attachment.task_id, -1)
    await _record(session, user, ATTACHMENT_DELETED, bumped, _file_of(attachment), None)
    await enqueue_object_deletion(session, [attachment.storage_key])


async def referenced_keys(session: AsyncSession, keys: Iterable[str]) -> set[str]:
    """Those of `keys` that some attachment refers to."""
    query = select(Attachment.storage_key).where(Attachment.storage_key.in_(list(keys)))
    return set((await session.scalars(query)).all())


async def release_objects_of_tasks(session: AsyncSession, which: ColumnElement[bool]) -> None:
    """Schedule the deletion of the stored objects of every file of the tasks `which` selects,
    which are about to be deleted (their attachment rows with them)."""
    query = select(Attachment.storage_key).join(Task, Task.id == Attachment.task_id).where(which)
    await enqueue_object_deletion(session, (await session.scalars(query)).all())


async def release_connection(session: AsyncSession) -> None:
    """End the read-only transaction so no pooled connection waits on a slow upload; loaded
    objects stay usable (detached, not expired)."""
    session.expunge_all()
    await session.rollback()


async def presigned_url(storage: Storage, attachment: Attachment | FileToServe) -> str | None:
    try:
        return await storage.presigned_url(
            attachment.storage_key, attachment.filename, attachment.content_type
        )
    except OSError as error:
        raise StorageUnavailable() from error


async def open_download(storage: Storage, attachment: Attachment | FileToServe) -> ObjectStream:
    try:
        return await storage.open(attachment.storage_key)
    except FileNotFoundError as error:
        logger.error("file %s has a row but no object %s", attachment.id, attachment.storage_key)
        raise FileNotFound() from error
    except OSError as error:
        raise StorageUnavailable() from error
