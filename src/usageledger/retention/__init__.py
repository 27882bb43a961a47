"""Retention: the keep-running cleanup of the usage-event tables (SPEC §4, R1–R11).

`cleanup` is the whole run. `plan_cleanup`, `prune_superseded_openings` and
`prune_non_openings` are its steps, public so that an operator (or a test) can run pass 1 alone
and see that the table stays consistent between passes (R7).
"""

from __future__ import annotations

from usageledger.retention.decision import NO_LIFECYCLE
from usageledger.retention.run import (
    ALL_OLD_ROWS,
    DEFAULT_BATCH_SIZE,
    DEFAULT_CUTOFF_AGE_IN_DAYS,
    MAX_BATCH_SIZE,
    MAX_CUTOFF_AGE_IN_DAYS,
    NON_OPENINGS,
    SUPERSEDED_OPENINGS,
    BatchProgress,
    CleanupPlan,
    CleanupResult,
    OnBatch,
    PassResult,
    check_cleanup_options,
    cleanup,
    cleanup_tables,
    cutoff_for,
    plan_cleanup,
    prune_all_old_rows,
    prune_non_openings,
    prune_superseded_openings,
    resolve_table,
)

__all__ = [
    "ALL_OLD_ROWS",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CUTOFF_AGE_IN_DAYS",
    "MAX_BATCH_SIZE",
    "MAX_CUTOFF_AGE_IN_DAYS",
    "NON_OPENINGS",
    "NO_LIFECYCLE",
    "SUPERSEDED_OPENINGS",
    "BatchProgress",
    "CleanupPlan",
    "CleanupResult",
    "OnBatch",
    "PassResult",
    "check_cleanup_options",
    "cleanup",
    "cleanup_tables",
    "cutoff_for",
    "plan_cleanup",
    "prune_all_old_rows",
    "prune_non_openings",
    "prune_superseded_openings",
    "resolve_table",
]
