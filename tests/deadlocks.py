"""Staging a real deadlock whose victim is the unit of work under test (SPEC R8, B4): the
other transaction is made the one the server keeps."""

from __future__ import annotations

import sqlalchemy as sa

from usageledger import db
from usageledger.schema import organizations


def outlast_deadlock_detection(conn: sa.Connection, backend: db.Backend) -> None:
    """Make the transaction just begun on `conn` survive the deadlock it is about to cause.
    PostgreSQL rolls back the session whose deadlock check runs first: this one checks only
    after 30 s. InnoDB rolls back the transaction that changed less: this one writes 20 rows
    into a table the work under test never touches."""
    if backend is db.Backend.POSTGRESQL:
        conn.execute(sa.text("SET LOCAL deadlock_timeout = '30s'"))
    else:
        for n in range(20):
            conn.execute(organizations.insert().values(guid=f"weight-{n}", name=f"w{n}"))
