"""The reference consumer's ledger: cursors, resource states, segments, findings, gaps.

Revision ID: ledger_0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from usageledger.schema import LEDGER_TABLE_OPTIONS, LEDGER_TABLES, UTCDateTime, ledger_cursors

revision = "ledger_0001"
down_revision = None
branch_labels = None
depends_on = None

# The tables come from schema.py, the one definition of each, except where a later revision
# changed one: that table is pinned here to the columns this revision created.

#: ledger_cursors as this revision created it; ledger_0002 adds last_witness_id.
_cursors_0001 = sa.Table(
    "ledger_cursors",
    sa.MetaData(),
    sa.Column("consumer", sa.String(100), primary_key=True),
    sa.Column("source_table", sa.String(64), primary_key=True),
    sa.Column("position", sa.BigInteger, nullable=False),
    sa.Column("last_event_id", sa.BigInteger, nullable=True),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    **LEDGER_TABLE_OPTIONS,
)


def _as_created(table: sa.Table) -> sa.Table:
    return _cursors_0001 if table is ledger_cursors else table


def upgrade() -> None:
    bind = op.get_bind()
    for table in map(_as_created, LEDGER_TABLES):
        bind.execute(sa.schema.CreateTable(table))
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            bind.execute(sa.schema.CreateIndex(index))


def downgrade() -> None:
    bind = op.get_bind()
    for table in reversed(LEDGER_TABLES):
        bind.execute(sa.schema.DropTable(_as_created(table)))
