"""SPEC P5 (time from the injected clock, fresh guids) and §3's one transaction per operation."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from usageledger import db, producer
from usageledger.clock import SimulatedClock
from usageledger.schema import app_usage_events, processes, service_instances, tasks

from .conftest import World
from .recorded import app_events, row_of, service_events


class BrokenClock:
    """A clock whose reading fails: the operation fails after its resource change."""

    def now(self, conn: Connection) -> datetime:
        raise RuntimeError("clock unavailable")


def test_p5_created_at_is_the_injected_clock_to_the_microsecond(
    engine: Engine, world: World
) -> None:
    """P5: every event's created_at is exactly the simulated clock's reading (microseconds
    kept on every backend), whatever the database's own time is."""
    clock = SimulatedClock(datetime(2020, 1, 2, 3, 4, 5, 678901, tzinfo=UTC))
    expected = []
    process = producer.create_process(engine, world.app)
    producer.start_process(engine, process, clock=clock)
    expected.append(clock.now())
    clock.advance(timedelta(microseconds=1))
    producer.scale_process(engine, process, instances=2, clock=clock)
    expected.append(clock.now())
    task = producer.create_task(engine, world.app, "t")
    clock.advance(timedelta(seconds=1, microseconds=7))
    producer.run_task(engine, task, clock=clock)
    expected.append(clock.now())
    clock.advance(timedelta(microseconds=999_999))
    producer.succeed_task(engine, task, clock=clock)
    expected.append(clock.now())
    clock.advance(timedelta(microseconds=3))
    producer.start_staging(engine, world.app, world.package, clock=clock)
    expected.append(clock.now())
    assert [e["created_at"] for e in app_events(engine)] == expected
    clock.advance(timedelta(microseconds=11))
    producer.create_service_instance(engine, world.space, "svc", clock=clock)
    assert [e["created_at"] for e in service_events(engine)] == [clock.now()]


def test_p5_default_clock_is_the_database_time(engine: Engine, world: World) -> None:
    """P5: without a clock, created_at is the database's current time."""
    with engine.connect() as conn:
        before = db.database_now(conn)
    producer.start_process(engine, producer.create_process(engine, world.app))
    with engine.connect() as conn:
        after = db.database_now(conn)
    [event] = app_events(engine)
    assert before <= event["created_at"] <= after
    assert event["created_at"].tzinfo is not None


def test_p5_event_guids_are_fresh_uuids(engine: Engine, world: World) -> None:
    """P5: every event gets its own new UUID, unrelated to the resource's guid."""
    process = producer.create_process(engine, world.app)
    for _ in range(3):
        producer.start_process(engine, process)
        producer.stop_process(engine, process)
    producer.create_service_instance(engine, world.space, "svc")
    guids = [e["guid"] for e in app_events(engine)] + [e["guid"] for e in service_events(engine)]
    assert len(guids) == 7 == len(set(guids))
    assert process not in guids
    for guid in guids:
        assert str(uuid.UUID(guid)) == guid


def test_one_transaction_a_failure_midway_leaves_neither_change_nor_event(
    engine: Engine, world: World
) -> None:
    """§3: an operation that fails after changing its resource (here: reading the clock)
    leaves neither the resource change nor an event."""
    process = producer.create_process(engine, world.app)
    with pytest.raises(RuntimeError, match="clock unavailable"):
        producer.start_process(engine, process, clock=BrokenClock())
    assert row_of(engine, processes, process)["state"] == "STOPPED"  # type: ignore[index]

    task = producer.create_task(engine, world.app, "t")
    producer.run_task(engine, task)
    with pytest.raises(RuntimeError, match="clock unavailable"):
        producer.destroy_task(engine, task, clock=BrokenClock())
    assert row_of(engine, tasks, task)["state"] == "RUNNING"  # type: ignore[index]

    with pytest.raises(RuntimeError, match="clock unavailable"):
        producer.create_service_instance(engine, world.space, "svc", clock=BrokenClock())
    with engine.connect() as conn:
        count = sa.select(sa.func.count()).select_from(service_instances)
        assert conn.execute(count).scalar() == 0
    assert [e["state"] for e in app_events(engine)] == ["TASK_STARTED"]
    assert service_events(engine) == []


def test_one_transaction_on_a_connection_outside_a_transaction_commits(
    engine: Engine, world: World
) -> None:
    """§3: given a Connection with no transaction, the operation commits its own."""
    process = producer.create_process(engine, world.app)
    with engine.connect() as conn:
        conn.commit()
        producer.start_process(conn, process)
        assert not conn.in_transaction()
        # Seen from another connection while this one is still open: committed.
        assert [e["state"] for e in app_events(engine)] == ["STARTED"]


def test_one_transaction_joins_the_callers_transaction_without_committing(
    engine: Engine, world: World
) -> None:
    """§3: given a Connection inside a transaction, the operation joins it; the caller's
    rollback undoes both the resource change and the event."""
    process = producer.create_process(engine, world.app)
    with engine.connect() as conn:
        transaction = conn.begin()
        producer.start_process(conn, process)
        producer.scale_process(conn, process, instances=5)
        assert conn.in_transaction()
        count = sa.select(sa.func.count()).select_from(app_usage_events)
        assert conn.execute(count).scalar() == 2
        transaction.rollback()
    assert app_events(engine) == []
    assert row_of(engine, processes, process)["state"] == "STOPPED"  # type: ignore[index]
