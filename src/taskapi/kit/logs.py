"""Process-wide logging: JSON lines (production default) or text, every record of a request
stamped with its request id, uvicorn's loggers routed through the same handler, and secrets
scrubbed on the way out.

Nothing in the service logs request bodies or headers; the scrubbing here is a safety net for a
future mistake (a password in `extra`, a token in an exception message), not the mechanism.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

from taskapi.kit.config import Settings, SettingsError
from taskapi.kit.request_context import current_request_id

REDACTED = "[redacted]"

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "request_id",
    # uvicorn's copy of its message with ANSI colours, for its own formatter only.
    "color_message",
}

_SECRET_KEY_NAME = re.compile(
    r"pass(word|wd|phrase)?|token|authori[sz]ation|secret|cookie|api[_-]?key|credential", re.I
)
# A bearer credential, anything shaped like a JWT (base64url header starting '{"' = "eyJ"), or
# a personal access token (`tap_` + base62).
_SECRET_TEXT = re.compile(
    r"\bbearer\s+\S+|eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"
    r"|\btap_[A-Za-z0-9]{8,}",
    re.I,
)

# Marks the handler we install, so configuring again (uvicorn workers, tests) replaces it.
_HANDLER_NAME = "taskapi"

# uvicorn's own loggers carry no handlers of their own once we pass log_config=None; they must
# propagate to ours. Its access log stays off: RequestContextMiddleware writes a better one.
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.asgi")


class Scrubber:
    """Removes bearer tokens, JWTs and known secret values from text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = tuple(s for s in secrets if s)
        # Field names repeat (the access log's on every request): decide each one once.
        self._secret_names: dict[str, bool] = {}

    def _is_secret_name(self, key: str) -> bool:
        known = self._secret_names.get(key)
        if known is None:
            known = bool(_SECRET_KEY_NAME.search(key))
            if len(self._secret_names) < 10_000:  # extras are code, but stay bounded anyway
                self._secret_names[key] = known
        return known

    def text(self, value: str) -> str:
        if "earer" in value or "eyJ" in value:  # cheap pre-check: the regex rarely needs to run
            value = _SECRET_TEXT.sub(REDACTED, value)
        for secret in self._secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value

    def value(self, key: str, value: Any) -> Any:
        if self._is_secret_name(key):
            return REDACTED
        kind = type(value)
        if value is None or kind is int or kind is float or kind is bool:
            return value
        if kind is str:
            return self.text(value)
        if isinstance(value, dict):
            return {str(k): self.value(str(k), v) for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(key, v) for v in value]
        return self.text(str(value))


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _RECORD_ATTRIBUTES and not key.startswith("_")
    }


def _timestamp(record: logging.LogRecord) -> str:
    # RFC 3339, UTC, milliseconds: sorts as text and every log store parses it.
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, logger, message, request_id, pid, extras."""

    def __init__(self, scrubber: Scrubber | None = None) -> None:
        super().__init__()
        self.scrubber = scrubber or Scrubber()

    def format(self, record: logging.LogRecord) -> str:
        scrub = self.scrubber
        entry: dict[str, Any] = {
            "timestamp": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": scrub.text(record.getMessage()),
        }
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            entry["request_id"] = request_id
        # Which worker process: with WEB_CONCURRENCY > 1 their lines interleave.
        entry["pid"] = record.process
        for key, value in _extra_fields(record).items():
            if key not in entry:
                entry[key] = scrub.value(key, value)
        if record.exc_info:
            entry["exception"] = scrub.text(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = scrub.text(self.formatStack(record.stack_info))
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """For people at a terminal: `time LEVEL logger [request id] message key=value ...`."""

    def __init__(self, scrubber: Scrubber | None = None) -> None:
        super().__init__()
        self.scrubber = scrubber or Scrubber()

    def format(self, record: logging.LogRecord) -> str:
        scrub = self.scrubber
        parts = [_timestamp(record), record.levelname, record.name]
        request_id = getattr(record, "request_id", None)
        if request_id is not None:
            parts.append(f"[{request_id}]")
        parts.append(scrub.text(record.getMessage()))
        parts.extend(
            f"{key}={scrub.value(key, value)}" for key, value in _extra_fields(record).items()
        )
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + scrub.text(self.formatException(record.exc_info))
        if record.stack_info:
            line += "\n" + scrub.text(self.formatStack(record.stack_info))
        return line


class RequestIdFilter(logging.Filter):
    """Stamps the current request id on every record that reaches the handler.

    On the handler rather than on loggers: a logger's filters only see records logged on that
    very logger, while the handler sees every record from every library that propagates to root.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = current_request_id()
        return True


def _level(name: str) -> int:
    level = logging.getLevelName(name.upper())
    if not isinstance(level, int):
        raise SettingsError(
            f"LOG_LEVEL={name!r} is not a log level; use DEBUG, INFO, WARNING, ERROR or CRITICAL."
        )
    return level


def build_handler(settings: Settings, stream: TextIO | None = None) -> logging.Handler:
    """The one handler: the configured format, request ids, secrets scrubbed."""
    scrubber = Scrubber([settings.secret_key.get_secret_value()] if settings.secret_key else [])
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    json_lines = settings.effective_log_format == "json"
    handler.setFormatter(JsonFormatter(scrubber) if json_lines else TextFormatter(scrubber))
    handler.addFilter(RequestIdFilter())
    return handler


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """Install the handler on the root logger (replacing one installed earlier) at LOG_LEVEL."""
    level = _level(settings.log_level)
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
            existing.close()
    root.addHandler(build_handler(settings, stream))
    root.setLevel(level)

    for name in _UVICORN_LOGGERS:
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    # uvicorn's TRACE level logs every ASGI message with its headers, Authorization included.
    logging.getLogger("uvicorn.asgi").setLevel(max(level, logging.DEBUG))
    # Alembic announces each of its plugins at INFO; only the migrations it runs are news.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    # httpx logs every request it sends at INFO, URL and all: a line per webhook delivery (the
    # deliveries table is their record) and the receiver's URL, which may carry its token.
    # At DEBUG, asked for explicitly, they show.
    quiet = level > logging.DEBUG
    logging.getLogger("httpx").setLevel(logging.WARNING if quiet else logging.NOTSET)
