"""Reading one file out of a multipart/form-data body as it arrives.

Starlette's form parser spools the whole body to disk before the endpoint runs; here the raw
body stream goes straight into python-multipart's push parser, and the file's bytes come out in
the chunks they arrived in, so memory stays bounded whatever the file's size.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from taskapi.kit.errors import AppError, ValidationFailed

FILE_FIELD = "file"
MAX_PART_HEADER_BYTES = 16 * 1024
MAX_PARTS = 16


class BadMultipart(ValidationFailed):
    code, title = "invalid_upload", "Invalid upload"
    default_detail = "Send multipart/form-data with one file in the field `file`."


@dataclass
class FilePart:
    filename: str | None
    content_type: str | None


@dataclass
class _State:
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    headers: dict[bytes, bytes] = field(default_factory=dict)
    header_bytes: int = 0
    parts: int = 0
    in_file: bool = False
    file: FilePart | None = None
    file_done: bool = False
    pieces: list[bytes] = field(default_factory=list)


def _boundary(request: Request) -> bytes:
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise BadMultipart("The body must be multipart/form-data with a boundary.")
    return boundary


async def iter_file(request: Request) -> tuple[FilePart, AsyncIterator[bytes]]:
    """Find the `file` part and return its headers and an iterator over its bytes.

    Bytes before the file part are parsed and discarded as they arrive; the body after the file
    part is not read at all.
    """
    state = _State()

    def on_part_begin() -> None:
        state.parts += 1
        if state.parts > MAX_PARTS:
            raise BadMultipart("Too many parts in the form.")
        state.headers = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state.header_bytes += end - start
        state.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state.header_bytes += end - start
        if state.header_bytes > MAX_PART_HEADER_BYTES:
            raise BadMultipart("Part headers are too large.")
        state.header_value += data[start:end]

    def on_header_end() -> None:
        state.headers[bytes(state.header_field).lower()] = bytes(state.header_value)
        state.header_field.clear()
        state.header_value.clear()

    def on_headers_finished() -> None:
        state.header_bytes = 0
        _, options = parse_options_header(state.headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if name == FILE_FIELD and filename is not None and state.file is None:
            state.in_file = True
            content_type = state.headers.get(b"content-type")
            state.file = FilePart(
                filename=filename.decode("utf-8", "replace"),
                content_type=content_type.decode("latin-1") if content_type else None,
            )

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state.in_file:
            state.pieces.append(bytes(data[start:end]))

    def on_part_end() -> None:
        if state.in_file:
            state.in_file = False
            state.file_done = True

    parser = MultipartParser(
        _boundary(request),
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    stream = request.stream()

    async def feed() -> bool:
        """Parse the next body chunk; False at the end of the body."""
        try:
            chunk = await anext(stream)
        except StopAsyncIteration:
            return False
        try:
            parser.write(chunk)
        except AppError:
            raise
        except Exception as error:  # python-multipart's parse errors
            raise BadMultipart("The multipart body is malformed.") from error
        return True

    # Read until the file part has begun (its headers are parsed).
    while state.file is None:
        if not await feed():
            raise BadMultipart("No file was sent in the field `file`.")

    async def chunks() -> AsyncIterator[bytes]:
        while True:
            if state.pieces:
                pieces, state.pieces = state.pieces, []
                for piece in pieces:
                    if piece:
                        yield piece
            if state.file_done:
                return
            if not await feed() and not state.file_done:
                raise BadMultipart("The multipart body ended inside the file.")

    return state.file, chunks()
