"""A seed batch that loses a deadlock runs again (SPEC B3, B4, B8).

The seed share-locks a window's running resources in id order (B4). A platform transaction
that locks two of them in the opposite order deadlocks with it; when the server picks the
seed's batch as the victim, that batch rolled back whole and its lock session lives on, so the
backfill runs it again instead of failing, and every running resource ends with one baseline.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.backfill.platform import app_rows, forget_history, make_app, started_process
from tests.deadlocks import outlast_deadlock_detection
from usageledger import db
from usageledger.backfill import BACKFILL_LOCK, backfill
from usageledger.schema import processes


def _session_of_lock_waiting(engine: Engine, sessions: list[int], deadline: float) -> int:
    """The backfill's lock session, once it waits for a row lock."""
    while time.monotonic() < deadline:
        for session in sessions:
            if db.is_waiting_for_lock(engine, session):
                return session
        time.sleep(0.05)
    raise AssertionError("the seed never waited for the platform's row lock")


def test_b4_b8_a_seed_batch_that_loses_a_deadlock_runs_again(
    engine: Engine,
    backend: db.Backend,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """B4, B8: the platform locks process B, the seed share-locks A and waits for B, the
    platform then asks for A: a deadlock. The seed's batch is made the victim (PostgreSQL: the
    platform session detects deadlocks only after 30 s; MariaDB: the platform has written more,
    and InnoDB rolls back the lighter transaction). The backfill tries the batch again, and each
    running process gets exactly one WAS_RUNNING."""
    if backend is db.Backend.SQLITE:
        pytest.skip("SQLite has one writer at a time and no row locks: nothing can deadlock")
    app = make_app(engine)
    first, second = started_process(engine, app), started_process(engine, app)
    forget_history(engine)
    with engine.connect() as conn:
        ids = dict(
            conn.execute(
                sa.select(processes.c.guid, processes.c.id).where(
                    processes.c.guid.in_([first, second])
                )
            ).all()
        )
    low, high = sorted(ids.values())

    # Learn the lock session of the backfill (the batches run on it, B8).
    sessions: list[int] = []
    real_run_lock = db.run_lock

    def remembering_run_lock(bind: Engine, name: str, *, wait: bool) -> db.RunLock:
        lock = real_run_lock(bind, name, wait=wait)
        if name == BACKFILL_LOCK and lock.connection is not None:
            sessions.append(db.connection_id(lock.connection))
        return lock

    monkeypatch.setattr(db, "run_lock", remembering_run_lock)

    outcome: dict[str, object] = {}

    def run_backfill() -> None:
        try:
            outcome["result"] = backfill(engine, kinds=("app",))
        except BaseException as exc:
            outcome["error"] = exc

    platform = engine.connect()
    platform_error: list[BaseException] = []
    try:
        platform.begin()
        outlast_deadlock_detection(platform, backend)
        platform.execute(sa.select(processes.c.id).where(processes.c.id == high).with_for_update())
        caplog.set_level(logging.WARNING, logger="usageledger.db")
        worker = threading.Thread(target=run_backfill)
        worker.start()
        _session_of_lock_waiting(engine, sessions, time.monotonic() + 30)
        # Now the platform asks for the row the seed holds: a deadlock; the seed is the victim,
        # its batch rolls back and releases `low`, and its next attempt waits for `high` again.
        try:
            platform.execute(
                sa.select(processes.c.id).where(processes.c.id == low).with_for_update()
            )
        except sa.exc.DBAPIError as exc:  # the server chose the platform after all
            platform_error.append(exc)
        platform.rollback() if platform_error else platform.commit()
        worker.join(timeout=60)
        assert not worker.is_alive(), "the backfill did not finish"
    finally:
        platform.close()
    assert platform_error == [], f"the platform was the victim: {platform_error}"
    assert "error" not in outcome, outcome.get("error")
    retries = [r for r in caplog.records if "lost a race" in r.getMessage()]
    assert len(retries) >= 1, "the seed's batch was never a deadlock victim"
    baselines = app_rows(engine, "WAS_RUNNING")
    assert sorted(row["app_guid"] for row in baselines) == sorted([first, second])
