"""The problems of shared projects (API.md part 2, "Projects"), raised by the projects and the
tasks domains alike; formatted by the one handler in taskapi.kit.errors like every other."""

from __future__ import annotations

from taskapi.kit.errors import Conflict, Forbidden, NotFound, ValidationFailed


class ProjectNotFound(NotFound):
    code, title = "project_not_found", "Project not found"
    default_detail = "No project with this id exists or you are not a member of it."


class UserNotFound(NotFound):
    code, title = "user_not_found", "User not found"
    default_detail = "No user with this id exists."


class MemberNotFound(NotFound):
    code, title = "member_not_found", "Member not found"
    default_detail = "This user is not a member of the project."


class InsufficientRole(Forbidden):
    code, title = "insufficient_role", "Insufficient role"
    default_detail = "Your role in this project does not allow this."


class ProjectNameTaken(Conflict):
    code, title = "project_name_taken", "Project name taken"
    default_detail = "You already own a project with this name."


class LastAdmin(Conflict):
    code, title = "last_admin", "Last admin"
    default_detail = "A project must keep at least one admin."


class ProjectArchived(Conflict):
    code, title = "project_archived", "Project archived"
    default_detail = "The project is archived: its tasks are read-only until it is unarchived."


class AssigneeNotMember(ValidationFailed):
    code, title = "assignee_not_member", "Assignee not a member"
    default_detail = "The assignee of a project task must be a member of the project."
