"""The reference consumer's ledger: cursors, resource states, segments, findings, gaps.

Revision ID: ledger_0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from usageledger.schema import LEDGER_TABLES

revision = "ledger_0001"
down_revision = None
branch_labels = None
depends_on = None

# The tables come from schema.py, the one definition of each. A later change to a ledger table
# is a new revision; when one is written, this revision must first be pinned to its columns.


def upgrade() -> None:
    bind = op.get_bind()
    for table in LEDGER_TABLES:
        bind.execute(sa.schema.CreateTable(table))
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            bind.execute(sa.schema.CreateIndex(index))


def downgrade() -> None:
    bind = op.get_bind()
    for table in reversed(LEDGER_TABLES):
        bind.execute(sa.schema.DropTable(table))
