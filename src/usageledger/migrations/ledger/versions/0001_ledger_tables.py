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

# The tables come from schema.py, the one definition of each, less the columns later
# revisions add (each such revision adds its column here).
ADDED_LATER = {"ledger_cursors": {"last_event_guid"}}  # ledger_0003


def _as_of_this_revision(table: sa.Table) -> sa.Table:
    later = ADDED_LATER.get(table.name)
    if not later:
        return table
    columns = [c._copy() for c in table.columns if c.name not in later]
    return sa.Table(table.name, sa.MetaData(), *columns, **table.kwargs)


def upgrade() -> None:
    bind = op.get_bind()
    for table in LEDGER_TABLES:
        bind.execute(sa.schema.CreateTable(_as_of_this_revision(table)))
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            bind.execute(sa.schema.CreateIndex(index))


def downgrade() -> None:
    bind = op.get_bind()
    for table in reversed(LEDGER_TABLES):
        bind.execute(sa.schema.DropTable(table))
