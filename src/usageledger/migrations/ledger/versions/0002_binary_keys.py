"""Byte-for-byte key comparison in the ledger on MariaDB.

The ledger tables move to utf8mb4_nopad_bin (see schema.LEDGER_TABLE_OPTIONS): with the default
case-insensitive collation, two resources whose keys differ only in case (or, with any PAD SPACE
collation, in trailing spaces) shared a primary key, and the consumer failed on every batch
after. Ledgers created by ledger_0001 of this release have it already, and converting is then a
no-op; elsewhere nothing changes. The downgrade keeps the collation: going back could fail on
keys that now coexist, and it would bring the collision back.

Revision ID: ledger_0002
Revises: ledger_0001
"""

from __future__ import annotations

from alembic import op

from usageledger.db import use_binary_collation
from usageledger.schema import LEDGER_TABLES

revision = "ledger_0002"
down_revision = "ledger_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in LEDGER_TABLES:
        use_binary_collation(op.get_bind(), table.name)


def downgrade() -> None:
    """Nothing: see the module's docstring."""
