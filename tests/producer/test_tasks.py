"""SPEC P2: what the platform writes for tasks, and the gated TASK_STOPPED."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from usageledger import producer
from usageledger.errors import InvalidTransitionError, ResourceNotFoundError
from usageledger.schema import tasks

from .conftest import World
from .recorded import app_events, delete_app_events, insert_app_event, row_of

TaskEnd = Callable[..., bool]
ENDINGS: dict[str, TaskEnd] = {
    "succeed": producer.succeed_task,
    "fail": producer.fail_task,
    "destroy": producer.destroy_task,
}
ENDED_AS = {"succeed": "SUCCEEDED", "fail": "FAILED", "destroy": None}
PRODUCER_LOGGER = "usageledger.producer"


def _running_task(engine: Engine, world: World, *, memory_in_mb: int | None = 512) -> str:
    task = producer.create_task(engine, world.app, "migrate", memory_in_mb=memory_in_mb)
    producer.run_task(engine, task)
    return task


def _set_state(engine: Engine, task: str, state: str) -> None:
    """Put a task in a state directly, as a platform row that predates any event would be."""
    with engine.begin() as conn:
        conn.execute(tasks.update().where(tasks.c.guid == task).values(state=state))


def _record_statements(conn: Connection) -> list[tuple[str, str]]:
    """Every (statement, parameters) `conn` sends from now on."""
    statements: list[tuple[str, str]] = []

    @event.listens_for(conn, "before_cursor_execute")
    def record(_c: object, _cur: object, statement: str, params: object, *_: object) -> None:
        statements.append((statement, repr(params)))

    return statements


def _stop_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith(PRODUCER_LOGGER) and r.levelno >= logging.WARNING
    ]


def test_p2_create_writes_nothing_and_run_writes_task_started(engine: Engine, world: World) -> None:
    """P2: creating (PENDING) writes nothing; → RUNNING writes TASK_STARTED in the task shape."""
    task = producer.create_task(engine, world.app, "migrate", memory_in_mb=512)
    assert app_events(engine) == []
    producer.run_task(engine, task)
    [started] = app_events(engine)
    assert {k: v for k, v in started.items() if k not in ("id", "guid", "created_at")} == {
        "state": "TASK_STARTED",
        "previous_state": "PENDING",
        "instance_count": 1,
        "previous_instance_count": 1,
        "memory_in_mb_per_instance": 512,
        "previous_memory_in_mb_per_instance": 512,
        "package_state": "STAGED",
        "previous_package_state": "STAGED",
        "app_guid": "",
        "app_name": "",
        "parent_app_guid": world.app,
        "parent_app_name": "app-one",
        "space_guid": world.space,
        "space_name": "space-one",
        "org_guid": world.org,
        "buildpack_guid": None,
        "buildpack_name": None,
        "process_type": None,
        "task_guid": task,
        "task_name": "migrate",
        "package_guid": None,
    }
    assert row_of(engine, tasks, task)["state"] == "RUNNING"  # type: ignore[index]


def test_p2_ending_a_started_task_writes_one_task_stopped(engine: Engine, world: World) -> None:
    """P2: RUNNING → SUCCEEDED/FAILED/destroyed writes TASK_STOPPED once, previous_state
    RUNNING."""
    for end, operation in ENDINGS.items():
        task = _running_task(engine, world)
        assert operation(engine, task) is True, end
        events = app_events(engine, task_guid=task)
        assert [(e["state"], e["previous_state"]) for e in events] == [
            ("TASK_STARTED", "PENDING"),
            ("TASK_STOPPED", "RUNNING"),
        ], end
        assert events[1]["memory_in_mb_per_instance"] == 512
        row = row_of(engine, tasks, task)
        assert (None if row is None else row["state"]) == ENDED_AS[end]


def test_p2_running_to_succeeded_with_only_a_baseline_writes_a_stop(
    engine: Engine, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """P2: a TASK_WAS_RUNNING baseline is start evidence: the stop is written, no warning."""
    task = producer.create_task(engine, world.app, "report")
    _set_state(engine, task, "RUNNING")
    insert_app_event(engine, state="TASK_WAS_RUNNING", task_guid=task, parent_app_guid=world.app)
    with caplog.at_level(logging.WARNING):
        assert producer.succeed_task(engine, task) is True
    assert [e["state"] for e in app_events(engine, task_guid=task)] == [
        "TASK_WAS_RUNNING",
        "TASK_STOPPED",
    ]
    assert _stop_warnings(caplog) == []


def test_p2_pending_to_failed_writes_no_stop_and_no_warning(
    engine: Engine, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """P2: a task that fails before running has no start evidence: no stop and no warning."""
    task = producer.create_task(engine, world.app, "never-ran")
    with caplog.at_level(logging.WARNING):
        assert producer.fail_task(engine, task) is False
    assert app_events(engine) == []
    assert _stop_warnings(caplog) == []
    assert row_of(engine, tasks, task)["state"] == "FAILED"  # type: ignore[index]


def test_p2_running_without_evidence_writes_no_stop_and_warns_to_backfill(
    engine: Engine, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """P2: a RUNNING task whose TASK_STARTED was pruned (no baseline) gets no stop, and a
    warning names the remedy `usageledger backfill`."""
    for end, operation in ENDINGS.items():
        task = _running_task(engine, world)
        assert delete_app_events(engine, task_guid=task) == 1
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert operation(engine, task) is False, end
        assert app_events(engine) == []
        [warning] = _stop_warnings(caplog)
        assert task in warning
        assert "usageledger backfill" in warning


def test_p2_destroying_a_pending_task_writes_nothing(
    engine: Engine, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """P2: destroying a task that never ran writes nothing and warns nothing."""
    task = producer.create_task(engine, world.app, "queued")
    with caplog.at_level(logging.WARNING):
        assert producer.destroy_task(engine, task) is False
    assert app_events(engine) == []
    assert row_of(engine, tasks, task) is None
    assert _stop_warnings(caplog) == []


def test_p2_an_existing_stop_is_never_doubled(engine: Engine, world: World) -> None:
    """P2: when a TASK_STOPPED is already on record (e.g. repaired by a backfill), ending the
    task writes no second one."""
    for end, operation in ENDINGS.items():
        task = _running_task(engine, world)
        insert_app_event(engine, state="TASK_STOPPED", task_guid=task, previous_state="RUNNING")
        assert operation(engine, task) is False, end
        assert [e["state"] for e in app_events(engine, task_guid=task)] == [
            "TASK_STARTED",
            "TASK_STOPPED",
        ], end


def test_p2_canceling_writes_nothing_then_the_end_writes_the_gated_stop(
    engine: Engine, world: World
) -> None:
    """P2: → CANCELING writes nothing (the task still runs); its end writes TASK_STOPPED with
    previous_state CANCELING."""
    for end, operation in ENDINGS.items():
        task = _running_task(engine, world)
        producer.cancel_task(engine, task)
        producer.cancel_task(engine, task)  # cancelling twice changes nothing
        assert [e["state"] for e in app_events(engine, task_guid=task)] == ["TASK_STARTED"]
        assert row_of(engine, tasks, task)["state"] == "CANCELING"  # type: ignore[index]
        assert operation(engine, task) is True, end
        events = app_events(engine, task_guid=task)
        assert [(e["state"], e["previous_state"]) for e in events] == [
            ("TASK_STARTED", "PENDING"),
            ("TASK_STOPPED", "CANCELING"),
        ], end
        row = row_of(engine, tasks, task)
        assert (None if row is None else row["state"]) == ENDED_AS[end]


def test_p2_a_canceled_pending_task_ends_without_a_stop(
    engine: Engine, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """P2: PENDING → CANCELING → FAILED never ran: no stop, no warning."""
    task = producer.create_task(engine, world.app, "cancelled-early")
    producer.cancel_task(engine, task)
    with caplog.at_level(logging.WARNING):
        assert producer.fail_task(engine, task) is False
    assert app_events(engine) == []
    assert _stop_warnings(caplog) == []


def test_p2_an_ended_task_cannot_end_again_and_its_destroy_writes_nothing(
    engine: Engine, world: World
) -> None:
    """P2: SUCCEEDED/FAILED are terminal: ending again is an error, destroying writes nothing."""
    task = _running_task(engine, world)
    assert producer.succeed_task(engine, task) is True
    with pytest.raises(InvalidTransitionError, match="already ended"):
        producer.fail_task(engine, task)
    with pytest.raises(InvalidTransitionError):
        producer.cancel_task(engine, task)
    with pytest.raises(InvalidTransitionError, match="only a PENDING task"):
        producer.run_task(engine, task)
    assert producer.destroy_task(engine, task) is False
    assert [e["state"] for e in app_events(engine)] == ["TASK_STARTED", "TASK_STOPPED"]


def test_p2_evidence_of_another_task_does_not_count(engine: Engine, world: World) -> None:
    """P2: the gate looks at this task's rows only (by task_guid)."""
    other = _running_task(engine, world)
    task = _running_task(engine, world)
    delete_app_events(engine, task_guid=task)
    assert producer.succeed_task(engine, task) is False
    with engine.connect() as conn:
        assert producer.task_stop_evidence(conn, other).allows_stop
    assert producer.succeed_task(engine, other) is True


def test_p2_null_task_memory_is_written_as_zero(engine: Engine, world: World) -> None:
    """P2: a legacy task with NULL memory_in_mb writes memory 0 (the column is NOT NULL)."""
    task = _running_task(engine, world, memory_in_mb=None)
    assert producer.succeed_task(engine, task) is True
    memories = [
        (e["memory_in_mb_per_instance"], e["previous_memory_in_mb_per_instance"])
        for e in app_events(engine)
    ]
    assert memories == [(0, 0), (0, 0)]


def test_p2_unknown_task_is_a_clear_error(engine: Engine, world: World) -> None:
    """P2: an unknown task guid is a ResourceNotFoundError, and nothing is written."""
    for operation in (
        producer.run_task,
        producer.cancel_task,
        producer.succeed_task,
        producer.fail_task,
        producer.destroy_task,
    ):
        with pytest.raises(ResourceNotFoundError, match="no task with guid 'nope'"):
            operation(engine, "nope")
    with pytest.raises(ResourceNotFoundError, match="no app"):
        producer.create_task(engine, "no-such-app", "x")
    assert app_events(engine) == []


def test_p2_the_gate_query_is_the_first_statement_of_the_stop_transaction(
    engine: Engine, world: World
) -> None:
    """P2: ending a task reads the evidence (TASK_STOPPED and start states, one query) before
    anything else in its transaction, even before the task row."""
    for end, operation in ENDINGS.items():
        task = _running_task(engine, world)
        with engine.connect() as conn:
            conn.commit()  # start from no transaction, so the operation opens its own
            statements = _record_statements(conn)
            assert operation(conn, task) is True, end
        reads = [(s, p) for s, p in statements if not s.lstrip().upper().startswith("BEGIN")]
        first_statement, first_params = reads[0]
        assert "app_usage_events" in first_statement, end
        assert "tasks" not in first_statement.replace("task_guid", "")
        assert "TASK_STOPPED" in first_params
        assert "TASK_STARTED" in first_params and "TASK_WAS_RUNNING" in first_params
        # Exactly one query reads the evidence: no other statement looks for TASK_STARTED.
        assert sum("TASK_WAS_RUNNING" in p for _, p in reads) == 1, end


def test_p2_gate_counts_stop_and_start_evidence(engine: Engine, world: World) -> None:
    """P2: task_stop_evidence reports both facts the gate needs."""
    task = producer.create_task(engine, world.app, "t")
    with engine.connect() as conn:
        assert producer.task_stop_evidence(conn, task) == producer.TaskStopEvidence(
            stopped=False, started=False
        )
    producer.run_task(engine, task)
    producer.succeed_task(engine, task)
    with engine.connect() as conn:
        evidence = producer.task_stop_evidence(conn, task)
    assert (evidence.stopped, evidence.started, evidence.allows_stop) == (True, True, False)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tasks)).scalar() == 1
