"""The backfill as the seed migrations run it (SPEC B6, B9).

A seed migration waits for the run lock and seeds (and repairs) its kind, unless the operator set
the skip flag; either way Alembic records it as applied. Its downgrade changes nothing.
"""

from __future__ import annotations

import logging

from alembic import context, op

from usageledger.backfill.run import backfill
from usageledger.migrations import ENV_SKIP_WAS_RUNNING_BACKFILL, SKIP_WAS_RUNNING_BACKFILL

log = logging.getLogger(__name__)


def seed_in_migration(kind: str) -> None:
    """Run the backfill for `kind` from inside a migration's `upgrade()`."""
    if context.config.attributes.get(SKIP_WAS_RUNNING_BACKFILL):
        log.warning(
            "skipped seeding %s baselines (--skip-was-running-backfill or $%s=1); "
            "run `usageledger backfill` to seed them",
            kind,
            ENV_SKIP_WAS_RUNNING_BACKFILL,
        )
        return
    migration = op.get_context()
    engine = op.get_bind().engine
    # The backfill works on connections of its own (one transaction per batch, the lock held on
    # one of them), so the migration's transaction is committed first and none stays open
    # meanwhile: on SQLite an open migration transaction holds the write lock and every batch
    # would wait for it.
    with migration.autocommit_block():
        backfill(engine, wait_for_lock=True, kinds=(kind,))


def no_downgrade(kind: str) -> None:
    """B6: consumers may already have read the baselines, so a downgrade keeps them."""
    log.info("downgrade keeps the %s baselines already written (SPEC B6)", kind)
