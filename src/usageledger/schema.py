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

from usageledger.db import MARIADB_BYTES_COLLATION
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
        moment: datetime = value
        if moment.tzinfo is not None:
            moment = moment.astimezone(UTC).replace(tzinfo=None)
        return moment

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime from the database, got {type(value).__name__}")
        moment: datetime = value
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)


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

#: What the keep-running cleanup has planned to delete, per event table: the highest id of any
#: run's plan, written before that run deletes anything and never lowered. Consumers compare it
#: with their cursor to know that rows above the cursor may have been pruned (SPEC C10); a
#: rolled-back transaction's id hole looks the same in the event table. Not a Cloud Foundry
#: table: added by migration 0006.
usage_event_retention = Table(
    "usage_event_retention",
    metadata,
    Column("table_name", String(64), primary_key=True),
    Column("pruned_through_id", BigInteger, nullable=False),
    Column("cutoff", UTCDateTime(), nullable=False),  # the cutoff of the run that raised it
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

# --- the consumer's ledger (SPEC C1, C9, C14) -------------------------------------------------
# The reference consumer's own tables. They live in the ledger database, which may be the
# platform's or another one (C14), so they have their own MetaData and their own migrations
# (usageledger.migrations.ledger, version table `usageledger_ledger_version`); the platform's
# migrations never create or drop them.

ledger_metadata = MetaData()

#: Longest resource key: a staging key is `parent_app_guid/package_guid` (C13).
LEDGER_KEY_LENGTH = 511

#: Ledger keys compare byte for byte. MariaDB's default utf8mb4 collation ignores case and
#: trailing spaces, so `P2` and `p2` would share one primary key there and one resource's state
#: would overwrite the other's; a binary collation without padding compares as PostgreSQL and
#: SQLite do (db.MARIADB_BYTES_COLLATION).
LEDGER_TABLE_OPTIONS: dict[str, Any] = {
    "mysql_charset": "utf8mb4",
    "mysql_collate": MARIADB_BYTES_COLLATION,
}


def _consumer(*, primary_key: bool = False) -> Column[str]:
    return Column("consumer", String(100), nullable=False, primary_key=primary_key)


def _resource_key(*, primary_key: bool = False) -> Column[str]:
    return Column(
        "resource_guid", String(LEDGER_KEY_LENGTH), nullable=False, primary_key=primary_key
    )


def _footprint_columns() -> list[Column[Any]]:
    return [
        Column("instance_count", Integer, nullable=True),
        Column("memory_in_mb_per_instance", Integer, nullable=True),
        _str("service_plan_guid", nullable=True),
    ]


def _name_columns() -> list[Column[Any]]:
    return [
        Column("name", String(255), nullable=False, server_default=""),
        Column("space_guid", String(255), nullable=False, server_default=""),
        Column("org_guid", String(255), nullable=False, server_default=""),
    ]


#: Where each consumer stands in each source table: every id <= position has been applied or
#: recorded as a permanent hole (C1, C2).
ledger_cursors = Table(
    "ledger_cursors",
    ledger_metadata,
    _consumer(primary_key=True),
    Column("source_table", String(64), primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("last_event_id", BigInteger, nullable=True),
    # The guid of that event: a source table recreated since shows another guid at that id (C1).
    Column("last_event_guid", String(255), nullable=True),
    Column("updated_at", UTCDateTime(), nullable=False),
    **LEDGER_TABLE_OPTIONS,
)

#: Per-resource state (C3): CLOSED, or OPEN with the run's and the open segment's start.
ledger_resources = Table(
    "ledger_resources",
    ledger_metadata,
    # The key leads with the resource guid: a batch looks its resources up by guid, and an
    # index led by the (few) consumer names is only used well once the planner has statistics.
    _resource_key(primary_key=True),
    Column("kind", String(16), primary_key=True),
    _consumer(primary_key=True),
    Column("is_open", Boolean, nullable=False),
    Column("ever_opened", Boolean, nullable=False),
    Column("last_event_id", BigInteger, nullable=False),
    Column("run_start", UTCDateTime(), nullable=True),
    Column("run_start_is_lower_bound", Boolean, nullable=False),
    Column("run_opened_by_id", BigInteger, nullable=True),
    _str("run_opened_by_guid", nullable=True),
    Column("segment_start", UTCDateTime(), nullable=True),
    Column("segment_start_is_lower_bound", Boolean, nullable=False),
    Column("segment_opened_by_id", BigInteger, nullable=True),
    _str("segment_opened_by_guid", nullable=True),
    Column("segment_approximate_size", Boolean, nullable=False),
    *_footprint_columns(),
    *_name_columns(),
    Column("last_end", UTCDateTime(), nullable=True),
    # No index led by consumer or is_open: without statistics (a young ledger) PostgreSQL would
    # pick it for the per-batch guid lookups and filter; the C10 scan of OPEN rows is rare.
    **LEDGER_TABLE_OPTIONS,
)

#: Closed billed segments with their provenance and flags (C9). Open segments are the OPEN rows
#: of ledger_resources.
ledger_segments = Table(
    "ledger_segments",
    ledger_metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    _consumer(),
    Column("kind", String(16), nullable=False),
    _resource_key(),
    Column("start_at", UTCDateTime(), nullable=False),
    Column("end_at", UTCDateTime(), nullable=False),
    *_footprint_columns(),
    Column("opened_by_id", BigInteger, nullable=False),
    _str("opened_by_guid", nullable=False),
    Column("closed_by_id", BigInteger, nullable=True),
    _str("closed_by_guid", nullable=True),
    Column("start_is_lower_bound", Boolean, nullable=False),
    Column("end_is_repaired", Boolean, nullable=False),
    Column("gap_close", Boolean, nullable=False),
    Column("approximate_size", Boolean, nullable=False),
    *_name_columns(),
    Index("ledger_segments_resource_index", "resource_guid", "consumer"),
    sqlite_autoincrement=True,
    **LEDGER_TABLE_OPTIONS,
)

#: What the consumer reported instead of billing: duplicate and orphan endings, quarantined
#: states, missed starts, footprint mismatches, retention gaps (C7, C10, C11).
ledger_findings = Table(
    "ledger_findings",
    ledger_metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    _consumer(),
    Column("code", String(32), nullable=False),
    Column("source_table", String(64), nullable=False),
    Column("event_id", BigInteger, nullable=True),
    _str("event_guid", nullable=True),
    Column("kind", String(16), nullable=True),
    Column("resource_guid", String(LEDGER_KEY_LENGTH), nullable=True),
    _str("state", nullable=True),
    Column("detail", String(1000), nullable=False, server_default=""),
    Index("ledger_findings_consumer_index", "consumer", "source_table", "event_id"),
    sqlite_autoincrement=True,
    **LEDGER_TABLE_OPTIONS,
)

#: Id gaps the reader met (C2): `open` while waiting out the grace period, `permanent` once the
#: cursor moved past them, `retention` for a range pruned before the consumer read it (C10).
ledger_gaps = Table(
    "ledger_gaps",
    ledger_metadata,
    Column("id", IdType, primary_key=True, autoincrement=True),
    _consumer(),
    Column("source_table", String(64), nullable=False),
    Column("first_id", BigInteger, nullable=False),
    Column("last_id", BigInteger, nullable=False),
    Column("first_seen_at", UTCDateTime(), nullable=False),
    Column("status", String(16), nullable=False),
    Column("resolved_at", UTCDateTime(), nullable=True),
    Index("ledger_gaps_consumer_index", "consumer", "source_table", "status", "first_id"),
    sqlite_autoincrement=True,
    **LEDGER_TABLE_OPTIONS,
)

LEDGER_TABLES: tuple[Table, ...] = (
    ledger_cursors,
    ledger_resources,
    ledger_segments,
    ledger_findings,
    ledger_gaps,
)
