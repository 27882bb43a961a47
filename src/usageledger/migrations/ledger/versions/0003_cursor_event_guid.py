"""The guid of the cursor's last applied event, to recognise a recreated source table (C1).

A consumer whose platform tables were dropped and created again (ids start at 1 anew) must not
read on from its old cursor: every new event up to it would be skipped. The id alone cannot tell
once the new table has grown past the old cursor; the guid at that id can. Cursors written
before this revision have none, and get one with their next batch.

Revision ID: ledger_0003
Revises: ledger_0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "ledger_0003"
down_revision = "ledger_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("ledger_cursors", sa.Column("last_event_guid", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ledger_cursors") as batch:
        batch.drop_column("last_event_guid")
