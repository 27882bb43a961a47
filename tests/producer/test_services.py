"""SPEC P3: what the platform writes for service instances, managed and user-provided."""

from __future__ import annotations

import attrs
import pytest
from sqlalchemy.engine import Engine

from usageledger import producer
from usageledger.clock import SimulatedClock
from usageledger.errors import BadInputError, ResourceNotFoundError
from usageledger.schema import service_instances

from .conftest import World
from .recorded import row_of, service_events


@attrs.frozen
class Catalog:
    broker: str
    service: str
    small: str
    large: str


@pytest.fixture
def catalog(engine: Engine) -> Catalog:
    broker = producer.create_service_broker(engine, "broker-one")
    service = producer.create_service(engine, broker, "postgres")
    small = producer.create_service_plan(engine, service, "small")
    large = producer.create_service_plan(engine, service, "large")
    return Catalog(broker=broker, service=service, small=small, large=large)


def _without_generated(event: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in event.items() if k not in ("id", "guid", "created_at")}


def test_p3_creating_a_managed_instance_writes_created_with_plan_offering_and_broker(
    engine: Engine, world: World, catalog: Catalog, clock: SimulatedClock
) -> None:
    """P3: CREATED for a managed instance fills the plan, offering and broker columns."""
    instance = producer.create_service_instance(
        engine, world.space, "db", plan_guid=catalog.small, clock=clock
    )
    [created] = service_events(engine)
    assert created["created_at"] == clock.now()
    assert _without_generated(created) == {
        "state": "CREATED",
        "org_guid": world.org,
        "space_guid": world.space,
        "space_name": "space-one",
        "service_instance_guid": instance,
        "service_instance_name": "db",
        "service_instance_type": "managed_service_instance",
        "service_plan_guid": catalog.small,
        "service_plan_name": "small",
        "service_guid": catalog.service,
        "service_label": "postgres",
        "service_broker_name": "broker-one",
        "service_broker_guid": catalog.broker,
    }
    row = row_of(engine, service_instances, instance)
    assert row is not None and row["is_gateway_service"] is True


def test_p3_user_provided_instance_rows_have_no_plan_offering_or_broker(
    engine: Engine, world: World
) -> None:
    """P3: a user-provided instance's rows leave the plan/offering/broker columns NULL."""
    instance = producer.create_service_instance(engine, world.space, "creds")
    assert producer.update_service_instance(engine, instance, name="creds-2") is True
    producer.delete_service_instance(engine, instance)
    events = service_events(engine)
    assert [e["state"] for e in events] == ["CREATED", "UPDATED", "DELETED"]
    for e in events:
        assert e["service_instance_type"] == "user_provided_service_instance"
        assert {
            e[c]
            for c in (
                "service_plan_guid",
                "service_plan_name",
                "service_guid",
                "service_label",
                "service_broker_name",
                "service_broker_guid",
            )
        } == {None}
    assert [e["service_instance_name"] for e in events] == ["creds", "creds-2", "creds-2"]
    row = row_of(engine, service_instances, instance)
    assert row is None


def test_p3_updated_only_when_the_plan_or_the_name_changes(
    engine: Engine, world: World, catalog: Catalog
) -> None:
    """P3: a plan change or a rename writes UPDATED (new values); other updates, or values
    that equal the current ones, write nothing."""
    instance = producer.create_service_instance(engine, world.space, "db", plan_guid=catalog.small)
    assert producer.update_service_instance(engine, instance, other_changes=True) is False
    assert producer.update_service_instance(engine, instance, name="db") is False
    assert producer.update_service_instance(engine, instance, plan_guid=catalog.small) is False
    assert producer.update_service_instance(engine, instance, plan_guid=catalog.large) is True
    assert producer.update_service_instance(engine, instance, name="db-2") is True
    events = service_events(engine)
    assert [(e["state"], e["service_plan_name"], e["service_instance_name"]) for e in events] == [
        ("CREATED", "small", "db"),
        ("UPDATED", "large", "db"),
        ("UPDATED", "large", "db-2"),
    ]
    row = row_of(engine, service_instances, instance)
    assert row is not None and row["name"] == "db-2"


def test_p3_delete_writes_deleted_and_removes_the_instance(
    engine: Engine, world: World, catalog: Catalog
) -> None:
    """P3: delete writes DELETED with the instance's last plan and deletes the row."""
    instance = producer.create_service_instance(engine, world.space, "db", plan_guid=catalog.large)
    producer.delete_service_instance(engine, instance)
    events = service_events(engine)
    assert [(e["state"], e["service_plan_guid"]) for e in events] == [
        ("CREATED", catalog.large),
        ("DELETED", catalog.large),
    ]
    assert row_of(engine, service_instances, instance) is None


def test_p3_null_names_fill_not_null_columns(engine: Engine) -> None:
    """P3: a NULL instance or space name is written as ''."""
    org = producer.create_organization(engine, None)
    space = producer.create_space(engine, org, None)
    producer.create_service_instance(engine, space, None)
    [created] = service_events(engine)
    assert (created["service_instance_name"], created["space_name"]) == ("", "")


def test_p3_bad_references_are_clear_errors_and_write_nothing(
    engine: Engine, world: World, catalog: Catalog
) -> None:
    """P3: unknown guids, and a plan for a user-provided instance, are bad input."""
    with pytest.raises(ResourceNotFoundError, match="no service plan"):
        producer.create_service_instance(engine, world.space, "x", plan_guid="nope")
    with pytest.raises(ResourceNotFoundError, match="no space"):
        producer.create_service_instance(engine, "nope", "x")
    with pytest.raises(ResourceNotFoundError, match="no service instance"):
        producer.update_service_instance(engine, "nope", name="y")
    with pytest.raises(ResourceNotFoundError, match="no service instance"):
        producer.delete_service_instance(engine, "nope")
    with pytest.raises(ResourceNotFoundError, match="no service broker"):
        producer.create_service(engine, "nope", "label")
    with pytest.raises(ResourceNotFoundError, match="no service with guid"):
        producer.create_service_plan(engine, "nope", "plan")
    upsi = producer.create_service_instance(engine, world.space, "creds")
    with pytest.raises(BadInputError, match="user-provided"):
        producer.update_service_instance(engine, upsi, plan_guid=catalog.small)
    assert [e["state"] for e in service_events(engine)] == ["CREATED"]
