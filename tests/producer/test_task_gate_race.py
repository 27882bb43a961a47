"""SPEC P2, raced for real on PostgreSQL and MariaDB: the stop gate is the first read of its
transaction, so it sees a TASK_WAS_RUNNING baseline that a backfill committed after the stop's
transaction began but before the gate ran.

Why the order matters: under MariaDB's default REPEATABLE READ, a transaction's snapshot is
taken at its first consistent read. Had the stop read anything before the gate (the task row, the
app), its snapshot would predate the baseline and the gate would find no evidence: the task
would end without a TASK_STOPPED while a consumer holds it open from the baseline. PostgreSQL's
default READ COMMITTED takes a snapshot per statement, so there the order is harmless; SQLite
serialises writers (BEGIN IMMEDIATE), so no baseline can commit inside a stop's transaction and
the race cannot happen there.

The race is staged with a hook on the stop's own connection: right before the gate query is
sent, a second connection (the "backfill") commits the baseline; the stop's transaction was begun
by the caller before that. The test then checks two things, and each catches a wrong order: the
stop was written (a producer that made any consistent read before the gate fails this on
MariaDB, its snapshot hiding the baseline), and the gate was the first statement the transaction
sent (any earlier read, a locking one included, fails this on both servers).
`test_p2_a_read_before_the_gate_hides_a_baseline_on_mariadb` shows the first failure directly.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine

from usageledger import db, producer
from usageledger.schema import tasks

from .conftest import World
from .recorded import app_events, delete_app_events, insert_app_event


@pytest.fixture
def backfill_engine(db_url: URL, backend: db.Backend) -> Iterator[Engine]:
    """A second engine on the same database, standing for a concurrent backfill run."""
    if backend is db.Backend.SQLITE:
        pytest.skip("SQLite serialises writers: a baseline cannot commit inside a stop")
    other = db.make_engine(db_url)
    yield other
    other.dispose()


def _pruned_running_task(engine: Engine, world: World) -> str:
    """A RUNNING task whose TASK_STARTED retention pruned before any baseline was seeded."""
    task = producer.create_task(engine, world.app, "nightly")
    producer.run_task(engine, task)
    assert delete_app_events(engine, task_guid=task) == 1
    return task


def _is_gate_query(statement: str, parameters: object) -> bool:
    text = repr(parameters)
    return "app_usage_events" in statement and "TASK_STOPPED" in text and "TASK_STARTED" in text


def _commit_baseline_before_the_gate(
    conn: Connection, backfill_engine: Engine, task: str, app: str
) -> list[tuple[str, str]]:
    """Arrange for the backfill to commit a TASK_WAS_RUNNING right before `conn` sends the gate
    query; returns the (statement, parameters) `conn` sends, filled as they go."""
    sent: list[tuple[str, str]] = []
    committed: list[bool] = []

    @event.listens_for(conn, "before_cursor_execute")
    def before(
        _conn: object, _cursor: object, statement: str, parameters: object, *_: object
    ) -> None:
        if _is_gate_query(statement, parameters) and not committed:
            committed.append(True)
            insert_app_event(
                backfill_engine, state="TASK_WAS_RUNNING", task_guid=task, parent_app_guid=app
            )
        if not statement.lstrip().upper().startswith("BEGIN"):
            sent.append((statement, repr(parameters)))

    return sent


@pytest.mark.parametrize("end", ["succeed", "destroy"])
def test_p2_stop_sees_a_baseline_committed_before_its_first_read(
    engine: Engine,
    backfill_engine: Engine,
    world: World,
    caplog: pytest.LogCaptureFixture,
    end: str,
) -> None:
    """P2: the producer's transaction is open; a backfill commits TASK_WAS_RUNNING; then the
    gate, as the first read, sees it and the TASK_STOPPED is written (no warning)."""
    task = _pruned_running_task(engine, world)
    operation = producer.succeed_task if end == "succeed" else producer.destroy_task
    with engine.connect() as conn:
        conn.commit()
        transaction = conn.begin()  # the stop's transaction is open before the baseline commits
        sent = _commit_baseline_before_the_gate(conn, backfill_engine, task, world.app)
        with caplog.at_level(logging.WARNING):
            assert operation(conn, task) is True
        assert conn.in_transaction()  # joined, not committed by the producer
        transaction.commit()
    assert [e["state"] for e in app_events(engine, task_guid=task)] == [
        "TASK_WAS_RUNNING",
        "TASK_STOPPED",
    ]
    assert _is_gate_query(*sent[0]), "the gate query must be the first statement of the stop"
    assert not [r for r in caplog.records if "usageledger backfill" in r.getMessage()]


def test_p2_a_baseline_committed_after_the_gate_is_left_to_repair(
    engine: Engine, backfill_engine: Engine, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """P2: the other interleaving — the gate runs first, the baseline commits after — writes no
    stop and warns; backfill repair (B5) appends the ending later."""
    task = _pruned_running_task(engine, world)
    with engine.connect() as conn:
        conn.commit()

        @event.listens_for(conn, "after_cursor_execute")
        def after(
            _conn: object, _cursor: object, statement: str, parameters: object, *_: object
        ) -> None:
            if _is_gate_query(statement, parameters):
                insert_app_event(
                    backfill_engine,
                    state="TASK_WAS_RUNNING",
                    task_guid=task,
                    parent_app_guid=world.app,
                )

        with caplog.at_level(logging.WARNING):
            assert producer.succeed_task(conn, task) is False
    assert [e["state"] for e in app_events(engine, task_guid=task)] == ["TASK_WAS_RUNNING"]
    assert [r for r in caplog.records if "usageledger backfill" in r.getMessage()]


def test_p2_a_read_before_the_gate_hides_a_baseline_on_mariadb(
    engine: Engine, backfill_engine: Engine, world: World, backend: db.Backend
) -> None:
    """P2: why the gate must be the first read — on MariaDB REPEATABLE READ, a transaction that
    read anything before the baseline committed does not see it (PostgreSQL READ COMMITTED
    does). This is the failure the first-read rule prevents."""
    task = _pruned_running_task(engine, world)
    with engine.connect() as conn, conn.begin():
        conn.execute(sa.select(tasks.c.state).where(tasks.c.guid == task)).one()
        insert_app_event(
            backfill_engine, state="TASK_WAS_RUNNING", task_guid=task, parent_app_guid=world.app
        )
        seen = producer.task_stop_evidence(conn, task).started
    assert seen is (backend is db.Backend.POSTGRESQL)
