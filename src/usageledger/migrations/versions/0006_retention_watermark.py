"""The cleanup's watermark, `usage_event_retention` (SPEC C10; docs/retention.md).

The keep-running cleanup records, per event table and before it deletes, the highest id it has
planned to delete; consumers compare their cursor with it to tell a pruned range from a
rolled-back transaction's id hole. A new, empty table: creating it blocks nothing.

Revision ID: 0006_retention_watermark
Revises: 0005_seed_service_baselines
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from usageledger.schema import usage_event_retention

revision = "0006_retention_watermark"
down_revision = "0005_seed_service_baselines"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.get_bind().execute(sa.schema.CreateTable(usage_event_retention))


def downgrade() -> None:
    op.get_bind().execute(sa.schema.DropTable(usage_event_retention))
