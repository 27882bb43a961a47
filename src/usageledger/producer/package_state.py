"""The package state of one app (SPEC P1, B4), evaluated by the shared SQL expression in
`usageledger.event_columns`, so the producer and the backfill can never disagree."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from usageledger.event_columns import package_state_expression


def package_state(conn: Connection, app_guid: str) -> str:
    """The package state of one app, evaluated by `package_state_expression`."""
    value = conn.execute(
        sa.select(package_state_expression(sa.literal(app_guid, sa.String(255))))
    ).scalar_one()
    return str(value)
