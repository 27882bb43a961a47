"""The repair (SPEC B5): an ending appended after each baseline whose resource stopped meanwhile.

The ending is a copy of the baseline row (one column list, taken from the event table) with a
fresh guid, the repair time, the lifecycle's ending state and previous_state = the baseline's
state. Only the latest baseline of a resource qualifies, so a run appends one ending per resource.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from usageledger import db
from usageledger.backfill.kinds import ResourceKind
from usageledger.backfill.window import NOW, in_window
from usageledger.event_lookups import any_row


def stale_baseline(
    kind: ResourceKind, events: sa.Table, baseline: sa.FromClause
) -> sa.ColumnElement[bool]:
    """`baseline` is its resource's latest baseline, the resource no longer runs, and no ending
    follows it. Evaluated inside the INSERT, so an ending committed meanwhile is respected."""
    lifecycle = kind.lifecycle
    key = baseline.c[lifecycle.key_column]
    later = events.alias("later_event")
    followed = any_row(
        lifecycle,
        later,
        events,
        key,
        (*lifecycle.endings, lifecycle.baseline),
        later.c.id > baseline.c.id,
    )
    return sa.and_(
        # A baseline without a key (a legacy task row's NULL task_guid) pairs with nothing:
        # no ending could close it, so appending one would only repeat on every run (B7).
        key.is_not(None),
        # The window of ids drives the batch. Wrapped, the state cannot lead a planner to the
        # lifecycle index instead: its statistics were taken before this run's seed added the
        # baselines, and a scan of every baseline per window would make the repair quadratic.
        sa.func.coalesce(baseline.c.state, "") == lifecycle.baseline,
        # In this order, and a CASE so that no planner reorders them (PostgreSQL turned a NOT
        # EXISTS into an anti-join that ran after the locking read): most baselines belong to
        # running resources, which the cheap snapshot read drops; then those an ending or a
        # later baseline follows (the ending follows the latest one); and only for the rest,
        # the baselines that will be repaired, the read that takes a row lock.
        sa.case(
            (kind.runs_in_snapshot(key), sa.false()),
            (followed, sa.false()),
            else_=~kind.runs_once_locked(key),
        ),
    )


def repair_statement(kind: ResourceKind, bind: Engine | Connection) -> sa.Insert:
    """Endings for the stale baselines in the batch's window of ids (B5)."""
    events = kind.events
    baseline = events.alias("baseline")
    replaced: dict[str, sa.ColumnElement[Any]] = {
        "guid": db.sql_new_guid(bind),
        "created_at": NOW,
        "state": sa.literal(str(kind.lifecycle.ending), sa.String(255)),
    }
    if "previous_state" in events.c:
        replaced["previous_state"] = baseline.c.state
    names = [column.name for column in events.c if column.name != "id"]
    rows = sa.select(*(replaced.get(name, baseline.c[name]).label(name) for name in names)).where(
        in_window(baseline.c.id),
        stale_baseline(kind, events, baseline),
    )
    return sa.insert(events).from_select(names, rows)
