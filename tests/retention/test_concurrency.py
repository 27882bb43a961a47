"""A producer keeps writing while cleanup runs (SPEC R8, R11) on PostgreSQL and MariaDB: nothing
fresh is deleted, nobody deadlocks, and no insert waits longer than a cleanup batch takes."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from tests.retention.history import (
    CUTOFF,
    CUTOFF_DAYS,
    NOW,
    Event,
    clock,
    load,
    realistic_history,
    remaining_ids,
    row_values,
)
from tests.retention.model import safety_violations
from usageledger import db
from usageledger.lifecycles import APP_USAGE_EVENTS
from usageledger.retention import BatchProgress, cleanup
from usageledger.schema import app_usage_events


def test_r8_concurrent_producer_loses_nothing_and_never_waits_long(
    db_url: URL, engine: Engine, backend: db.Backend
) -> None:
    """R8: fresh rows written during a cleanup all survive; no deadlock; short lock waits only."""
    if backend is db.Backend.SQLITE:
        pytest.skip("SQLite serialises writers by design; PostgreSQL and MariaDB are the subject")
    table = APP_USAGE_EVENTS
    history = realistic_history(table, seed=3, resources=60)
    stored = load(engine, table, history)
    keys = sorted({e.key for e in history if e.key is not None})
    producer_engine = db.make_engine(db_url)
    stop = threading.Event()
    written: list[str] = []
    insert_seconds: list[float] = []
    producer_errors: list[BaseException] = []

    def produce() -> None:
        i = 0
        try:
            while not stop.is_set():
                # Fresh events for the same resources the cleanup is pruning.
                state = ("STARTED", "STOPPED", "TASK_STARTED", "STAGING_STARTED")[i % 4]
                key = keys[i % len(keys)]
                values = row_values(table, Event(state, key, NOW))
                started = time.monotonic()
                with producer_engine.begin() as conn:
                    conn.execute(app_usage_events.insert().values(**values))
                insert_seconds.append(time.monotonic() - started)
                written.append(str(values["guid"]))
                i += 1
        except BaseException as exc:
            producer_errors.append(exc)

    batch_seconds: list[float] = []
    last = [time.monotonic()]

    def time_batches(progress: BatchProgress) -> None:
        now = time.monotonic()
        batch_seconds.append(now - last[0])
        last[0] = now

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        while len(written) < 20:  # the producer is up and writing
            assert producer.is_alive(), producer_errors
            time.sleep(0.01)
        written_before = len(written)
        last[0] = time.monotonic()
        result = cleanup(
            engine,
            table,
            cutoff_age_in_days=CUTOFF_DAYS,
            clock=clock(),
            batch_size=10,
            on_batch=time_batches,
        )
        written_during = len(written)
        time.sleep(0.2)
    finally:
        stop.set()
        producer.join(30)
        producer_engine.dispose()
    assert not producer_errors, producer_errors
    assert result.deleted > 0 and result.batches > 5
    assert written_during > written_before, "the producer wrote nothing during the cleanup"
    t = app_usage_events
    with engine.connect() as conn:
        survivors = set(conn.execute(sa.select(t.c.guid).where(t.c.guid.in_(written))).scalars())
    assert survivors == set(written), "a row written during cleanup was deleted"
    fresh = {s.id for s in stored if s.created_at >= CUTOFF}
    remaining = remaining_ids(engine, table)
    assert fresh <= remaining
    assert safety_violations(stored, table, remaining) == []
    # A lock wait longer than one batch would show as an insert slower than the slowest batch.
    assert max(insert_seconds) <= max(batch_seconds) + 0.25, (
        max(insert_seconds),
        max(batch_seconds),
    )
