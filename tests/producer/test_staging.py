"""SPEC P4: staging rows (STAGING_STARTED, STAGING_STOPPED, BUILDPACK_SET)."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine

from usageledger import producer
from usageledger.errors import BadInputError, ResourceNotFoundError
from usageledger.schema import apps, droplets

from .conftest import World
from .recorded import app_events, row_of


def test_p4_a_build_writes_staging_started_then_staging_stopped(
    engine: Engine, world: World
) -> None:
    """P4: start and finish of a build write staging rows with app_guid '' keyed on
    (parent_app_guid, package_guid); finishing creates the droplet and makes it current."""
    package = producer.create_package(engine, world.app)
    producer.start_staging(engine, world.app, package, buildpack_name="go_buildpack")
    droplet = producer.finish_staging(
        engine, world.app, package, buildpack_guid="bp-go", buildpack_name="go_buildpack"
    )
    started, stopped = app_events(engine)
    common = {
        "instance_count": 1,
        "previous_instance_count": 1,
        "memory_in_mb_per_instance": producer.STAGING_MEMORY_IN_MB,
        "previous_memory_in_mb_per_instance": producer.STAGING_MEMORY_IN_MB,
        "app_guid": "",
        "app_name": "",
        "parent_app_guid": world.app,
        "parent_app_name": "app-one",
        "package_guid": package,
        "package_state": "READY",
        "previous_package_state": "READY",
        "space_guid": world.space,
        "space_name": "space-one",
        "org_guid": world.org,
        "process_type": None,
        "task_guid": None,
        "task_name": None,
        "previous_state": "STAGING",
    }
    assert {k: started[k] for k in common} == common
    assert {k: stopped[k] for k in common} == common
    assert (started["state"], started["buildpack_guid"], started["buildpack_name"]) == (
        "STAGING_STARTED",
        None,
        "go_buildpack",
    )
    assert (stopped["state"], stopped["buildpack_guid"], stopped["buildpack_name"]) == (
        "STAGING_STOPPED",
        "bp-go",
        "go_buildpack",
    )
    droplet_row = row_of(engine, droplets, droplet)
    assert droplet_row is not None
    assert (droplet_row["package_guid"], droplet_row["state"]) == (package, "STAGED")
    assert row_of(engine, apps, world.app)["droplet_guid"] == droplet  # type: ignore[index]


def test_p4_a_failed_build_writes_staging_stopped_and_keeps_the_current_droplet(
    engine: Engine, world: World
) -> None:
    """P4: a failed build still writes STAGING_STOPPED; its FAILED droplet is never current."""
    package = producer.create_package(engine, world.app)
    producer.start_staging(engine, world.app, package)
    failed = producer.finish_staging(engine, world.app, package, droplet_state="FAILED")
    assert [e["state"] for e in app_events(engine)] == ["STAGING_STARTED", "STAGING_STOPPED"]
    assert row_of(engine, droplets, failed)["state"] == "FAILED"  # type: ignore[index]
    assert row_of(engine, apps, world.app)["droplet_guid"] == world.droplet  # type: ignore[index]
    with engine.connect() as conn:
        assert producer.package_state(conn, world.app) == "FAILED"


def test_p4_staging_without_a_start_writes_buildpack_set(engine: Engine, world: World) -> None:
    """P4: BUILDPACK_SET is a staging-shaped row (app_guid '', parent app, package)."""
    producer.set_buildpack(
        engine, world.app, world.package, buildpack_guid="bp-java", buildpack_name="java"
    )
    [row] = app_events(engine)
    assert (row["state"], row["app_guid"], row["app_name"]) == ("BUILDPACK_SET", "", "")
    assert (row["parent_app_guid"], row["package_guid"]) == (world.app, world.package)
    assert (row["buildpack_guid"], row["buildpack_name"], row["previous_state"]) == (
        "bp-java",
        "java",
        None,
    )


def test_p4_a_package_of_another_app_is_bad_input(engine: Engine, world: World) -> None:
    """P4: staging checks the package belongs to the app, and writes nothing otherwise."""
    other_app = producer.create_app(engine, world.space, "other")
    with pytest.raises(BadInputError, match="belongs to app"):
        producer.start_staging(engine, other_app, world.package)
    with pytest.raises(ResourceNotFoundError, match="no package"):
        producer.finish_staging(engine, world.app, "nope")
    with pytest.raises(ResourceNotFoundError, match="no app"):
        producer.set_buildpack(engine, "nope", world.package)
    assert app_events(engine) == []
