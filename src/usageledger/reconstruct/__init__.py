"""Reconstruct: the forward-reading billing consumer, its ledger, and current state (SPEC §6, §7).

`billing` is the pure state machine (UsageEvent in, Segment and Finding out, `fold`); `gaps`
the pure C2 decisions; `consumer` the reader and batch loop; `ledger_store` the ledger tables;
`current_state` the set-based query and its cross-check by the fold.
"""

from __future__ import annotations

from usageledger.reconstruct.billing import (
    Finding,
    FindingCode,
    Footprint,
    Ledger,
    ResourceState,
    Segment,
    UsageEvent,
    fold,
)

__all__ = [
    "Finding",
    "FindingCode",
    "Footprint",
    "Ledger",
    "ResourceState",
    "Segment",
    "UsageEvent",
    "fold",
]
