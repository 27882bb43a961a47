"""Reading usage events from the platform database as `UsageEvent` values (SPEC C1).

Every read is a bounded query by id on a short transaction the caller opens; there is no
long-lived server-side cursor, so the platform's cleanup and writers are never held up.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from usageledger import db
from usageledger.lifecycles import APP_USAGE_EVENTS, Lifecycle
from usageledger.reconstruct.billing import ROW_FIELDS, STAGING_STATES, UsageEvent, event_from_row
from usageledger.schema import EVENT_TABLES, app_usage_events, service_usage_events


def event_columns(table: str) -> list[sa.ColumnElement[object]]:
    """The columns the consumer reads from `table`, in the order of `billing.ROW_FIELDS`."""
    source = EVENT_TABLES[table]
    return [source.c[name] for name in ROW_FIELDS[table]]


def _batch_statement(table: str, after_id: int, limit: int) -> sa.Select[*tuple[Any, ...]]:
    """The next `limit` events above `after_id` in id order, each row followed by the table's
    highest id (for the progress display): an uncorrelated subquery the database evaluates
    once, so one round trip gives both."""
    source = EVENT_TABLES[table]
    highest = sa.select(sa.func.max(source.c.id)).scalar_subquery()
    return (
        sa.select(*event_columns(table), highest)
        .where(source.c.id > after_id)
        .order_by(source.c.id)
        .limit(limit)
    )


def fetch_rows(
    conn: Connection, table: str, after_id: int, limit: int
) -> tuple[list[tuple[Any, ...]], int | None]:
    """Up to `limit` events with id > `after_id`, in id order (C1), as the driver's row tuples
    (`billing.ROW_FIELDS[table]`, then the table's highest id; times naive UTC) for the
    consumer's batch fold (`billing.RowFold`), and the table's highest id."""
    rows = db.fetch_rows(conn, _batch_statement(table, after_id, limit))
    top: Any = rows[0][-1] if rows else None
    return rows, (int(top) if top is not None else None)


def fetch_after(conn: Connection, table: str, after_id: int, limit: int) -> list[UsageEvent]:
    """Up to `limit` events with id > `after_id`, in id order (C1), as `UsageEvent`s (the fold,
    tests); times are aware UTC, as SQLAlchemy's column types give them."""
    rows = conn.execute(_batch_statement(table, after_id, limit)).all()
    return [event_from_row(table, row) for row in rows]


def ids_after(conn: Connection, table: str, after_id: int, limit: int) -> list[int]:
    """Up to `limit` ids above `after_id` (primary-key only), to find gaps ahead (C2)."""
    source = EVENT_TABLES[table]
    return list(
        conn.execute(
            sa.select(source.c.id).where(source.c.id > after_id).order_by(source.c.id).limit(limit)
        ).scalars()
    )


def lowest_id(conn: Connection, table: str) -> int | None:
    source = EVENT_TABLES[table]
    value = conn.execute(sa.select(sa.func.min(source.c.id))).scalar()
    return int(value) if value is not None else None


def keys_with_history(
    conn: Connection, lifecycle: Lifecycle | None, table: str, keys: Sequence[str]
) -> set[str]:
    """Which of `keys` still have any opening or ending row (C10: "a kept opening or an
    ending"). `lifecycle` None means staging keys (`parent_app_guid/package_guid`)."""
    found: set[str] = set()
    for start in range(0, len(keys), 500):
        chunk = list(keys[start : start + 500])
        if lifecycle is not None:
            source = EVENT_TABLES[lifecycle.table]
            key = source.c[lifecycle.key_column]
            statement = (
                sa.select(key)
                .where(source.c.state.in_(lifecycle.states), key.in_(chunk))
                .distinct()
            )
            found.update(str(value) for value in conn.execute(statement).scalars())
        else:
            pairs = [tuple(k.split("/", 1)) for k in chunk if "/" in k]
            if not pairs:
                continue
            t = app_usage_events
            statement = (
                sa.select(t.c.parent_app_guid, t.c.package_guid)
                .where(
                    t.c.state.in_(sorted(STAGING_STATES)),
                    t.c.parent_app_guid.in_([p[0] for p in pairs]),
                )
                .distinct()
            )
            wanted = set(pairs)
            for parent, package in conn.execute(statement).all():
                if (parent, package) in wanted:
                    found.add(f"{parent}/{package}")
    return found


def read_all_events(conn: Connection, batch_size: int = 5000) -> Iterator[UsageEvent]:
    """Every event of both tables in id order, in bounded batches on the caller's transaction.

    One transaction, so the fold sees the same snapshot as a set-based query run beside it (CS2).
    """
    for table in (APP_USAGE_EVENTS, service_usage_events.name):
        after = 0
        while True:
            events = fetch_after(conn, table, after, batch_size)
            yield from events
            if len(events) < batch_size:
                break
            after = events[-1].id
