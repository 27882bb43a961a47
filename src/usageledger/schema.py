"""The one definition of every table (SPEC §1), as SQLAlchemy Core.

The usage-event tables carry Cloud Foundry's column names, types, nullability and indexes; the
resource tables are the subset of Cloud Controller's that the producer and the backfill need.
Migrations create these tables; production code never calls `create_all`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    TypeDecorator,
)
from sqlalchemy.dialects import mysql

from usageledger.lifecycles import APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS

metadata = MetaData()

#: Cloud Foundry's ids are bigint; SQLite only autoincrements an INTEGER PRIMARY KEY, and only
#: AUTOINCREMENT (set per table below) keeps it from reusing the ids of deleted rows.
IdType = BigInteger().with_variant(Integer(), "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as naive UTC with microseconds, read back as an aware UTC datetime.

    MariaDB's DATETIME drops fractions unless declared DATETIME(6); PostgreSQL's TIMESTAMP keeps
    microseconds; SQLite stores SQLAlchemy's `YYYY-MM-DD HH:MM:SS.ffffff` text, which sorts in
    time order.
    """

    impl = DateTime(timezone=False).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _id() -> Column[int]:
    return Column("id", IdType, primary_key=True, autoincrement=True)


def _str(name: str, *, nullable: bool) -> Column[str]:
    return Column(name, String(255), nullable=nullable)


def _guid() -> Column[str]:
    return Column("guid", String(255), nullable=False, unique=True)


# --- usage events (SPEC §1.1, §1.2) -------------------------------------------------------

app_usage_events = Table(
    APP_USAGE_EVENTS,
    metadata,
    _id(),
    Column("guid", String(255), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("instance_count", Integer, nullable=False),
    Column("memory_in_mb_per_instance", Integer, nullable=False),
    _str("state", nullable=False),
    _str("app_guid", nullable=False),
    _str("app_name", nullable=False),
    _str("space_guid", nullable=False),
    _str("space_name", nullable=False),
    _str("org_guid", nullable=False),
    _str("buildpack_guid", nullable=True),
    _str("buildpack_name", nullable=True),
    _str("package_state", nullable=True),
    _str("parent_app_name", nullable=True),
    _str("parent_app_guid", nullable=True),
    _str("process_type", nullable=True),
    _str("task_guid", nullable=True),
    _str("task_name", nullable=True),
    _str("package_guid", nullable=True),
    _str("previous_state", nullable=True),
    _str("previous_package_state", nullable=True),
    Column("previous_memory_in_mb_per_instance", Integer, nullable=True),
    Column("previous_instance_count", Integer, nullable=True),
    Index("app_usage_events_guid_index", "guid", unique=True),
    Index("app_usage_events_created_at_guid_index", "created_at", "guid"),
    Index("app_usage_events_task_guid_index", "task_guid"),
    sqlite_autoincrement=True,
)

service_usage_events = Table(
    SERVICE_USAGE_EVENTS,
    metadata,
    _id(),
    Column("guid", String(255), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    _str("state", nullable=False),
    _str("org_guid", nullable=False),
    _str("space_guid", nullable=False),
    _str("space_name", nullable=False),
    _str("service_instance_guid", nullable=False),
    _str("service_instance_name", nullable=False),
    _str("service_instance_type", nullable=False),
    _str("service_plan_guid", nullable=True),
    _str("service_plan_name", nullable=True),
    _str("service_guid", nullable=True),
    _str("service_label", nullable=True),
    _str("service_broker_name", nullable=True),
    _str("service_broker_guid", nullable=True),
    Index("service_usage_events_guid_index", "guid", unique=True),
    Index("service_usage_events_created_at_guid_index", "created_at", "guid"),
    Index("service_usage_events_service_guid_index", "service_guid"),
    Index("service_usage_events_service_instance_type_index", "service_instance_type"),
    sqlite_autoincrement=True,
)

#: The lifecycle indexes (SPEC §1), added by their own migration so that PostgreSQL can build
#: them CONCURRENTLY on a live table. Declared here so there is one definition of each.
APP_LIFECYCLE_INDEX = Index(
    "app_usage_events_lifecycle_index",
    app_usage_events.c.state,
    app_usage_events.c.app_guid,
    app_usage_events.c.id,
)
SERVICE_LIFECYCLE_INDEX = Index(
    "service_usage_events_lifecycle_index",
    service_usage_events.c.state,
    service_usage_events.c.service_instance_guid,
    service_usage_events.c.id,
)
LIFECYCLE_INDEXES: tuple[Index, ...] = (APP_LIFECYCLE_INDEX, SERVICE_LIFECYCLE_INDEX)

EVENT_TABLES: dict[str, Table] = {
    APP_USAGE_EVENTS: app_usage_events,
    SERVICE_USAGE_EVENTS: service_usage_events,
}

# --- resource tables (SPEC §1.3) ------------------------------------------------------------

organizations = Table(
    "organizations",
    metadata,
    _id(),
    _guid(),
    _str("name", nullable=True),
    sqlite_autoincrement=True,
)

spaces = Table(
    "spaces",
    metadata,
    _id(),
    _guid(),
    _str("name", nullable=True),
    Column("organization_id", IdType, ForeignKey("organizations.id"), nullable=False),
    sqlite_autoincrement=True,
)

apps = Table(
    "apps",
    metadata,
    _id(),
    _guid(),
    _str("name", nullable=True),
    Column("space_guid", String(255), ForeignKey("spaces.guid"), nullable=False),
    # The current droplet; no foreign key, as in Cloud Controller (droplets point back at apps).
    _str("droplet_guid", nullable=True),
    sqlite_autoincrement=True,
)

processes = Table(
    "processes",
    metadata,
    _id(),
    _guid(),
    Column("app_guid", String(255), ForeignKey("apps.guid"), nullable=False),
    _str("type", nullable=True),
    Column("state", String(255), nullable=False, server_default="STOPPED"),
    Column("instances", Integer, nullable=True),
    Column("memory", Integer, nullable=True),
    Index("processes_app_guid_index", "app_guid"),
    sqlite_autoincrement=True,
)

packages = Table(
    "packages",
    metadata,
    _id(),
    _guid(),
    Column("app_guid", String(255), ForeignKey("apps.guid"), nullable=False),
    _str("state", nullable=False),
    Index("packages_app_guid_index", "app_guid"),
    sqlite_autoincrement=True,
)

droplets = Table(
    "droplets",
    metadata,
    _id(),
    _guid(),
    Column("app_guid", String(255), ForeignKey("apps.guid"), nullable=False),
    _str("package_guid", nullable=True),
    _str("state", nullable=False),
    _str("buildpack_receipt_buildpack_guid", nullable=True),
    _str("buildpack_receipt_buildpack", nullable=True),
    Index("droplets_app_guid_index", "app_guid"),
    Index("droplets_package_guid_index", "package_guid"),
    sqlite_autoincrement=True,
)

tasks = Table(
    "tasks",
    metadata,
    _id(),
    _guid(),
    Column("app_guid", String(255), ForeignKey("apps.guid"), nullable=False),
    _str("name", nullable=True),
    _str("state", nullable=False),
    Column("memory_in_mb", Integer, nullable=True),
    Index("tasks_app_guid_index", "app_guid"),
    Index("tasks_state_index", "state"),
    sqlite_autoincrement=True,
)

service_brokers = Table(
    "service_brokers",
    metadata,
    _id(),
    _guid(),
    _str("name", nullable=True),
    sqlite_autoincrement=True,
)

services = Table(
    "services",
    metadata,
    _id(),
    _guid(),
    _str("label", nullable=True),
    Column("service_broker_id", IdType, ForeignKey("service_brokers.id"), nullable=True),
    sqlite_autoincrement=True,
)

service_plans = Table(
    "service_plans",
    metadata,
    _id(),
    _guid(),
    _str("name", nullable=True),
    Column("service_id", IdType, ForeignKey("services.id"), nullable=False),
    sqlite_autoincrement=True,
)

service_instances = Table(
    "service_instances",
    metadata,
    _id(),
    _guid(),
    _str("name", nullable=True),
    Column("space_id", IdType, ForeignKey("spaces.id"), nullable=False),
    Column("is_gateway_service", Boolean, nullable=False, server_default="0"),
    # NULL for user-provided instances.
    Column("service_plan_id", IdType, ForeignKey("service_plans.id"), nullable=True),
    sqlite_autoincrement=True,
)

RESOURCE_TABLES: tuple[Table, ...] = (
    organizations,
    spaces,
    apps,
    processes,
    packages,
    droplets,
    tasks,
    service_brokers,
    services,
    service_plans,
    service_instances,
)
