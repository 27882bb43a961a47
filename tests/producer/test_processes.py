"""SPEC P1: what the platform writes for app processes."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from usageledger import producer
from usageledger.clock import SimulatedClock
from usageledger.errors import BadInputError, ResourceNotFoundError
from usageledger.schema import processes

from .conftest import BUILDPACK_GUID, BUILDPACK_NAME, World
from .recorded import app_events, row_of


def test_p1_creating_a_stopped_process_writes_nothing(engine: Engine, world: World) -> None:
    """P1: creating a (stopped) process writes no event."""
    guid = producer.create_process(engine, world.app, type="worker", instances=3, memory=512)
    assert app_events(engine) == []
    row = row_of(engine, processes, guid)
    assert row is not None
    assert (row["state"], row["type"], row["instances"], row["memory"]) == (
        "STOPPED",
        "worker",
        3,
        512,
    )


def test_p1_start_writes_started_with_previous_values_and_context(
    engine: Engine, world: World, clock: SimulatedClock
) -> None:
    """P1: STOPPED → STARTED writes one STARTED row carrying every context column."""
    process = producer.create_process(engine, world.app, instances=2, memory=128)
    producer.start_process(engine, process, clock=clock)
    [event] = app_events(engine)
    assert {k: v for k, v in event.items() if k not in ("id", "guid")} == {
        "created_at": clock.now(),
        "state": "STARTED",
        "previous_state": "STOPPED",
        "instance_count": 2,
        "previous_instance_count": 2,
        "memory_in_mb_per_instance": 128,
        "previous_memory_in_mb_per_instance": 128,
        "package_state": "STAGED",
        "previous_package_state": "UNKNOWN",
        "app_guid": process,
        "app_name": "app-one",
        "parent_app_guid": world.app,
        "parent_app_name": "app-one",
        "space_guid": world.space,
        "space_name": "space-one",
        "org_guid": world.org,
        "buildpack_guid": BUILDPACK_GUID,
        "buildpack_name": BUILDPACK_NAME,
        "process_type": "web",
        "task_guid": None,
        "task_name": None,
        "package_guid": None,
    }
    assert row_of(engine, processes, process)["state"] == "STARTED"  # type: ignore[index]


def test_p1_only_flips_write_start_and_stop(engine: Engine, world: World) -> None:
    """P1: starting a started process or stopping a stopped one writes nothing."""
    process = producer.create_process(engine, world.app)
    producer.stop_process(engine, process)
    producer.start_process(engine, process)
    producer.start_process(engine, process)
    producer.stop_process(engine, process)
    producer.stop_process(engine, process)
    events = app_events(engine)
    assert [(e["state"], e["previous_state"]) for e in events] == [
        ("STARTED", "STOPPED"),
        ("STOPPED", "STARTED"),
    ]
    assert (events[1]["instance_count"], events[1]["previous_instance_count"]) == (1, 1)


def test_p1_scaling_a_started_process_writes_started_with_the_previous_size(
    engine: Engine, world: World
) -> None:
    """P1: a STARTED process changing instances or memory writes another STARTED row whose
    previous_* hold the size before the change; an unchanged size writes nothing."""
    process = producer.create_process(engine, world.app, instances=1, memory=256)
    producer.start_process(engine, process)
    producer.scale_process(engine, process, instances=4)
    producer.scale_process(engine, process, memory=1024)
    producer.scale_process(engine, process, instances=4, memory=1024)  # no change
    producer.scale_process(engine, process)  # no change
    sizes = [
        (
            e["state"],
            e["previous_state"],
            e["instance_count"],
            e["previous_instance_count"],
            e["memory_in_mb_per_instance"],
            e["previous_memory_in_mb_per_instance"],
        )
        for e in app_events(engine)
    ]
    assert sizes == [
        ("STARTED", "STOPPED", 1, 1, 256, 256),
        ("STARTED", "STARTED", 4, 1, 256, 256),
        ("STARTED", "STARTED", 4, 4, 1024, 256),
    ]


def test_p1_scaling_a_stopped_process_writes_nothing(engine: Engine, world: World) -> None:
    """P1: a STOPPED process's size changes are stored but write no event; its next start shows
    the new size."""
    process = producer.create_process(engine, world.app, instances=1, memory=256)
    producer.scale_process(engine, process, instances=3, memory=64)
    assert app_events(engine) == []
    producer.start_process(engine, process)
    [event] = app_events(engine)
    assert (event["instance_count"], event["memory_in_mb_per_instance"]) == (3, 64)
    assert (event["previous_instance_count"], event["previous_memory_in_mb_per_instance"]) == (
        3,
        64,
    )


def test_p1_destroying_a_started_process_writes_stopped(engine: Engine, world: World) -> None:
    """P1: destroying a STARTED process writes STOPPED (its last size) and deletes the row."""
    process = producer.create_process(engine, world.app, instances=2, memory=128)
    producer.start_process(engine, process)
    producer.destroy_process(engine, process)
    events = app_events(engine)
    assert [e["state"] for e in events] == ["STARTED", "STOPPED"]
    stopped = events[1]
    assert (stopped["previous_state"], stopped["instance_count"], stopped["app_guid"]) == (
        "STARTED",
        2,
        process,
    )
    assert row_of(engine, processes, process) is None


def test_p1_destroying_a_stopped_process_writes_nothing(engine: Engine, world: World) -> None:
    """P1: destroying a stopped process deletes it and writes nothing."""
    process = producer.create_process(engine, world.app)
    producer.start_process(engine, process)
    producer.stop_process(engine, process)
    producer.destroy_process(engine, process)
    assert [e["state"] for e in app_events(engine)] == ["STARTED", "STOPPED"]
    assert row_of(engine, processes, process) is None


def test_p1_rows_carry_the_buildpack_of_the_current_droplet(engine: Engine, world: World) -> None:
    """P1: the buildpack columns follow the app's desired droplet at the time of the event."""
    process = producer.create_process(engine, world.app)
    producer.start_process(engine, process)
    package = producer.create_package(engine, world.app)
    producer.create_droplet(
        engine, world.app, package, buildpack_guid="bp-go", buildpack_name="go_buildpack"
    )
    producer.scale_process(engine, process, instances=2)
    events = app_events(engine)
    assert [(e["buildpack_guid"], e["buildpack_name"]) for e in events] == [
        (BUILDPACK_GUID, BUILDPACK_NAME),
        ("bp-go", "go_buildpack"),
    ]


def test_p1_legacy_null_sizes_and_names_fill_not_null_columns(engine: Engine) -> None:
    """P1: NULL instances/memory (legacy rows) are written as 0, a NULL app name as ''."""
    org = producer.create_organization(engine, None)
    space = producer.create_space(engine, org, None)
    app = producer.create_app(engine, space, None)
    process = producer.create_process(engine, app, instances=None, memory=None)
    producer.start_process(engine, process)
    [event] = app_events(engine)
    assert (event["instance_count"], event["memory_in_mb_per_instance"]) == (0, 0)
    assert (event["previous_instance_count"], event["previous_memory_in_mb_per_instance"]) == (
        None,
        None,
    )
    assert (event["app_name"], event["parent_app_name"], event["space_name"]) == ("", None, "")
    # No droplet, no package: no buildpack, package PENDING.
    assert (event["buildpack_guid"], event["package_state"]) == (None, "PENDING")


def test_p1_unknown_process_or_bad_size_is_a_clear_error(engine: Engine, world: World) -> None:
    """P1: an unknown guid or a negative size is bad input and writes nothing."""
    for operation in (
        producer.start_process,
        producer.stop_process,
        producer.scale_process,
        producer.destroy_process,
    ):
        with pytest.raises(ResourceNotFoundError, match="no process with guid 'nope'"):
            operation(engine, "nope")
    with pytest.raises(ResourceNotFoundError, match="no app"):
        producer.create_process(engine, "no-such-app")
    process = producer.create_process(engine, world.app)
    with pytest.raises(BadInputError, match="instances must be >= 0"):
        producer.scale_process(engine, process, instances=-1)
    assert app_events(engine) == []
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(processes)).scalar() == 1
