"""Writing one usage-event row: a fresh guid and the clock's time (SPEC P5), every other column
given explicitly by the caller so that no column is ever left to chance."""

from __future__ import annotations

from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from usageledger.clock import Clock
from usageledger.db import new_guid
from usageledger.schema import app_usage_events, service_usage_events

_GENERATED = frozenset({"id", "guid", "created_at"})
_APP_COLUMNS = frozenset(c.name for c in app_usage_events.columns) - _GENERATED
_SERVICE_COLUMNS = frozenset(c.name for c in service_usage_events.columns) - _GENERATED


def _write(
    conn: Connection,
    clock: Clock,
    table: sa.Table,
    expected: frozenset[str],
    columns: Mapping[str, object],
) -> str:
    missing = expected - set(columns)
    unknown = set(columns) - expected
    if missing or unknown:
        raise ValueError(f"{table.name} row: missing {sorted(missing)}, unknown {sorted(unknown)}")
    guid = new_guid()
    conn.execute(table.insert().values(guid=guid, created_at=clock.now(conn), **columns))
    return guid


def write_app_usage_event(conn: Connection, clock: Clock, columns: Mapping[str, object]) -> str:
    """Append one `app_usage_events` row; every column but id, guid and created_at is given."""
    return _write(conn, clock, app_usage_events, _APP_COLUMNS, columns)


def write_service_usage_event(conn: Connection, clock: Clock, columns: Mapping[str, object]) -> str:
    """Append one `service_usage_events` row; every column but id, guid and created_at is given."""
    return _write(conn, clock, service_usage_events, _SERVICE_COLUMNS, columns)
