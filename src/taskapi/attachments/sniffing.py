"""Which files are accepted, decided by their leading bytes (and, for text, all their bytes)."""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

from taskapi.kit.errors import UnsupportedMediaType

SNIFF_BYTES = 512


class UnsupportedFileType(UnsupportedMediaType):
    default_detail = (
        "Allowed: PNG, JPEG, GIF, WebP, PDF, UTF-8 text (.txt .md .csv .json .log), "
        "Office Open XML (.docx .xlsx .pptx) and ZIP; the bytes must match the declared type."
    )


@dataclass(frozen=True, slots=True)
class FileKind:
    content_type: str
    declared: frozenset[str]  # declared types that agree with these bytes
    is_text: bool = False


_GENERIC = frozenset({"", "application/octet-stream", "binary/octet-stream"})
_ZIP_TYPES = frozenset({"application/zip", "application/x-zip-compressed", "application/x-zip"})
_OOXML = {
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
}
_TEXT_TYPES = frozenset(
    {
        "text/plain",
        "text/markdown",
        "text/x-markdown",
        "text/csv",
        "application/json",
        "text/json",
        "text/x-log",
        "application/csv",
        "text/comma-separated-values",
    }
)
_TEXT_EXTENSIONS = {
    "txt": "text/plain",
    "log": "text/plain",
    "md": "text/markdown",
    "markdown": "text/markdown",
    "csv": "text/csv",
    "json": "application/json",
}

PNG = FileKind("image/png", frozenset({"image/png"}))
JPEG = FileKind("image/jpeg", frozenset({"image/jpeg", "image/jpg", "image/pjpeg"}))
GIF = FileKind("image/gif", frozenset({"image/gif"}))
WEBP = FileKind("image/webp", frozenset({"image/webp"}))
PDF = FileKind("application/pdf", frozenset({"application/pdf", "application/x-pdf"}))


def _extension(filename: str) -> str:
    return filename.rpartition(".")[2].lower() if "." in filename else ""


def _base_type(declared: str | None) -> str:
    return (declared or "").split(";", 1)[0].strip().lower()


def detect(head: bytes, filename: str, declared: str | None) -> FileKind:
    """Classify a file from its first bytes; 415 for anything not allowed, or for bytes that
    contradict the declared type."""
    declared_type = _base_type(declared)
    extension = _extension(filename)
    kind: FileKind | None = None
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        kind = PNG
    elif head.startswith(b"\xff\xd8\xff"):
        kind = JPEG
    elif head[:6] in (b"GIF87a", b"GIF89a"):
        kind = GIF
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        kind = WEBP
    elif head.startswith(b"%PDF-"):
        kind = PDF
    elif head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        if extension in _OOXML:
            ooxml = _OOXML[extension]
            kind = FileKind(ooxml, frozenset({ooxml}) | _ZIP_TYPES)
        else:
            kind = FileKind("application/zip", _ZIP_TYPES)
    elif extension in _TEXT_EXTENSIONS or declared_type in _TEXT_TYPES:
        content_type = _TEXT_EXTENSIONS.get(extension) or (
            declared_type if declared_type in _TEXT_TYPES else "text/plain"
        )
        kind = FileKind(content_type, _TEXT_TYPES, is_text=True)
    if kind is None:
        raise UnsupportedFileType()
    if declared_type not in _GENERIC and declared_type not in kind.declared:
        raise UnsupportedFileType(
            f"The file's bytes are {kind.content_type}, not the declared {declared_type}."
        )
    return kind


# Tab, newlines, form feed and ESC (colour codes in logs) are fine; NUL and the rest say binary.
_FORBIDDEN_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")


class TextValidator:
    """Checks, chunk by chunk, that a text upload is UTF-8 without NULs or control bytes."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")

    def _decode(self, chunk: bytes, *, final: bool) -> None:
        try:
            text = self._decoder.decode(chunk, final=final)
        except UnicodeDecodeError as error:
            raise UnsupportedFileType("Text files must be UTF-8.") from error
        if _FORBIDDEN_CONTROLS.search(text):
            raise UnsupportedFileType("Text files must not contain control characters.")

    def feed(self, chunk: bytes) -> None:
        self._decode(chunk, final=False)

    def finish(self) -> None:
        self._decode(b"", final=True)
