"""The search indexes take each task's entries at once: no GIN pending list (fastupdate off).

GIN indexes default to `fastupdate`: an insert appends its entries to a pending list, merged
into the index by VACUUM or once the list outgrows `gin_pending_list_limit` (4 MB), and every
search reads the whole list before the index. The list holds everyone's recent writes, so a
search's cost followed other users' activity (issue 21, point 5): the heavy user's search, 0.7
ms in PostgreSQL with an empty list, took 1.9 ms once 375 pages of other users' new tasks were
pending. With `fastupdate = off` an insert puts its entries in the index itself (about 50 us
more per task INSERT, measured) and a search reads its own entries only. The lists pending now
are merged here.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07 09:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = (
    "ix_tasks_personal_owner_scoped",
    "ix_tasks_personal_assignee_scoped",
    "ix_tasks_project_scoped",
)


def upgrade() -> None:
    # Each statement in a transaction of its own: ALTER INDEX holds the index ACCESS EXCLUSIVE
    # (every write to `tasks` waits) until its transaction ends, which must not include a merge.
    with op.get_context().autocommit_block():
        for index in INDEXES:
            op.execute(f"ALTER INDEX {index} SET (fastupdate = off)")
            # Off stops new entries going to the list; what is pending stays until merged.
            op.execute(f"SELECT gin_clean_pending_list('{index}'::regclass)")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        for index in INDEXES:
            op.execute(f"ALTER INDEX {index} RESET (fastupdate)")
