"""A small pure-Python model of retention (SPEC R2, R3, R5–R7), written from the rule text.

It answers which ids survive one cleanup, by brute force over the history, so the database's
one-pass walk can be checked against it. No database code here.

A NULL key (None) pairs with nothing, as in SQL (NULL never equals NULL) and in the consumer
(a lifecycle row without its key is its `missing_key`): a NULL-key row is in no key's history,
so a NULL-key opening is never prunable (R5) and a NULL-key ending closes nothing and is an
old non-opening like any other (R7). The empty string is a key like any other.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime

from tests.retention.history import StoredEvent
from usageledger.lifecycles import Lifecycle, lifecycles_of, opening_states


def _by_key(rows: Iterable[StoredEvent], lifecycle: Lifecycle) -> dict[str, list[StoredEvent]]:
    """The lifecycle's rows per key, by id; rows with a NULL key belong to no key."""
    groups: dict[str, list[StoredEvent]] = defaultdict(list)
    for row in sorted(rows, key=lambda r: r.id):
        if row.state in lifecycle.states and row.key is not None:
            groups[row.key].append(row)
    return groups


def superseded_openings(rows: Sequence[StoredEvent], table: str, cutoff: datetime) -> set[int]:
    """R5/R6: old openings that a later old ending closes, or that are neither first nor latest."""
    prunable: set[int] = set()
    for lc in lifecycles_of(table):
        for events in _by_key(rows, lc).values():
            old_openings = [e for e in events if e.state in lc.openings and e.created_at < cutoff]
            old_endings = [e for e in events if e.state in lc.endings and e.created_at < cutoff]
            all_endings = [e for e in events if e.state in lc.endings]
            for r in old_openings:
                run_over = any(e.id > r.id for e in old_endings)
                has_earlier_in_run = any(
                    p.id < r.id and not any(p.id < x.id < r.id for x in all_endings)
                    for p in old_openings
                )
                has_later = any(q.id > r.id for q in old_openings)
                if run_over or (has_earlier_in_run and has_later):
                    prunable.add(r.id)
    return prunable


def endings_still_needed(rows: Sequence[StoredEvent], table: str, removed: set[int]) -> set[int]:
    """Endings whose run still has an opening after `removed` is gone: deleting them would make
    that opening look like a running resource (the invariant behind R7)."""
    needed: set[int] = set()
    for lc in lifecycles_of(table):
        for events in _by_key(rows, lc).values():
            run_has_opening = False
            for e in events:
                if e.state in lc.openings and e.id not in removed:
                    run_has_opening = True
                elif e.state in lc.endings:
                    if run_has_opening:
                        needed.add(e.id)
                    run_has_opening = False
    return needed


def kept_after_cleanup(
    rows: Sequence[StoredEvent],
    table: str,
    cutoff: datetime,
    *,
    keep_running_records: bool = True,
    keep_at_least_one_record: bool = True,
) -> set[int]:
    """The ids one complete cleanup keeps."""
    all_ids = {r.id for r in rows}
    old = {r.id for r in rows if r.created_at < cutoff}
    if keep_running_records:
        openings = opening_states(table)
        pass_1 = superseded_openings(rows, table, cutoff)
        if keep_at_least_one_record and all_ids:
            pass_1.discard(max(all_ids))
        needed = endings_still_needed(rows, table, pass_1)
        pass_2 = {r.id for r in rows if r.id in old and r.state not in openings} - needed
        deleted = pass_1 | pass_2
    else:
        deleted = set(old)  # R3
    if keep_at_least_one_record and all_ids:
        deleted.discard(max(all_ids))  # R2
    return all_ids - deleted


def safety_violations(history: Sequence[StoredEvent], table: str, remaining: set[int]) -> list[str]:
    """What a table after (part of) a cleanup must never show (SPEC I6, R7).

    Every resource still running per `history` keeps the first opening of its current run and
    its latest opening; no opening remains whose ending is gone; no opening with a NULL key,
    which nothing shows over, is gone.
    """
    problems: list[str] = []
    for lc in lifecycles_of(table):
        for e in history:
            if e.state in lc.openings and e.key is None and e.id not in remaining:
                problems.append(f"{lc.kind}: opening {e.id} with a NULL key is gone")
        for key, events in _by_key(history, lc).items():
            run: list[StoredEvent] = []
            for e in events:
                if e.state in lc.openings:
                    run.append(e)
                else:
                    if e.id not in remaining:
                        left = [o.id for o in run if o.id in remaining]
                        if left:
                            problems.append(
                                f"{lc.kind} {key}: ending {e.id} gone, openings {left} remain"
                            )
                    run = []
            if run:
                for must in {run[0].id, run[-1].id}:
                    if must not in remaining:
                        problems.append(f"{lc.kind} {key} is running but lost opening {must}")
    return problems
