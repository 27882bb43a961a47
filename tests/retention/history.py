"""Usage-event histories written straight into the tables, in a chosen id order.

Retention tests need rows whose `created_at` disagrees with id order; the producer never writes
those on purpose, so the rows are inserted directly, one per event, in the order given.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from usageledger import db
from usageledger.clock import SimulatedClock
from usageledger.lifecycles import APP_PROCESS, APP_USAGE_EVENTS, TASK, lifecycles_of
from usageledger.schema import EVENT_TABLES

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CUTOFF_DAYS = 31
CUTOFF = NOW - timedelta(days=CUTOFF_DAYS)


def clock() -> SimulatedClock:
    return SimulatedClock(NOW)


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


OLD = days_ago(40)
FRESH = days_ago(1)


@attrs.frozen
class Event:
    """One usage event as a test writes it: state, lifecycle key, time. A key of None is a
    NULL key: a legacy task row without task_guid (the other key columns are NOT NULL)."""

    state: str
    key: str | None
    created_at: datetime


@attrs.frozen
class StoredEvent:
    id: int
    state: str
    key: str | None
    created_at: datetime


def lifecycle_key_column(table: str, state: str) -> str | None:
    for lc in lifecycles_of(table):
        if state in lc.states:
            return lc.key_column
    return None


def row_values(table: str, event: Event) -> dict[str, object]:
    """Every NOT NULL column filled; the key goes where the event's lifecycle keys it."""
    common: dict[str, object] = {
        "guid": str(uuid.uuid4()),
        "created_at": event.created_at,
        "state": event.state,
        "org_guid": "org-1",
        "space_guid": "space-1",
        "space_name": "space",
    }
    if table == APP_USAGE_EVENTS:
        column = lifecycle_key_column(table, event.state)
        return {
            **common,
            "instance_count": 1,
            "memory_in_mb_per_instance": 256,
            "app_guid": event.key if column == APP_PROCESS.key_column else "",
            "app_name": "app" if column == APP_PROCESS.key_column else "",
            "task_guid": event.key if column == TASK.key_column else None,
            "parent_app_guid": event.key if column is None else None,
            "package_guid": event.key if column is None else None,
        }
    return {
        **common,
        "service_instance_guid": event.key,
        "service_instance_name": "db",
        "service_instance_type": "managed_service_instance",
    }


def load(engine: Engine, table: str, events: Sequence[Event]) -> list[StoredEvent]:
    """Empty `table` (ids restarted) and write `events` so that their ids follow list order."""
    t = EVENT_TABLES[table]
    db.truncate_tables(engine, [t])
    if not events:
        return []
    values = [row_values(table, e) for e in events]
    with engine.begin() as conn:
        # One multi-row insert; the assertion below checks that ids follow list order.
        conn.execute(t.insert(), values)
        ids = {guid: row_id for guid, row_id in conn.execute(sa.select(t.c.guid, t.c.id))}
    stored = [
        StoredEvent(int(ids[str(v["guid"])]), e.state, e.key, e.created_at)
        for v, e in zip(values, events, strict=True)
    ]
    assert [s.id for s in stored] == sorted(s.id for s in stored), "ids must follow list order"
    return stored


def remaining_ids(engine: Engine, table: str) -> set[int]:
    t = EVENT_TABLES[table]
    with engine.connect() as conn:
        return set(conn.execute(sa.select(t.c.id)).scalars())


def realistic_history(table: str, seed: int, *, resources: int = 12) -> list[Event]:
    """Long-running resources resized often, some stopped and restarted, tasks and staging noise;
    most rows old, the last ones fresh, created_at jittered by a few hours against id order."""
    rng = random.Random(seed)
    events: list[Event] = []
    span = 60.0  # days of history; the cutoff (31 days) splits it about in half
    steps = resources * 14
    for step in range(steps):
        age = span * (1 - step / steps) + rng.uniform(-0.2, 0.2)
        when = NOW - timedelta(days=max(age, 0.0))
        r = rng.randrange(resources)
        roll = rng.random()
        if table == APP_USAGE_EVENTS:
            if roll < 0.55:
                state = "STARTED"
            elif roll < 0.65:
                state = "STOPPED"
            elif roll < 0.75:
                state = "TASK_STARTED"
            elif roll < 0.85:
                state = "TASK_STOPPED"
            else:
                state = rng.choice(["STAGING_STARTED", "STAGING_STOPPED", "BUILDPACK_SET"])
            key = f"t{r % 4}-{step // 40}" if state.startswith("TASK") else f"p{r}"
        else:
            state = "UPDATED" if roll < 0.6 else "CREATED" if roll < 0.8 else "DELETED"
            key = f"s{r}"
        events.append(Event(state, key, when))
    return events


def audit_table(name: str) -> sa.Table:
    """A table with an id and a created_at but no lifecycles (R4), in metadata of its own."""
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("state", sa.String(255), nullable=False),
    )
