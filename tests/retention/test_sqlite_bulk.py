"""R8 and R11 on SQLite: the cleanup's own connection is set up for many delete batches (a large
page cache, a WAL checkpoint every 20,000 pages instead of after nearly every batch) and only
for the run; afterwards it is back to SQLite's settings and the WAL is checkpointed away."""

from __future__ import annotations

import os
import sqlite3
import time
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from tests.retention.history import CUTOFF_DAYS, clock, load, realistic_history
from usageledger import db
from usageledger.lifecycles import APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS
from usageledger.retention import cleanup_tables, plan_cleanup

TABLES = [APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS]

SETTINGS = ("cache_size", "wal_autocheckpoint")


def _settings(raw: Any) -> dict[str, int]:
    return {name: int(raw.execute(f"PRAGMA {name}").fetchone()[0]) for name in SETTINGS}


def _wal_bytes(db_url: URL) -> int:
    path = db.sqlite_path(db_url)
    assert path is not None
    wal = f"{path}-wal"
    return os.path.getsize(wal) if os.path.exists(wal) else 0


@pytest.fixture
def sqlite_only(backend: db.Backend) -> None:
    if backend is not db.Backend.SQLITE:
        pytest.skip("PostgreSQL and MariaDB have no per-connection checkpoint or page cache")


@pytest.mark.usefixtures("sqlite_only")
def test_r8_every_delete_batch_runs_with_the_bulk_settings_and_only_then(engine: Engine) -> None:
    """R8 on SQLite: each batch still commits on its own, but its commit no longer checkpoints
    the WAL: the connection that deletes has the bulk settings at every DELETE of both tables,
    its own settings again after the run, and the run checkpoints the WAL once at its end,
    not once per pass or table. A dry run and a plan change nothing on the connection."""
    for table, seed in ((APP_USAGE_EVENTS, 3), (SERVICE_USAGE_EVENTS, 4)):
        load(engine, table, realistic_history(table, seed=seed, resources=20))
    bulk = {
        "cache_size": -db.SQLITE_BULK_CACHE_KIB,
        "wal_autocheckpoint": db.SQLITE_BULK_AUTOCHECKPOINT_PAGES,
    }
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        defaults = _settings(raw)
        assert defaults != bulk
        statements: list[str] = []
        raw.set_trace_callback(statements.append)  # raw PRAGMAs bypass SQLAlchemy's events
        seen: list[dict[str, int]] = []

        @sa.event.listens_for(conn, "before_cursor_execute")
        def _at_delete(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            if statement.lstrip().upper().startswith("DELETE"):
                seen.append(_settings(raw))

        def checkpoints() -> int:
            return sum("wal_checkpoint" in statement for statement in statements)

        options: dict[str, Any] = {"cutoff_age_in_days": CUTOFF_DAYS, "clock": clock()}
        cleanup_tables(conn, TABLES, batch_size=2, dry_run=True, **options)
        plan_cleanup(conn, APP_USAGE_EVENTS, cutoff=clock().now() - timedelta(CUTOFF_DAYS))
        assert (seen, checkpoints(), _settings(raw)) == ([], 0, defaults)

        results = cleanup_tables(conn, TABLES, batch_size=2, **options)
        raw.set_trace_callback(None)
        after = _settings(raw)
    assert all(result.deleted > 2 for result in results), "too little to delete"
    assert len(seen) == sum(result.batches for result in results)
    assert all(settings == bulk for settings in seen)
    assert after == defaults
    assert checkpoints() == 1


@pytest.mark.usefixtures("sqlite_only")
def test_r11_the_wal_is_checkpointed_away_after_a_run_unless_a_reader_holds_it(
    engine: Engine, db_url: URL
) -> None:
    """R11 on SQLite: a run leaves no WAL behind (TRUNCATE checkpoint), and when a reader holds
    a snapshot it neither waits for the reader (busy timeout 0 for that checkpoint) nor fails."""
    path = db.sqlite_path(db_url)
    assert path is not None
    load(engine, APP_USAGE_EVENTS, realistic_history(APP_USAGE_EVENTS, seed=4, resources=20))
    with engine.connect() as conn, db.bulk_deletes(conn):
        with conn.begin():
            conn.exec_driver_sql("DELETE FROM app_usage_events WHERE id % 2 = 0")
        assert _wal_bytes(db_url) > 0
    assert _wal_bytes(db_url) == 0

    reader = sqlite3.connect(path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM app_usage_events").fetchone()  # holds a snapshot
        with engine.connect() as conn:
            with db.bulk_deletes(conn), conn.begin():
                conn.exec_driver_sql("DELETE FROM app_usage_events WHERE id % 3 = 0")
                started = time.monotonic()
            # Not the 30 s busy timeout: the checkpoint gives up on the reader at once.
            assert time.monotonic() - started < db.SQLITE_BUSY_TIMEOUT_MS / 1000 / 3
            raw = conn.connection.driver_connection
            assert raw is not None
            assert raw.execute("PRAGMA busy_timeout").fetchone()[0] == db.SQLITE_BUSY_TIMEOUT_MS
        assert _wal_bytes(db_url) > 0  # the reader's snapshot still needs it
    finally:
        reader.close()
