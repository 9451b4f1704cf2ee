"""Shared projects and their members."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Enum,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from taskapi.kit.db import Base
from taskapi.models.enums import (
    ProjectRole,
    enum_values,
)


class Project(Base):
    """A shared set of tasks: its members see them, each with a role (`ProjectMember`)."""

    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    # The creator; SET NULL: the project outlives its creator's account (other admins run it).
    owner_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="SET NULL")
    )
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str | None] = mapped_column(Text)
    archived: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    # Kept in the transaction of each membership change, so a list needs no count.
    member_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    version: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint("char_length(name) BETWEEN 1 AND 100", name="name_length"),
        # Unique per owner, case-insensitively (409 project_name_taken).
        Index("uq_projects_owner_name_lower", "owner_id", func.lower(name), unique=True),
    )
    __mapper_args__ = {"eager_defaults": True, "version_id_col": version}  # noqa: RUF012


class ProjectMember(Base):
    __tablename__ = "project_members"

    project_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[ProjectRole] = mapped_column(
        Enum(ProjectRole, name="project_role", values_callable=enum_values)
    )
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        # "Which projects is this user in" (every visibility check): an index-only scan.
        Index("ix_project_members_user_project", "user_id", "project_id", "role"),
    )
    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012
