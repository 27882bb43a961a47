"""Seed TASK_WAS_RUNNING baselines for running and canceling tasks (SPEC B1, B9),
then repair stale ones (B5).

Skipped with `usageledger db upgrade --skip-was-running-backfill` or
USAGELEDGER_SKIP_WAS_RUNNING_BACKFILL=1 (still recorded as applied; run `usageledger backfill`
later). The downgrade is a deliberate no-op (B6).

Revision ID: 0004_seed_task_baselines
Revises: 0003_seed_app_baselines
"""

from __future__ import annotations

from usageledger.backfill.migration import no_downgrade, seed_in_migration

revision = "0004_seed_task_baselines"
down_revision = "0003_seed_app_baselines"
branch_labels = None
depends_on = None


def upgrade() -> None:
    seed_in_migration("task")


def downgrade() -> None:
    no_downgrade("task")
