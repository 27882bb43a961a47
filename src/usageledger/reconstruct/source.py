"""Reading usage events from the platform database as `UsageEvent` values (SPEC C1).

Every read is a bounded query by id on a short transaction the caller opens; there is no
long-lived server-side cursor, so the platform's cleanup and writers are never held up.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from usageledger import db
from usageledger.lifecycles import APP_USAGE_EVENTS, Lifecycle
from usageledger.reconstruct.billing import ROW_FIELDS, STAGING_STATES, UsageEvent, event_from_row
from usageledger.schema import EVENT_TABLES, service_usage_events, usage_event_retention

#: Keys or ids per lookup statement (a bound parameter each; well under every backend's limit).
_KEYS_PER_QUERY = 500


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
    return _id_bound(conn, table, sa.func.min)


def guid_at(conn: Connection, table: str, event_id: int) -> str | None:
    """The guid of the row with this id, or None where there is none (pruned, or never)."""
    source = EVENT_TABLES[table]
    value = conn.execute(sa.select(source.c.guid).where(source.c.id == event_id)).scalar()
    return str(value) if value is not None else None


def highest_id(conn: Connection, table: str) -> int | None:
    return _id_bound(conn, table, sa.func.max)


def _id_bound(conn: Connection, table: str, bound: Any) -> int | None:
    value = conn.execute(sa.select(bound(EVENT_TABLES[table].c.id))).scalar()
    return int(value) if value is not None else None


def retention_watermark(conn: Connection, table: str) -> tuple[int, datetime] | None:
    """The highest id any keep-running cleanup of `table` has planned to delete (C10) and the
    cutoff of the run that raised it, or None where none ran or the platform database has no
    `usage_event_retention` table (a platform whose cleanup keeps no watermark)."""
    if not db.has_table(conn, usage_event_retention.name):
        return None
    r = usage_event_retention.c
    row = conn.execute(
        sa.select(r.pruned_through_id, r.cutoff).where(r.table_name == table)
    ).first()
    return (int(row.pruned_through_id), row.cutoff) if row is not None else None


def pruned_through(conn: Connection, table: str) -> int | None:
    """The watermark's id alone (see `retention_watermark`)."""
    watermark = retention_watermark(conn, table)
    return watermark[0] if watermark is not None else None


def missing_ids(conn: Connection, table: str, ids: Sequence[int]) -> set[int]:
    """Which of `ids` are no longer in `table` (C10: rows this consumer read, since pruned)."""
    source = EVENT_TABLES[table]
    wanted = sorted(set(ids))
    present: set[int] = set()
    for start in range(0, len(wanted), _KEYS_PER_QUERY):
        chunk = wanted[start : start + _KEYS_PER_QUERY]
        present.update(
            int(v)
            for v in conn.execute(sa.select(source.c.id).where(source.c.id.in_(chunk))).scalars()
        )
    return set(wanted) - present


def next_lifecycle_rows(
    conn: Connection, lifecycle: Lifecycle | None, table: str, keys: Sequence[str], after_id: int
) -> dict[str, tuple[str, str | None]]:
    """For each of `keys`, the (state, previous_state) of its first opening or ending above
    `after_id`, if any (C10: what the kept rows say about a run whose opening was pruned).
    `lifecycle` None means staging keys (`parent_app_guid/package_guid`).

    The rows come back in id order and are matched here, byte for byte as the fold matches
    them (MariaDB's collation would also match `P2` for `p2`, or `stopped` for `STOPPED`). A
    rare path (only runs whose opening is gone), so the few rows per key are read whole."""
    source = EVENT_TABLES[table]
    previous = source.c.previous_state if "previous_state" in source.c else sa.null()
    states = lifecycle.states if lifecycle is not None else tuple(sorted(STAGING_STATES))
    found: dict[str, tuple[str, str | None]] = {}
    for start in range(0, len(keys), _KEYS_PER_QUERY):
        chunk = list(keys[start : start + _KEYS_PER_QUERY])
        if lifecycle is not None:
            key_columns = [source.c[lifecycle.key_column]]
            by_key = key_columns[0].in_(chunk)
        else:
            parents = sorted({k.split("/", 1)[0] for k in chunk if "/" in k})
            if not parents:
                continue
            key_columns = [source.c.parent_app_guid, source.c.package_guid]
            by_key = source.c.parent_app_guid.in_(parents)
        statement = (
            sa.select(*key_columns, source.c.state, previous)
            .where(source.c.state.in_(states), by_key, source.c.id > after_id)
            .order_by(source.c.id)
        )
        wanted = set(chunk)
        for *parts, state, previous_state in conn.execute(statement).all():
            key = "/".join(str(part) for part in parts)
            if key in wanted and key not in found and state in states:
                found[key] = (state, previous_state)
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
