"""Reading usage events from the platform database as `UsageEvent` values (SPEC C1).

Every read is a bounded query by id on a short transaction the caller opens; there is no
long-lived server-side cursor, so the platform's cleanup and writers are never held up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from usageledger.lifecycles import APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS, Lifecycle
from usageledger.reconstruct.billing import STAGING_STATES, UsageEvent
from usageledger.schema import EVENT_TABLES, app_usage_events, service_usage_events

#: The columns the consumer reads from each table; the names match UsageEvent's fields.
_APP_COLUMNS = (
    "id",
    "guid",
    "created_at",
    "state",
    "app_guid",
    "app_name",
    "task_guid",
    "task_name",
    "parent_app_guid",
    "package_guid",
    "instance_count",
    "memory_in_mb_per_instance",
    "previous_state",
    "previous_instance_count",
    "previous_memory_in_mb_per_instance",
    "space_guid",
    "org_guid",
)
_SERVICE_COLUMNS = (
    "id",
    "guid",
    "created_at",
    "state",
    "service_instance_guid",
    "service_instance_name",
    "service_plan_guid",
    "space_guid",
    "org_guid",
)


def event_columns(table: str) -> list[sa.ColumnElement[object]]:
    source = EVENT_TABLES[table]
    names = _APP_COLUMNS if table == APP_USAGE_EVENTS else _SERVICE_COLUMNS
    return [source.c[name] for name in names]


def to_event(table: str, row: Mapping[Any, Any]) -> UsageEvent:
    """A UsageEvent from a row mapping selected with `event_columns(table)`."""
    values = dict(row)
    values["table"] = table
    # Legacy rows may hold NULL names; the event keeps '' so that names compare as strings.
    for name in ("app_name", "service_instance_name", "space_guid", "org_guid", "app_guid"):
        if name in values and values[name] is None:
            values[name] = ""
    return UsageEvent(**values)


def _app_event(row: Sequence[Any]) -> UsageEvent:
    """`to_event` for a row of `_APP_COLUMNS` as a tuple: the consumer decodes every event it
    reads, and unpacking a tuple costs a fraction of building a dict per row."""
    (
        id_,
        guid,
        created_at,
        state,
        app_guid,
        app_name,
        task_guid,
        task_name,
        parent_app_guid,
        package_guid,
        instance_count,
        memory_in_mb_per_instance,
        previous_state,
        previous_instance_count,
        previous_memory_in_mb_per_instance,
        space_guid,
        org_guid,
    ) = row
    return UsageEvent(
        table=APP_USAGE_EVENTS,
        id=id_,
        guid=guid,
        created_at=created_at,
        state=state,
        app_guid="" if app_guid is None else app_guid,
        app_name="" if app_name is None else app_name,
        task_guid=task_guid,
        task_name=task_name,
        parent_app_guid=parent_app_guid,
        package_guid=package_guid,
        instance_count=instance_count,
        memory_in_mb_per_instance=memory_in_mb_per_instance,
        previous_state=previous_state,
        previous_instance_count=previous_instance_count,
        previous_memory_in_mb_per_instance=previous_memory_in_mb_per_instance,
        space_guid="" if space_guid is None else space_guid,
        org_guid="" if org_guid is None else org_guid,
    )


def _service_event(row: Sequence[Any]) -> UsageEvent:
    """`to_event` for a row of `_SERVICE_COLUMNS` as a tuple."""
    (
        id_,
        guid,
        created_at,
        state,
        service_instance_guid,
        service_instance_name,
        service_plan_guid,
        space_guid,
        org_guid,
    ) = row
    return UsageEvent(
        table=SERVICE_USAGE_EVENTS,
        id=id_,
        guid=guid,
        created_at=created_at,
        state=state,
        service_instance_guid=service_instance_guid,
        service_instance_name="" if service_instance_name is None else service_instance_name,
        service_plan_guid=service_plan_guid,
        space_guid="" if space_guid is None else space_guid,
        org_guid="" if org_guid is None else org_guid,
    )


_DECODERS: dict[str, Callable[[Sequence[Any]], UsageEvent]] = {
    APP_USAGE_EVENTS: _app_event,
    SERVICE_USAGE_EVENTS: _service_event,
}


def fetch_after(conn: Connection, table: str, after_id: int, limit: int) -> list[UsageEvent]:
    """Up to `limit` events with id > `after_id`, in id order (C1)."""
    return fetch_batch(conn, table, after_id, limit)[0]


def fetch_batch(
    conn: Connection, table: str, after_id: int, limit: int
) -> tuple[list[UsageEvent], int | None]:
    """Up to `limit` events with id > `after_id`, in id order (C1), and the table's highest id
    (for the progress display), in one round trip: the highest id rides along as an
    uncorrelated subquery the database evaluates once."""
    source = EVENT_TABLES[table]
    highest = sa.select(sa.func.max(source.c.id)).scalar_subquery()
    rows = conn.execute(
        sa.select(*event_columns(table), highest)
        .where(source.c.id > after_id)
        .order_by(source.c.id)
        .limit(limit)
    ).all()
    decode = _DECODERS[table]
    width = len(_APP_COLUMNS) if table == APP_USAGE_EVENTS else len(_SERVICE_COLUMNS)
    events = [decode(row[:width]) for row in rows]
    top: Any = rows[0][width] if rows else None
    return events, (int(top) if top is not None else None)


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
