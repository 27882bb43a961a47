"""Service brokers, offerings, plans and instances (SPEC P3): CREATED on create, UPDATED only when
the plan or the name changes, DELETED on delete; plan, offering and broker columns only for
managed instances."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from usageledger.clock import DEFAULT_CLOCK, Clock
from usageledger.db import new_guid
from usageledger.errors import BadInputError, ResourceNotFoundError
from usageledger.lifecycles import ServiceEventState
from usageledger.producer.context import read_service_instance_context
from usageledger.producer.events import write_service_usage_event
from usageledger.producer.resources import AnyRow, require_row
from usageledger.producer.transaction import Bind, one_transaction
from usageledger.schema import service_brokers, service_instances, service_plans, services, spaces


def _write_service_event(conn: Connection, clock: Clock, instance_guid: str, state: str) -> None:
    instance = read_service_instance_context(conn, instance_guid)
    write_service_usage_event(conn, clock, {"state": state, **instance.event_columns()})


def create_service_broker(bind: Bind, name: str | None) -> str:
    """Create a service broker; returns its guid."""
    with one_transaction(bind) as conn:
        guid = new_guid()
        conn.execute(service_brokers.insert().values(guid=guid, name=name))
        return guid


def create_service(bind: Bind, broker_guid: str, label: str | None) -> str:
    """Create a service offering of the broker `broker_guid`; returns its guid."""
    with one_transaction(bind) as conn:
        broker = require_row(conn, service_brokers, broker_guid, "service broker")
        guid = new_guid()
        conn.execute(services.insert().values(guid=guid, label=label, service_broker_id=broker.id))
        return guid


def create_service_plan(bind: Bind, service_guid: str, name: str | None) -> str:
    """Create a plan of the offering `service_guid`; returns its guid."""
    with one_transaction(bind) as conn:
        service = require_row(conn, services, service_guid, "service")
        guid = new_guid()
        conn.execute(service_plans.insert().values(guid=guid, name=name, service_id=service.id))
        return guid


def _plan_id(conn: Connection, plan_guid: str) -> int:
    return int(require_row(conn, service_plans, plan_guid, "service plan").id)


def create_service_instance(
    bind: Bind,
    space_guid: str,
    name: str | None,
    *,
    plan_guid: str | None = None,
    clock: Clock = DEFAULT_CLOCK,
) -> str:
    """Create a service instance and write CREATED (P3); returns its guid.

    With a plan the instance is managed (`is_gateway_service` true); without, user-provided.
    """
    with one_transaction(bind) as conn:
        space = require_row(conn, spaces, space_guid, "space")
        plan_id = None if plan_guid is None else _plan_id(conn, plan_guid)
        guid = new_guid()
        conn.execute(
            service_instances.insert().values(
                guid=guid,
                name=name,
                space_id=space.id,
                is_gateway_service=plan_id is not None,
                service_plan_id=plan_id,
            )
        )
        _write_service_event(conn, clock, guid, ServiceEventState.CREATED.value)
        return guid


def _lock_instance(conn: Connection, instance_guid: str) -> AnyRow:
    row = conn.execute(
        sa.select(
            service_instances.c.name,
            service_instances.c.is_gateway_service,
            service_instances.c.service_plan_id,
        )
        .where(service_instances.c.guid == instance_guid)
        .with_for_update()
    ).one_or_none()
    if row is None:
        raise ResourceNotFoundError(f"no service instance with guid {instance_guid!r}")
    return row


def update_service_instance(
    bind: Bind,
    instance_guid: str,
    *,
    name: str | None = None,
    plan_guid: str | None = None,
    other_changes: bool = False,
    clock: Clock = DEFAULT_CLOCK,
) -> bool:
    """Rename and/or re-plan an instance (None: unchanged); True iff UPDATED was written.

    UPDATED is written only when the plan or the name actually changes (P3); `other_changes`
    stands for the updates that touch neither (parameters, tags …) and write nothing.
    """
    with one_transaction(bind) as conn:
        before = _lock_instance(conn, instance_guid)
        changes: dict[str, object] = {}
        if name is not None and name != before.name:
            changes["name"] = name
        if plan_guid is not None:
            if not before.is_gateway_service:
                raise BadInputError(
                    f"service instance {instance_guid!r} is user-provided and has no plan"
                )
            plan_id = _plan_id(conn, plan_guid)
            if plan_id != before.service_plan_id:
                changes["service_plan_id"] = plan_id
        if not changes:
            return False
        conn.execute(
            service_instances.update()
            .where(service_instances.c.guid == instance_guid)
            .values(**changes)
        )
        _write_service_event(conn, clock, instance_guid, ServiceEventState.UPDATED.value)
        return True


def delete_service_instance(
    bind: Bind, instance_guid: str, *, clock: Clock = DEFAULT_CLOCK
) -> None:
    """Write DELETED and delete the instance (P3)."""
    with one_transaction(bind) as conn:
        _lock_instance(conn, instance_guid)
        _write_service_event(conn, clock, instance_guid, ServiceEventState.DELETED.value)
        conn.execute(service_instances.delete().where(service_instances.c.guid == instance_guid))
