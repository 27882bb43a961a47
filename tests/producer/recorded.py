"""Reading back what the producer recorded, for assertions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from usageledger.db import new_guid
from usageledger.schema import app_usage_events, service_usage_events

#: created_at of rows the tests insert directly.
INSERTED_AT = datetime(2026, 2, 1, tzinfo=UTC)


def app_events(engine: Engine, **where: Any) -> list[dict[str, Any]]:
    """`app_usage_events` rows in id order, optionally filtered by column values."""
    return _rows(engine, app_usage_events, where)


def service_events(engine: Engine, **where: Any) -> list[dict[str, Any]]:
    """`service_usage_events` rows in id order, optionally filtered by column values."""
    return _rows(engine, service_usage_events, where)


def _rows(engine: Engine, table: sa.Table, where: dict[str, Any]) -> list[dict[str, Any]]:
    query = sa.select(table).order_by(table.c.id)
    for column, value in where.items():
        query = query.where(table.c[column] == value)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


def row_of(engine: Engine, table: sa.Table, guid: str) -> dict[str, Any] | None:
    """The resource row with this guid, or None when it is gone."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(table).where(table.c.guid == guid)).one_or_none()
    return None if row is None else dict(row._mapping)


def insert_app_event(engine: Engine, **columns: Any) -> None:
    """Insert an app usage event directly (a baseline, a stop), filling the NOT NULL columns."""
    values: dict[str, Any] = {
        "guid": new_guid(),
        "created_at": INSERTED_AT,
        "instance_count": 1,
        "memory_in_mb_per_instance": 0,
        "app_guid": "",
        "app_name": "",
        "space_guid": "",
        "space_name": "",
        "org_guid": "",
    }
    values.update(columns)
    with engine.begin() as conn:
        conn.execute(app_usage_events.insert().values(**values))


def delete_app_events(engine: Engine, **where: Any) -> int:
    """Delete app usage events matching the column values (as a pruning cleanup would)."""
    statement = app_usage_events.delete()
    for column, value in where.items():
        statement = statement.where(app_usage_events.c[column] == value)
    with engine.begin() as conn:
        return conn.execute(statement).rowcount
