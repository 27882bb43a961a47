"""Seed WAS_RUNNING baselines for existing service instances (SPEC B1, B9),
then repair stale ones (B5).

Skipped with `usageledger db upgrade --skip-was-running-backfill` or
USAGELEDGER_SKIP_WAS_RUNNING_BACKFILL=1 (still recorded as applied; run `usageledger backfill`
later). The downgrade is a deliberate no-op (B6).

Revision ID: 0005_seed_service_baselines
Revises: 0004_seed_task_baselines
"""

from __future__ import annotations

from usageledger.backfill.migration import no_downgrade, seed_in_migration

revision = "0005_seed_service_baselines"
down_revision = "0004_seed_task_baselines"
branch_labels = None
depends_on = None


def upgrade() -> None:
    seed_in_migration("service")


def downgrade() -> None:
    no_downgrade("service")
