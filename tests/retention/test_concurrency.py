"""A producer keeps writing while cleanup runs (SPEC R8, R11), on every backend: nothing fresh is
deleted, nobody deadlocks, and no insert waits longer than one cleanup batch."""

from __future__ import annotations

import threading
import time

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

#: How long a paused cleanup waits for the producer to finish one insert. Only a lock that
#: outlives its batch (or a stalled server) makes it run out: the producer needs milliseconds.
PRODUCER_PATIENCE_SECONDS = 30


def test_r8_concurrent_producer_loses_nothing_and_never_waits_long(
    db_url: URL, engine: Engine, backend: db.Backend
) -> None:
    """R8: fresh rows written during a cleanup all survive; no deadlock; no insert waits longer
    than one batch. After each committed batch the cleanup pauses (in `on_batch`, holding no
    transaction) until the producer has finished an insert it began after the previous batch:
    an insert that queued behind the batch's locks gets through as soon as the batch commits,
    while a lock kept across batches would hold it for the whole pause. No wall clock is
    compared, so a slow or busy machine cannot fail it."""
    table = APP_USAGE_EVENTS
    history = realistic_history(table, seed=3, resources=60)
    stored = load(engine, table, history)
    keys = sorted({e.key for e in history if e.key is not None})
    producer_engine = db.make_engine(db_url)
    stop = threading.Event()
    written: list[str] = []
    producer_session: list[int] = []
    begun = [0]  # inserts the producer has begun; the insert `begun[0]` may still be running
    producer_errors: list[BaseException] = []

    def produce() -> None:
        i = 0
        try:
            with producer_engine.connect() as conn:
                producer_session.append(db.connection_id(conn))
                conn.rollback()
                while not stop.is_set():
                    # Fresh events for the same resources the cleanup is pruning.
                    state = ("STARTED", "STOPPED", "TASK_STARTED", "STAGING_STARTED")[i % 4]
                    key = keys[i % len(keys)]
                    values = row_values(table, Event(state, key, NOW))
                    begun[0] += 1
                    with conn.begin():
                        conn.execute(app_usage_events.insert().values(**values))
                    written.append(str(values["guid"]))  # committed, in order
                    i += 1
        except BaseException as exc:
            producer_errors.append(exc)

    begun_before_batch = [0]

    def producer_gets_through(progress: BatchProgress) -> None:
        """The batch has committed: the producer finishes an insert begun since the last one."""
        deadline = time.monotonic() + PRODUCER_PATIENCE_SECONDS
        while len(written) <= begun_before_batch[0]:
            assert producer.is_alive(), producer_errors
            if time.monotonic() > deadline:
                waiting = backend is not db.Backend.SQLITE and db.is_waiting_for_lock(
                    engine, producer_session[0]
                )
                raise AssertionError(
                    f"after a committed batch of {progress.pass_name} the producer's insert "
                    f"did not finish in {PRODUCER_PATIENCE_SECONDS}s (waiting for a lock: "
                    f"{waiting}): a lock outlived its batch"
                )
            time.sleep(0.002)
        begun_before_batch[0] = begun[0]

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        while len(written) < 20:  # the producer is up and writing
            assert producer.is_alive(), producer_errors
            time.sleep(0.01)
        written_before = len(written)
        begun_before_batch[0] = begun[0]
        result = cleanup(
            engine,
            table,
            cutoff_age_in_days=CUTOFF_DAYS,
            clock=clock(),
            batch_size=10,
            on_batch=producer_gets_through,
        )
        written_during = len(written)
    finally:
        stop.set()
        producer.join(30)
        producer_engine.dispose()
    assert not producer.is_alive()
    assert not producer_errors, producer_errors
    assert result.deleted > 0 and result.batches > 5
    assert written_during >= written_before + result.batches  # one insert a batch, at least
    t = app_usage_events
    with engine.connect() as conn:
        survivors = set(conn.execute(sa.select(t.c.guid).where(t.c.guid.in_(written))).scalars())
    assert survivors == set(written), "a row written during cleanup was deleted"
    fresh = {s.id for s in stored if s.created_at >= CUTOFF}
    remaining = remaining_ids(engine, table)
    assert fresh <= remaining
    assert safety_violations(stored, table, remaining) == []
