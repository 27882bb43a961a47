"""Looking up one resource's event rows by state, in the shape each index can answer (the
backfill's B2 and B5, current-state's start of a run, CS1).

The lifecycle index is (state, key, id) for app processes and service instances: there one
equality per state is a seek, while MariaDB seeks an IN list on its first column only and would
scan every row of those states. Task rows key on task_guid, which has an index of its own and
is not in the lifecycle index: there the states go in one IN list, so no planner mistakes
"state = TASK_WAS_RUNNING" (few rows when statistics were taken, many once seeding runs) for
the cheap way in.
"""

from __future__ import annotations

import sqlalchemy as sa

from usageledger.db import key_equals
from usageledger.lifecycles import Lifecycle
from usageledger.schema import LIFECYCLE_INDEXES


def _indexed_by_state_and_key(events: sa.Table, key_column: str) -> bool:
    return any(
        index.table is events and [c.name for c in index.columns][:2] == ["state", key_column]
        for index in LIFECYCLE_INDEXES
    )


def state_groups(
    lifecycle: Lifecycle, events: sa.Table, states: tuple[str, ...]
) -> list[tuple[str, ...]]:
    """`states` split into the groups one lookup each should cover."""
    if _indexed_by_state_and_key(events, lifecycle.key_column):
        return [(state,) for state in states]
    return [states]


def in_states(column: sa.ColumnElement[str], group: tuple[str, ...]) -> sa.ColumnElement[bool]:
    if len(group) == 1:
        return column == group[0]
    return column.in_(group)


def any_row(
    lifecycle: Lifecycle,
    alias: sa.FromClause,
    events: sa.Table,
    key: sa.ColumnElement[str],
    states: tuple[str, ...],
    *conditions: sa.ColumnElement[bool],
) -> sa.ColumnElement[bool]:
    """A row of `alias` for `key` in one of `states` that meets `conditions`."""
    return sa.or_(
        *(
            sa.exists().where(
                in_states(alias.c.state, group),
                key_equals(alias.c[lifecycle.key_column], key),
                *conditions,
            )
            for group in state_groups(lifecycle, events, states)
        )
    )
