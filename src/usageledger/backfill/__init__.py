"""Backfill (SPEC §5): seed a baseline for every running resource whose start is no longer on
record, then repair baselines whose resource stopped meanwhile. Never deletes or updates a row."""

from __future__ import annotations

from usageledger.backfill.run import (
    BACKFILL_LOCK,
    DEFAULT_BATCH_SIZE,
    KIND_NAMES,
    BackfillResult,
    BatchReport,
    KindResult,
    Phase,
    backfill,
    backfill_batches,
    summarize,
    validate_batch_size,
)

__all__ = [
    "BACKFILL_LOCK",
    "DEFAULT_BATCH_SIZE",
    "KIND_NAMES",
    "BackfillResult",
    "BatchReport",
    "KindResult",
    "Phase",
    "backfill",
    "backfill_batches",
    "summarize",
    "validate_batch_size",
]
