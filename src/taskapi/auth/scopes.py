"""What a personal access token may be allowed to do (API.md part 2, "Personal access tokens").

A login (an access token from /auth) may do everything; a personal access token only what its
scopes allow. Each route declares its need once, with `taskapi.auth.dependencies.requires(...)`
or `login_only`; tests/api/test_token_scopes.py fails for a route that declares neither.
"""

from __future__ import annotations

from enum import StrEnum


class Scope(StrEnum):
    TASKS_READ = "tasks:read"
    TASKS_WRITE = "tasks:write"
    PROJECTS_READ = "projects:read"
    PROJECTS_WRITE = "projects:write"
    EVENTS_READ = "events:read"
    WEBHOOKS_WRITE = "webhooks:write"
    NOTIFICATIONS = "notifications"


SCOPE_DESCRIPTIONS: dict[str, str] = {
    Scope.TASKS_READ: "Read tasks, their tags, files, stats and your trash",
    Scope.TASKS_WRITE: "Create, change, transition and delete tasks; tags, files, trash, bulk "
    "and batch writes",
    Scope.PROJECTS_READ: "Read the projects you are a member of and their members",
    Scope.PROJECTS_WRITE: "Create, change and delete projects; manage their members",
    Scope.EVENTS_READ: "Follow the change feed and its stream; read a task's activity",
    Scope.WEBHOOKS_WRITE: "Manage your webhooks and read their deliveries",
    Scope.NOTIFICATIONS: "Read your notifications and mark them read",
}
