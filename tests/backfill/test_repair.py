"""Repairing stale baselines (SPEC B5–B7): the appended ending, and when none is appended."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.backfill.platform import (
    App,
    Row,
    app_rows,
    assert_only_appended,
    forget_history,
    insert_event,
    make_app,
    managed_instance,
    running_task,
    service_rows,
    snapshot,
    started_process,
    stop_below_baseline,
)
from usageledger import db, producer
from usageledger.backfill import backfill
from usageledger.clock import SimulatedClock
from usageledger.schema import app_usage_events, processes, service_instances, tasks

SEED_TIME = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
REPAIR_TIME = datetime(2026, 3, 2, 8, 30, tzinfo=UTC)


def _seeded(engine: Engine, state: str, key: str, guid: str) -> Row:
    table_rows = (
        service_rows(engine, state) if key == "service_instance_guid" else app_rows(engine, state)
    )
    [row] = [r for r in table_rows if r[key] == guid]
    return row


def _seed_forgotten(engine: Engine) -> None:
    forget_history(engine)
    backfill(engine, clock=SimulatedClock(SEED_TIME))


def _assert_copied_ending(ending: Row, baseline: Row, state: str) -> None:
    assert ending["state"] == state
    assert ending["id"] > baseline["id"]
    assert ending["guid"] != baseline["guid"]
    assert ending["created_at"] == REPAIR_TIME
    if "previous_state" in baseline:
        assert ending["previous_state"] == baseline["state"]
    copied = set(baseline) - {"id", "guid", "created_at", "state", "previous_state"}
    assert {k: ending[k] for k in copied} == {k: baseline[k] for k in copied}


def test_b5_stopped_process_gets_a_copied_ending_and_a_lower_stop_does_not_count(
    engine: Engine,
) -> None:
    """B5: a STOPPED with a lower id than the baseline is not its ending; the repair appends
    STOPPED with a fresh guid, a higher id, previous_state WAS_RUNNING and the baseline's
    footprint and names."""
    app = make_app(engine)
    process = started_process(engine, app, instances=4, memory=1024)
    _seed_forgotten(engine)
    baseline = stop_below_baseline(engine, process)

    result = backfill(engine, clock=SimulatedClock(REPAIR_TIME))

    assert (result.app.seeded, result.app.repaired) == (0, 1)
    ending = app_rows(engine)[-1]
    _assert_copied_ending(ending, baseline, "STOPPED")
    assert ending["instance_count"] == 4 and ending["memory_in_mb_per_instance"] == 1024
    assert [r["state"] for r in app_rows(engine)] == ["STOPPED", "WAS_RUNNING", "STOPPED"]


def test_b5_process_whose_row_is_gone_gets_an_ending(engine: Engine) -> None:
    """B5: the resource row is gone, so every column comes from the baseline."""
    app = make_app(engine)
    process = started_process(engine, app)
    _seed_forgotten(engine)
    baseline = _seeded(engine, "WAS_RUNNING", "app_guid", process)
    with engine.begin() as conn:
        conn.execute(processes.delete().where(processes.c.guid == process))

    result = backfill(engine, clock=SimulatedClock(REPAIR_TIME))

    assert result.app.repaired == 1
    _assert_copied_ending(app_rows(engine)[-1], baseline, "STOPPED")


def test_b5_task_that_ended_or_is_gone_gets_task_stopped(engine: Engine) -> None:
    """B5: TASK_STOPPED for a task no longer RUNNING/CANCELING, and for one whose row is gone."""
    app = make_app(engine)
    ended = running_task(engine, app, "ended", memory=64)
    gone = running_task(engine, app, "gone", memory=96)
    _seed_forgotten(engine)
    baselines = {g: _seeded(engine, "TASK_WAS_RUNNING", "task_guid", g) for g in (ended, gone)}
    with engine.begin() as conn:
        # Both ended before their baseline committed, when no start evidence existed, so the
        # P2 gate wrote no TASK_STOPPED.
        conn.execute(tasks.update().where(tasks.c.guid == ended).values(state="SUCCEEDED"))
        conn.execute(tasks.delete().where(tasks.c.guid == gone))

    result = backfill(engine, clock=SimulatedClock(REPAIR_TIME))

    assert result.task.repaired == 2
    endings = {r["task_guid"]: r for r in app_rows(engine, "TASK_STOPPED")}
    for guid, baseline in baselines.items():
        _assert_copied_ending(endings[guid], baseline, "TASK_STOPPED")
        assert endings[guid]["app_guid"] == ""


def test_b5_deleted_service_instance_gets_deleted(engine: Engine) -> None:
    """B5: DELETED for a service instance whose row is gone, copied from its baseline."""
    app = make_app(engine)
    instance = managed_instance(engine, app)
    _seed_forgotten(engine)
    baseline = _seeded(engine, "WAS_RUNNING", "service_instance_guid", instance)
    with engine.begin() as conn:
        conn.execute(service_instances.delete().where(service_instances.c.guid == instance))

    result = backfill(engine, clock=SimulatedClock(REPAIR_TIME))

    assert result.service.repaired == 1
    [ending] = service_rows(engine, "DELETED")
    _assert_copied_ending(ending, baseline, "DELETED")
    assert ending["service_plan_name"] == "small"


def test_b5_baseline_followed_by_a_real_ending_is_left_alone(engine: Engine) -> None:
    """B5: the producer's own ending after the baseline closes it; nothing is appended."""
    app = make_app(engine)
    process = started_process(engine, app)
    task = running_task(engine, app)
    instance = managed_instance(engine, app)
    _seed_forgotten(engine)
    producer.stop_process(engine, process)
    assert producer.succeed_task(engine, task)
    producer.delete_service_instance(engine, instance)
    before = snapshot(engine)

    result = backfill(engine)

    assert result.rows_added == 0
    assert snapshot(engine) == before


def test_b5_one_ending_follows_the_latest_of_several_stale_baselines(engine: Engine) -> None:
    """B5: one ending per resource per run, copied from (and after) its latest stale baseline."""
    app = make_app(engine)
    process = started_process(engine, app, instances=1)
    _seed_forgotten(engine)
    first = _seeded(engine, "WAS_RUNNING", "app_guid", process)
    # A second stale baseline, as two racing seeds over time could leave (sizes differ).
    latest_id = insert_event(
        engine, app_usage_events, {**first, "guid": db.new_guid(), "instance_count": 7}
    )
    with engine.begin() as conn:
        conn.execute(processes.delete().where(processes.c.guid == process))

    result = backfill(engine, batch_size=1, clock=SimulatedClock(REPAIR_TIME))

    assert result.app.repaired == 1
    [ending] = app_rows(engine, "STOPPED")
    latest = next(r for r in app_rows(engine) if r["id"] == latest_id)
    _assert_copied_ending(ending, latest, "STOPPED")
    assert ending["instance_count"] == 7


def test_b5_canceling_task_is_seeded_and_never_repaired_while_canceling(engine: Engine) -> None:
    """B1, B5: CANCELING counts as running for seed and repair alike."""
    app = make_app(engine)
    task = running_task(engine, app)
    producer.cancel_task(engine, task)
    _seed_forgotten(engine)
    assert [r["task_guid"] for r in app_rows(engine, "TASK_WAS_RUNNING")] == [task]

    for _ in range(2):
        result = backfill(engine)
        assert result.task.repaired == 0
    assert app_rows(engine, "TASK_STOPPED") == []


def _mixed_platform(engine: Engine) -> App:
    """Running, stopped, gone and never-recorded resources of every kind."""
    app = make_app(engine)
    for _ in range(3):
        started_process(engine, app)
    stopped = started_process(engine, app)
    gone = started_process(engine, app)
    running_task(engine, app, "a")
    canceling = running_task(engine, app, "b")
    producer.cancel_task(engine, canceling)
    ended = running_task(engine, app, "c")
    managed_instance(engine, app)
    deleted = producer.create_service_instance(engine, app.space_guid, "creds")
    forget_history(engine)
    backfill(engine, batch_size=2)
    stop_below_baseline(engine, stopped)
    with engine.begin() as conn:
        conn.execute(processes.delete().where(processes.c.guid == gone))
        conn.execute(tasks.update().where(tasks.c.guid == ended).values(state="FAILED"))
        conn.execute(service_instances.delete().where(service_instances.c.guid == deleted))
    # New resources whose start is on record, and one without any record.
    started_process(engine, app)
    with engine.begin() as conn:
        conn.execute(
            processes.insert().values(
                guid="unrecorded",
                app_guid=app.guid,
                type="web",
                state="STARTED",
                instances=1,
                memory=64,
            )
        )
    return app


def test_b6_backfill_never_deletes_or_updates_a_row(engine: Engine) -> None:
    """B6: every row present before a run with seeds and repairs is still there, unchanged."""
    _mixed_platform(engine)
    before = snapshot(engine)

    result = backfill(engine, batch_size=3)

    assert (result.app.seeded, result.app.repaired) == (1, 2)
    assert (result.task.seeded, result.task.repaired) == (0, 1)
    assert (result.service.seeded, result.service.repaired) == (0, 1)
    after = snapshot(engine)
    assert len(after) == len(before) + 5
    assert_only_appended(before, after)


def test_b7_second_run_right_after_adds_no_rows(engine: Engine) -> None:
    """B7: a fixpoint; the second run seeds and repairs nothing."""
    _mixed_platform(engine)
    backfill(engine, batch_size=3)
    before = snapshot(engine)

    again = backfill(engine, batch_size=1)

    assert again.rows_added == 0
    assert snapshot(engine) == before
    with engine.connect() as conn:
        per_key = conn.execute(
            sa.select(app_usage_events.c.app_guid, sa.func.count())
            .where(app_usage_events.c.state == "WAS_RUNNING")
            .group_by(app_usage_events.c.app_guid)
        ).all()
    assert all(count == 1 for _, count in per_key)


def test_b5_a_key_that_differs_only_in_case_is_another_resource(engine: Engine) -> None:
    """B5 with legacy keys: a baseline for `P…`, the upper-case twin of a running process's
    guid, belongs to no process, so the repair closes it, and the process's own baseline stays
    open. MariaDB's collation ignores case, and its subquery cache answered the twin's lookup
    with the running process's (the cache compares outer values under that collation)."""
    app = make_app(engine)
    process = started_process(engine, app)
    _seed_forgotten(engine)
    baseline = _seeded(engine, "WAS_RUNNING", "app_guid", process)
    twin = process.upper()
    assert twin != process
    insert_event(engine, app_usage_events, {**baseline, "guid": db.new_guid(), "app_guid": twin})
    backfill(engine, clock=SimulatedClock(REPAIR_TIME))
    stops = [r["app_guid"] for r in app_rows(engine, "STOPPED")]
    assert stops == [twin]
