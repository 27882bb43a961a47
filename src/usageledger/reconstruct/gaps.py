"""Id gaps and the grace period (SPEC C2), as pure decisions over ids and times.

Ids are allocated before commit, so a missing id below a visible one may still be a transaction
in flight. The reader never moves its cursor past a missing id until the gap has been known for
`grace` on the consumer's own clock; after that the hole is taken as a rollback and recorded as
permanent. Gaps are recorded the first time they are seen, including those ahead of the first
blocking one, so that one grace period covers every hole seen in one read.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

import attrs


@attrs.frozen
class IdRange:
    """Ids `first` to `last`, both included."""

    first: int
    last: int


@attrs.frozen
class KnownGap:
    """A gap the ledger has on record as open, with the consumer-clock time it was first seen."""

    first: int
    last: int
    first_seen_at: datetime


@attrs.frozen
class ReadPlan:
    """What to do with one batch of ids.

    `apply` is how many of the batch's ids to apply (a prefix); `position` is the new cursor;
    `passed` are the gaps below `position` now taken as permanent (with the time each was first
    seen); `new_gaps` are gaps above `position` to record as open from now; `blocked_by` is the
    gap the cursor waits at, if any.
    """

    apply: int
    position: int
    passed: tuple[KnownGap, ...]
    new_gaps: tuple[IdRange, ...]
    blocked_by: IdRange | None


def _uncovered(missing: IdRange, known: Sequence[KnownGap]) -> list[IdRange]:
    parts: list[IdRange] = []
    cursor = missing.first
    for gap in sorted(known, key=lambda g: g.first):
        if gap.last < cursor or gap.first > missing.last:
            continue
        if gap.first > cursor:
            parts.append(IdRange(cursor, gap.first - 1))
        cursor = max(cursor, gap.last + 1)
        if cursor > missing.last:
            break
    if cursor <= missing.last:
        parts.append(IdRange(cursor, missing.last))
    return parts


def _first_seen(
    missing: IdRange, known: Sequence[KnownGap], now: datetime
) -> tuple[datetime, list[IdRange]]:
    """When `missing` was first seen as a whole (the latest of its parts), and its unseen parts."""
    fresh = _uncovered(missing, known)
    times = [
        g.first_seen_at for g in known if not (g.last < missing.first or g.first > missing.last)
    ]
    if fresh:
        times.append(now)
    return max(times), fresh


def plan_read(
    position: int,
    ids: Sequence[int],
    known: Sequence[KnownGap],
    *,
    now: datetime,
    grace: timedelta,
    lookahead: Sequence[int] = (),
    settled_through: int = 0,
) -> ReadPlan:
    """Decide how far the cursor at `position` may move over the sorted `ids` it just read.

    `lookahead` holds further ids beyond the batch (ids only): their gaps are recorded too when
    the cursor is blocked, so holes ahead start their grace period now rather than one at a time.
    A gap wholly at or below `settled_through` passes at once: a cleanup has pruned through it
    (C10), and no transaction allocates an id below rows older than the cleanup's cutoff and
    is still uncommitted.
    """
    expected = position + 1
    passed: list[KnownGap] = []
    new_gaps: list[IdRange] = []
    blocked: IdRange | None = None
    applied = 0
    for event_id in ids:
        if event_id > expected:
            missing = IdRange(expected, event_id - 1)
            seen_at, fresh = _first_seen(missing, known, now)
            if blocked is None and (now - seen_at >= grace or missing.last <= settled_through):
                passed.append(KnownGap(missing.first, missing.last, seen_at))
            else:
                blocked = blocked or missing
                new_gaps.extend(fresh)
        if blocked is None:
            applied += 1
            position = event_id
        expected = event_id + 1
    if blocked is not None:
        for event_id in lookahead:
            if event_id > expected:
                new_gaps.extend(_uncovered(IdRange(expected, event_id - 1), known))
            expected = max(expected, event_id + 1)
    return ReadPlan(
        apply=applied,
        position=position,
        passed=tuple(passed),
        new_gaps=tuple(g for g in new_gaps if g.first > position),
        blocked_by=blocked,
    )
