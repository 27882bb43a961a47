"""Seeding baselines (SPEC B1–B4): who gets one, and what the row looks like."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.backfill.platform import (
    app_rows,
    forget_history,
    make_app,
    managed_instance,
    running_task,
    service_rows,
    started_process,
)
from usageledger import producer
from usageledger.backfill import backfill
from usageledger.clock import SimulatedClock
from usageledger.schema import apps, processes, service_instances, spaces, tasks

SEED_TIME = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def test_b1_one_baseline_per_started_process_across_batches_of_one(engine: Engine) -> None:
    """B1, B3: every STARTED process gets exactly one WAS_RUNNING, walking one id per batch."""
    app = make_app(engine)
    running = [started_process(engine, app) for _ in range(3)]
    stopped = producer.create_process(engine, app.guid, type="worker")
    stopped_after_start = started_process(engine, app)
    producer.stop_process(engine, stopped_after_start)
    forget_history(engine)

    result = backfill(engine, batch_size=1)

    baselines = app_rows(engine, "WAS_RUNNING")
    assert sorted(r["app_guid"] for r in baselines) == sorted(running)
    assert stopped not in {r["app_guid"] for r in baselines}
    assert result.app.seeded == 3
    # Five process ids walked one at a time, then three baselines' ids for the repair.
    assert result.app.batches == 5 + 3
    assert result.app.repaired == 0
    assert len({r["guid"] for r in baselines}) == 3


def test_b1_running_and_canceling_tasks_seeded_pending_and_ended_not(engine: Engine) -> None:
    """B1: TASK_WAS_RUNNING for RUNNING and CANCELING tasks only."""
    app = make_app(engine)
    running = running_task(engine, app, "run")
    canceling = running_task(engine, app, "cancel")
    producer.cancel_task(engine, canceling)
    pending = producer.create_task(engine, app.guid, "pending")
    succeeded = running_task(engine, app, "done")
    producer.succeed_task(engine, succeeded)
    forget_history(engine)

    result = backfill(engine, batch_size=2)

    seeded = {r["task_guid"] for r in app_rows(engine, "TASK_WAS_RUNNING")}
    assert seeded == {running, canceling}
    assert pending not in seeded
    assert result.task.seeded == 2
    assert app_rows(engine, "WAS_RUNNING") == []


def test_b1_every_existing_service_instance_seeded(engine: Engine) -> None:
    """B1: WAS_RUNNING per existing service instance; a deleted one gets none."""
    app = make_app(engine)
    kept = managed_instance(engine, app, "kept")
    gone = producer.create_service_instance(engine, app.space_guid, "gone")
    producer.delete_service_instance(engine, gone)
    forget_history(engine)

    result = backfill(engine)

    assert [r["service_instance_guid"] for r in service_rows(engine, "WAS_RUNNING")] == [kept]
    assert result.service.seeded == 1


def test_b2_current_run_on_record_gets_no_baseline(engine: Engine) -> None:
    """B2: a process, task or instance whose opening has no later ending gets no baseline."""
    app = make_app(engine)
    started_process(engine, app)
    scaled = started_process(engine, app)
    producer.scale_process(engine, scaled, instances=5)
    running_task(engine, app)
    managed_instance(engine, app)
    before = len(app_rows(engine)) + len(service_rows(engine))

    result = backfill(engine)

    assert result.app.seeded == result.task.seeded == result.service.seeded == 0
    assert len(app_rows(engine)) + len(service_rows(engine)) == before


def test_b2_only_an_older_closed_run_on_record_still_gets_a_baseline(engine: Engine) -> None:
    """B2: an opening followed by an ending is a closed run, not the current one."""
    app = make_app(engine)
    process = started_process(engine, app)
    producer.stop_process(engine, process)
    producer.start_process(engine, process)
    # The old cleanup deleted the start of the current run but kept the older closed run.
    with engine.begin() as conn:
        last_start: int = conn.execute(
            sa.select(sa.func.max(sa.column("id")))
            .select_from(sa.table("app_usage_events"))
            .where(sa.column("state") == "STARTED")
        ).scalar_one()
        conn.execute(sa.text("DELETE FROM app_usage_events WHERE id = :id"), {"id": last_start})
    assert [r["state"] for r in app_rows(engine)] == ["STARTED", "STOPPED"]

    result = backfill(engine)

    assert result.app.seeded == 1
    states = [r["state"] for r in app_rows(engine)]
    assert states == ["STARTED", "STOPPED", "WAS_RUNNING"]


def test_b4_app_baseline_columns(engine: Engine) -> None:
    """B4: WAS_RUNNING shaped like the producer's STARTED row, previous_state NULL, seed time."""
    app = make_app(engine, "shop", space_name="prod")
    process = started_process(engine, app, instances=3, memory=768)
    started = app_rows(engine, "STARTED")[0]
    forget_history(engine)

    backfill(engine, clock=SimulatedClock(SEED_TIME))

    [row] = app_rows(engine, "WAS_RUNNING")
    assert row["created_at"] == SEED_TIME
    assert row["guid"] != started["guid"]
    assert row["previous_state"] is None
    assert row["previous_package_state"] == "UNKNOWN"
    assert row["instance_count"] == row["previous_instance_count"] == 3
    assert row["memory_in_mb_per_instance"] == row["previous_memory_in_mb_per_instance"] == 768
    assert row["app_guid"] == process
    assert row["app_name"] == row["parent_app_name"] == "shop"
    assert row["parent_app_guid"] == app.guid
    assert row["process_type"] == "web"
    assert (row["space_guid"], row["space_name"], row["org_guid"]) == (
        app.space_guid,
        "prod",
        app.org_guid,
    )
    assert (row["buildpack_guid"], row["buildpack_name"]) == ("bp-1", "ruby")
    assert row["package_state"] == "STAGED"
    assert row["task_guid"] is None and row["task_name"] is None
    # Everything the producer's own start row says about the process, the baseline says too.
    same = set(started) - {"id", "guid", "created_at", "state", "previous_state"}
    same -= {"previous_instance_count", "previous_memory_in_mb_per_instance"}
    assert {k: row[k] for k in same} == {k: started[k] for k in same}


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ("staged", "STAGED"),
        ("newest_droplet_failed", "FAILED"),
        ("newest_package_failed", "FAILED"),
        ("newest_package_not_staged_yet", "PENDING"),
    ],
)
def test_b4_app_baseline_package_state(engine: Engine, steps: str, expected: str) -> None:
    """B4: package_state from the newest package and its newest droplet."""
    app = make_app(engine)
    started_process(engine, app)
    if steps == "newest_droplet_failed":
        producer.create_droplet(
            engine, app.guid, app.package_guid, state="FAILED", make_current=False
        )
    elif steps == "newest_package_failed":
        producer.create_package(engine, app.guid, state="FAILED")
    elif steps == "newest_package_not_staged_yet":
        producer.create_package(engine, app.guid, state="READY")
    forget_history(engine)

    backfill(engine)

    [row] = app_rows(engine, "WAS_RUNNING")
    assert row["package_state"] == expected


def test_b4_task_baseline_columns(engine: Engine) -> None:
    """B4: TASK_WAS_RUNNING in P2's task row shape, previous_* equal to the current values."""
    app = make_app(engine, "shop")
    task = running_task(engine, app, "migrate", memory=300)
    forget_history(engine)

    backfill(engine, clock=SimulatedClock(SEED_TIME))

    [row] = app_rows(engine, "TASK_WAS_RUNNING")
    assert row["created_at"] == SEED_TIME
    assert row["previous_state"] is None
    assert (row["app_guid"], row["app_name"]) == ("", "")
    assert row["instance_count"] == row["previous_instance_count"] == 1
    assert row["memory_in_mb_per_instance"] == row["previous_memory_in_mb_per_instance"] == 300
    assert row["package_state"] == row["previous_package_state"] == "STAGED"
    assert (row["task_guid"], row["task_name"]) == (task, "migrate")
    assert (row["parent_app_guid"], row["parent_app_name"]) == (app.guid, "shop")
    assert (row["space_guid"], row["org_guid"]) == (app.space_guid, app.org_guid)


def test_b4_managed_and_user_provided_service_baselines(engine: Engine) -> None:
    """B4, P3: plan, offering and broker only for managed instances."""
    app = make_app(engine)
    managed = managed_instance(engine, app, "db")
    provided = producer.create_service_instance(engine, app.space_guid, "creds")
    created = {r["service_instance_guid"]: r for r in service_rows(engine, "CREATED")}
    forget_history(engine)

    backfill(engine, clock=SimulatedClock(SEED_TIME))

    baselines = {r["service_instance_guid"]: r for r in service_rows(engine, "WAS_RUNNING")}
    assert set(baselines) == {managed, provided}
    for guid, row in baselines.items():
        assert row["created_at"] == SEED_TIME
        same = set(row) - {"id", "guid", "created_at", "state"}
        assert {k: row[k] for k in same} == {k: created[guid][k] for k in same}
    assert baselines[managed]["service_instance_type"] == "managed_service_instance"
    assert baselines[managed]["service_plan_name"] == "small"
    assert baselines[managed]["service_label"] == "postgres"
    assert baselines[managed]["service_broker_name"] == "broker"
    assert baselines[provided]["service_instance_type"] == "user_provided_service_instance"
    assert baselines[provided]["service_plan_guid"] is None
    assert baselines[provided]["service_broker_guid"] is None


def test_b4_null_sizes_and_names_become_zero_and_blank(engine: Engine) -> None:
    """B4: legacy NULL instances, memory, memory_in_mb and names are COALESCEd, not fatal."""
    app = make_app(engine, None, space_name=None)
    with engine.begin() as conn:
        conn.execute(
            processes.insert().values(
                guid="legacy-process",
                app_guid=app.guid,
                type=None,
                state="STARTED",
                instances=None,
                memory=None,
            )
        )
        conn.execute(
            tasks.insert().values(
                guid="legacy-task",
                app_guid=app.guid,
                name=None,
                state="RUNNING",
                memory_in_mb=None,
            )
        )
        space_id = conn.execute(
            sa.select(spaces.c.id).where(spaces.c.guid == app.space_guid)
        ).scalar_one()
        conn.execute(
            service_instances.insert().values(
                guid="legacy-instance", name=None, space_id=space_id, is_gateway_service=False
            )
        )
        assert conn.execute(sa.select(apps.c.name)).scalar_one() is None

    result = backfill(engine)

    assert (result.app.seeded, result.task.seeded, result.service.seeded) == (1, 1, 1)
    [process_row] = app_rows(engine, "WAS_RUNNING")
    assert process_row["instance_count"] == process_row["memory_in_mb_per_instance"] == 0
    assert process_row["app_name"] == process_row["parent_app_name"] == ""
    assert process_row["space_name"] == ""
    [task_row] = app_rows(engine, "TASK_WAS_RUNNING")
    assert task_row["memory_in_mb_per_instance"] == 0
    assert task_row["task_name"] == task_row["parent_app_name"] == ""
    [instance_row] = service_rows(engine, "WAS_RUNNING")
    assert instance_row["service_instance_name"] == ""
    assert instance_row["space_name"] == ""
