"""Display names for uploaded files (the header they are downloaded under is storage's
`content_disposition`)."""

from __future__ import annotations

import unicodedata

MAX_FILENAME_BYTES = 255
# Joiners shape emoji sequences and scripts such as Persian; other format characters (bidi
# overrides, BOMs) can make a name lie about its extension, so they go.
_KEPT_FORMAT_CHARACTERS = frozenset("\u200c\u200d")


def _visible(ch: str) -> bool:
    category = unicodedata.category(ch)
    return category[0] != "C" or (category == "Cf" and ch in _KEPT_FORMAT_CHARACTERS)


def sanitize_filename(raw: str | None) -> str:
    """A safe display name: no directories, no control or bidi-override characters, NFC,
    at most 255 UTF-8 bytes with the extension kept. Never used as a storage path."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = unicodedata.normalize("NFC", name)
    name = "".join(ch for ch in name if _visible(ch))
    name = name.strip().strip(".").strip()
    if not name:
        return "file"
    if len(name.encode()) > MAX_FILENAME_BYTES:
        stem, dot, extension = name.rpartition(".")
        if not dot or len(extension.encode()) > 16:
            stem, extension = name, ""
        budget = MAX_FILENAME_BYTES - len(extension.encode()) - (1 if extension else 0)
        stem = stem.encode()[:budget].decode("utf-8", errors="ignore")
        name = f"{stem}.{extension}" if extension else stem
    return name
