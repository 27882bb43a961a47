"""A cleanup batch that loses a deadlock runs again (SPEC R7, R8).

A batch deletes its ids in one statement, locking them in id order. Another transaction that
locks two of them in the opposite order deadlocks with it; when the server picks the batch as
the victim, the batch rolled back whole, so the cleanup runs it again instead of failing, and
the table ends as an undisturbed cleanup leaves it.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.deadlocks import outlast_deadlock_detection
from tests.retention.history import FRESH, OLD, Event, clock, load, remaining_ids
from usageledger import db
from usageledger.lifecycles import APP_USAGE_EVENTS
from usageledger.retention import cleanup
from usageledger.schema import app_usage_events


def test_r7_r8_a_delete_batch_that_loses_a_deadlock_runs_again(
    engine: Engine,
    backend: db.Backend,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """R7, R8: another transaction locks the second opening pass 1 will delete; the batch locks
    the first and waits for the second; the other transaction then asks for the first: a
    deadlock, whose victim is made the batch (PostgreSQL: the other session detects deadlocks
    only after 30 s; MariaDB: it has written more, and InnoDB rolls back the lighter one). The
    cleanup runs the batch again and deletes exactly what it would have."""
    if backend is db.Backend.SQLITE:
        pytest.skip("SQLite has one writer at a time and no row locks: nothing can deadlock")
    stored = load(
        engine,
        APP_USAGE_EVENTS,
        [
            Event("STARTED", "a", OLD),
            Event("STOPPED", "a", OLD),
            Event("STARTED", "b", OLD),
            Event("STOPPED", "b", OLD),
            Event("STARTED", "c", FRESH),  # the newest row, and a resource still running
        ],
    )
    first, second = stored[0].id, stored[2].id  # pass 1's batch: both openings, one DELETE

    # Learn the cleanup's session: it runs every batch on one connection.
    sessions: list[int] = []
    real_use_read_committed = db.use_read_committed

    def remembering(conn: sa.Connection) -> None:
        real_use_read_committed(conn)
        sessions.append(db.connection_id(conn))
        conn.rollback()

    monkeypatch.setattr(db, "use_read_committed", remembering)
    outcome: dict[str, object] = {}

    def run_cleanup() -> None:
        try:
            outcome["result"] = cleanup(engine, APP_USAGE_EVENTS, clock=clock())
        except BaseException as exc:
            outcome["error"] = exc

    t = app_usage_events
    other = engine.connect()
    other_error: list[BaseException] = []
    worker = threading.Thread(target=run_cleanup)
    try:
        other.begin()
        outlast_deadlock_detection(other, backend)
        other.execute(sa.select(t.c.id).where(t.c.id == second).with_for_update())
        caplog.set_level(logging.WARNING, logger="usageledger.db")
        worker.start()
        deadline = time.monotonic() + 30
        while not (sessions and db.is_waiting_for_lock(engine, sessions[-1])):
            assert time.monotonic() < deadline, "the batch never waited for the row lock"
            time.sleep(0.05)
        try:
            other.execute(sa.select(t.c.id).where(t.c.id == first).with_for_update())
        except sa.exc.DBAPIError as exc:  # the server chose the other transaction after all
            other_error.append(exc)
        other.rollback()
        worker.join(timeout=60)
        assert not worker.is_alive(), "the cleanup did not finish"
    finally:
        other.close()
    assert other_error == [], f"the other transaction was the victim: {other_error}"
    assert "error" not in outcome, outcome.get("error")
    assert any("lost a race" in r.getMessage() for r in caplog.records), "no batch was a victim"
    assert remaining_ids(engine, APP_USAGE_EVENTS) == {stored[4].id}
