"""The problems of the change feed (API.md part 2, "Change feed and activity")."""

from __future__ import annotations

from taskapi.kit.errors import AppError


class CursorExpired(AppError):
    status, code, title = 410, "cursor_expired", "Cursor expired"
    default_detail = (
        "This cursor is older than the event retention period: list again, then follow the "
        "feed from a new cursor (GET /events without `since`)."
    )
