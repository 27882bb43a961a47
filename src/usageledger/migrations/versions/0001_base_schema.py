"""The base schema: both usage-event tables and the resource tables (SPEC §1).

Revision ID: 0001_base_schema
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from usageledger.schema import EVENT_TABLES, LIFECYCLE_INDEXES, RESOURCE_TABLES

revision = "0001_base_schema"
down_revision = None
branch_labels = None
depends_on = None

# The tables come from schema.py, the one definition of each table. The lifecycle indexes are
# left to 0002, which builds them without blocking writers. A later change to a table is a new
# revision; when one is written, this revision must first be pinned to the columns it created.
TABLES = (*RESOURCE_TABLES, *EVENT_TABLES.values())


def upgrade() -> None:
    bind = op.get_bind()
    for table in TABLES:
        bind.execute(sa.schema.CreateTable(table))
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            if index not in LIFECYCLE_INDEXES:
                bind.execute(sa.schema.CreateIndex(index))


def downgrade() -> None:
    bind = op.get_bind()
    for table in reversed(TABLES):
        bind.execute(sa.schema.DropTable(table))
