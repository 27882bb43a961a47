"""What a usage-event row repeats about its resource's surroundings: the app, space and org names,
the buildpack of the app's desired droplet, the package state, and a service instance's plan,
offering and broker (SPEC P1–P4). Read in SQL inside the operation's transaction."""

from __future__ import annotations

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from usageledger.errors import ResourceNotFoundError
from usageledger.event_columns import (
    managed_only,
    package_state_expression,
    service_instance_type_expression,
)
from usageledger.schema import (
    apps,
    droplets,
    organizations,
    service_brokers,
    service_instances,
    service_plans,
    services,
    spaces,
)


@attrs.frozen
class AppContext:
    """An app as its usage events show it. `name` is the raw (nullable) app name."""

    guid: str
    name: str | None
    space_guid: str
    space_name: str
    org_guid: str
    buildpack_guid: str | None
    buildpack_name: str | None
    package_state: str


def read_app_context(conn: Connection, app_guid: str) -> AppContext:
    """The app `app_guid` with its space, org, desired droplet's buildpack and package state."""
    desired = droplets.alias("desired_droplet")
    row = conn.execute(
        sa.select(
            apps.c.guid,
            apps.c.name,
            spaces.c.guid.label("space_guid"),
            sa.func.coalesce(spaces.c.name, "").label("space_name"),
            organizations.c.guid.label("org_guid"),
            desired.c.buildpack_receipt_buildpack_guid.label("buildpack_guid"),
            desired.c.buildpack_receipt_buildpack.label("buildpack_name"),
            package_state_expression(apps.c.guid).label("package_state"),
        )
        .select_from(
            apps.join(spaces, spaces.c.guid == apps.c.space_guid)
            .join(organizations, organizations.c.id == spaces.c.organization_id)
            .outerjoin(desired, desired.c.guid == apps.c.droplet_guid)
        )
        .where(apps.c.guid == app_guid)
    ).one_or_none()
    if row is None:
        raise ResourceNotFoundError(f"no app with guid {app_guid!r}")
    return AppContext(
        guid=row.guid,
        name=row.name,
        space_guid=row.space_guid,
        space_name=row.space_name,
        org_guid=row.org_guid,
        buildpack_guid=row.buildpack_guid,
        buildpack_name=row.buildpack_name,
        package_state=row.package_state,
    )


@attrs.frozen
class ServiceInstanceContext:
    """A service instance as its usage events show it (SPEC §1.2 columns, P3)."""

    guid: str
    name: str
    space_guid: str
    space_name: str
    org_guid: str
    service_instance_type: str
    service_plan_guid: str | None
    service_plan_name: str | None
    service_guid: str | None
    service_label: str | None
    service_broker_name: str | None
    service_broker_guid: str | None

    def event_columns(self) -> dict[str, str | None]:
        """The `service_usage_events` columns this instance fills, guid/state/time aside."""
        return {
            "org_guid": self.org_guid,
            "space_guid": self.space_guid,
            "space_name": self.space_name,
            "service_instance_guid": self.guid,
            "service_instance_name": self.name,
            "service_instance_type": self.service_instance_type,
            "service_plan_guid": self.service_plan_guid,
            "service_plan_name": self.service_plan_name,
            "service_guid": self.service_guid,
            "service_label": self.service_label,
            "service_broker_name": self.service_broker_name,
            "service_broker_guid": self.service_broker_guid,
        }


def read_service_instance_context(conn: Connection, instance_guid: str) -> ServiceInstanceContext:
    """The service instance `instance_guid` with its space, org, and (managed) plan and broker."""
    managed = service_instances.c.is_gateway_service
    row = conn.execute(
        sa.select(
            service_instances.c.guid,
            sa.func.coalesce(service_instances.c.name, "").label("name"),
            spaces.c.guid.label("space_guid"),
            sa.func.coalesce(spaces.c.name, "").label("space_name"),
            organizations.c.guid.label("org_guid"),
            service_instance_type_expression(managed).label("service_instance_type"),
            managed_only(managed, service_plans.c.guid).label("service_plan_guid"),
            managed_only(managed, service_plans.c.name).label("service_plan_name"),
            managed_only(managed, services.c.guid).label("service_guid"),
            managed_only(managed, services.c.label).label("service_label"),
            managed_only(managed, service_brokers.c.name).label("service_broker_name"),
            managed_only(managed, service_brokers.c.guid).label("service_broker_guid"),
        )
        .select_from(
            service_instances.join(spaces, spaces.c.id == service_instances.c.space_id)
            .join(organizations, organizations.c.id == spaces.c.organization_id)
            .outerjoin(service_plans, service_plans.c.id == service_instances.c.service_plan_id)
            .outerjoin(services, services.c.id == service_plans.c.service_id)
            .outerjoin(service_brokers, service_brokers.c.id == services.c.service_broker_id)
        )
        .where(service_instances.c.guid == instance_guid)
    ).one_or_none()
    if row is None:
        raise ResourceNotFoundError(f"no service instance with guid {instance_guid!r}")
    return ServiceInstanceContext(**row._asdict())
