"""Cursor witness for C10, and byte-for-byte key comparison on MariaDB.

`ledger_cursors.last_witness_id` remembers the last applied event that retention deletes once
it is old whatever else it keeps; the consumer finds it gone when a cleanup's cutoff has passed
its cursor (C10). Existing cursors start without one and get it from their next batch.

On MariaDB the ledger tables move to binary collation (see schema.LEDGER_TABLE_OPTIONS): with
the default case-insensitive one, two resources whose keys differ only in case shared a primary
key. Ledgers created by ledger_0001 of this release already have it, and converting is then a
no-op. The downgrade drops the column and keeps the collation: going back to case-insensitive
keys could fail on keys that now coexist, and it would bring the collision back.

Revision ID: ledger_0002
Revises: ledger_0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from usageledger.db import use_binary_collation
from usageledger.schema import LEDGER_TABLES

revision = "ledger_0002"
down_revision = "ledger_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("ledger_cursors", sa.Column("last_witness_id", sa.BigInteger, nullable=True))
    for table in LEDGER_TABLES:
        use_binary_collation(op.get_bind(), table.name)


def downgrade() -> None:
    with op.batch_alter_table("ledger_cursors") as batch:
        batch.drop_column("last_witness_id")
