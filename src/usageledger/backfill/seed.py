"""The seed (SPEC B1–B4): one baseline per running resource whose current run is not on record.

A batch is one INSERT…SELECT over a window of the resource table's ids; the database builds
every row, so no resource passes through Python.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from usageledger import db
from usageledger.backfill.kinds import ResourceKind
from usageledger.backfill.lookups import any_row, in_states, state_groups
from usageledger.backfill.window import NOW, in_window
from usageledger.lifecycles import Lifecycle


def current_run_on_record(
    lifecycle: Lifecycle, events: sa.Table, key: sa.ColumnElement[str]
) -> sa.ColumnElement[bool]:
    """B2: an opening of `lifecycle` for `key` with no ending after it (by id).

    Written as "an opening above the last ending", so every lookup is an index seek on this one
    key's rows (see lookups). The `+ 0` keeps PostgreSQL from answering MAX(id) by walking the
    primary key backwards until a row of this key turns up (its min/max rewrite).
    """
    opening = events.alias("recorded_opening")
    ending = events.alias("recorded_ending")
    last_endings = [
        sa.func.coalesce(
            sa.select(sa.func.max(ending.c.id + 0))
            .where(in_states(ending.c.state, group), ending.c[lifecycle.key_column] == key)
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
