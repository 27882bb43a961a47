"""The seed (SPEC B1–B4): one baseline per running resource whose current run is not on record.

A batch is one INSERT…SELECT over a window of the resource table's ids; the database builds
every row, so no resource passes through Python. Before it, the batch share-locks the running
resources of its window (`lock_statement`), so that it never reads a resource that a producer
transaction is changing at that moment.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from usageledger import db
from usageledger.backfill.kinds import ResourceKind
from usageledger.backfill.window import NOW, in_window
from usageledger.event_lookups import any_row, in_states, state_groups
from usageledger.lifecycles import Lifecycle


def current_run_on_record(
    lifecycle: Lifecycle, events: sa.Table, key: sa.ColumnElement[str]
) -> sa.ColumnElement[bool]:
    """B2: an opening of `lifecycle` for `key` with no ending after it (by id).

    Written as "an opening above the last ending", so every lookup is an index seek on this one
    key's rows (see event_lookups). The `+ 0` keeps PostgreSQL from answering MAX(id) by walking the
    primary key backwards until a row of this key turns up (its min/max rewrite).
    """
    opening = events.alias("recorded_opening")
    ending = events.alias("recorded_ending")
    last_endings = [
        sa.func.coalesce(
            sa.select(sa.func.max(ending.c.id + 0))
            .where(
                in_states(ending.c.state, group), db.key_equals(ending.c[lifecycle.key_column], key)
            )
            # Two levels below the resource table: auto-correlation would not reach it.
            .correlate_except(ending)
            .scalar_subquery(),
            0,
        )
        for group in state_groups(lifecycle, events, lifecycle.endings)
    ]
    return any_row(
        lifecycle,
        opening,
        events,
        key,
        lifecycle.openings,
        *(opening.c.id > last for last in last_endings),
    )


def seed_statement(kind: ResourceKind, bind: Engine | Connection) -> sa.Insert:
    """Baselines for the running resources in the batch's window of ids (B1, B2, B4)."""
    source = kind.source
    rows = db.join_in_written_order(kind.baseline(db.sql_new_guid(bind), NOW)).where(
        in_window(source.c.id),
        kind.running,
        ~current_run_on_record(kind.lifecycle, kind.events, source.c.guid),
    )
    names = [column.name for column in rows.selected_columns]
    return sa.insert(kind.events).from_select(names, rows)


def lock_statement(kind: ResourceKind) -> sa.Select[tuple[int]]:
    """Share-lock the window's running resources, waiting for producer transactions on them.

    Without it the seed reads the resource rows from its snapshot: a stop in flight (its
    ending already has an id) still looks running and gets a baseline after its ending, which
    only a repair run after the stop committed can close; a scale or plan change in flight
    gets a baseline with the size from before it, after its event, and no repair ever looks
    at a running resource (B4, B5). Once the locks are held the INSERT…SELECT, a new statement
    at READ COMMITTED, reads the committed outcome, and no producer can change these rows until
    the batch commits a moment later.

    A statement of its own rather than a locking INSERT…SELECT: MariaDB holds the table's
    AUTO-INC lock for the whole of an INSERT…SELECT, so waiting there for a producer that then
    inserts its own event would deadlock. Producers lock one resource row each, and this
    statement takes its locks in id order. SQLite has no row locks (one writer at a time).
    """
    source = kind.source
    return (
        sa.select(source.c.id)
        .where(in_window(source.c.id), kind.running)
        .order_by(source.c.id)
        .with_for_update(read=True)
    )
