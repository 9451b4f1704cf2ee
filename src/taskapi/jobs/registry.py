"""What the worker runs: a handler for each kind of job, and the kinds that recur.

This package knows no domain. Each domain keeps its handlers beside its service
(`attachments/jobs.py`, `notifications/jobs.py`, `tasks/jobs.py`), and the composition root
(`taskapi.wiring`) assembles them into the one `JobRegistry` the worker is given.
Every handler is idempotent: a job may run more than once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from taskapi.kit.config import Settings
from taskapi.storage import Storage


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a handler may use: its own sessions (it commits them itself), storage, settings."""

    sessionmaker: async_sessionmaker[AsyncSession]
    storage: Storage
    settings: Settings


Handler = Callable[[JobContext, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Periodic:
    """A kind of job the worker keeps one pending job of, `every(settings)` seconds ahead."""

    kind: str
    every: Callable[[Settings], float]


@dataclass(frozen=True, slots=True)
class JobRegistry:
    handlers: Mapping[str, Handler]
    periodic: tuple[Periodic, ...] = ()
