"""The schema as each backend reports it equals SPEC §1 (columns, types, nullability, indexes).

The expected tables are written out here from the SPEC, independently of schema.py, so that a
drift in either shows up.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from usageledger import db
from usageledger.schema import app_usage_events, service_usage_events

V = "varchar(255)"
APP_COLUMNS: dict[str, tuple[str, bool]] = {
    "id": ("bigint", False),
    "guid": (V, False),
    "created_at": ("timestamp", False),
    "instance_count": ("int", False),
    "memory_in_mb_per_instance": ("int", False),
    "state": (V, False),
    "app_guid": (V, False),
    "app_name": (V, False),
    "space_guid": (V, False),
    "space_name": (V, False),
    "org_guid": (V, False),
    **{
        name: (V, True)
        for name in [
            "buildpack_guid",
            "buildpack_name",
            "package_state",
            "parent_app_name",
            "parent_app_guid",
            "process_type",
            "task_guid",
            "task_name",
            "package_guid",
            "previous_state",
            "previous_package_state",
        ]
    },
    "previous_memory_in_mb_per_instance": ("int", True),
    "previous_instance_count": ("int", True),
}
SERVICE_COLUMNS: dict[str, tuple[str, bool]] = {
    "id": ("bigint", False),
    "guid": (V, False),
    "created_at": ("timestamp", False),
    **{
        name: (V, False)
        for name in [
            "state",
            "org_guid",
            "space_guid",
            "space_name",
            "service_instance_guid",
            "service_instance_name",
            "service_instance_type",
        ]
    },
    **{
        name: (V, True)
        for name in [
            "service_plan_guid",
            "service_plan_name",
            "service_guid",
            "service_label",
            "service_broker_name",
            "service_broker_guid",
        ]
    },
}
APP_INDEXES = {
    (("guid",), True),
    (("created_at", "guid"), False),
    (("task_guid",), False),
    (("state", "app_guid", "id"), False),
}
SERVICE_INDEXES = {
    (("guid",), True),
    (("created_at", "guid"), False),
    (("service_guid",), False),
    (("service_instance_type",), False),
    (("state", "service_instance_guid", "id"), False),
}
RESOURCE_COLUMNS = {
    "organizations": {"id", "guid", "name"},
    "spaces": {"id", "guid", "name", "organization_id"},
    "apps": {"id", "guid", "name", "space_guid", "droplet_guid"},
    "processes": {"id", "guid", "app_guid", "type", "state", "instances", "memory"},
    "packages": {"id", "guid", "app_guid", "state"},
    "droplets": {
        "id",
        "guid",
        "app_guid",
        "package_guid",
        "state",
        "buildpack_receipt_buildpack_guid",
        "buildpack_receipt_buildpack",
    },
    "tasks": {"id", "guid", "app_guid", "name", "state", "memory_in_mb"},
    "service_brokers": {"id", "guid", "name"},
    "services": {"id", "guid", "label", "service_broker_id"},
    "service_plans": {"id", "guid", "name", "service_id"},
    "service_instances": {
        "id",
        "guid",
        "name",
        "space_id",
        "is_gateway_service",
        "service_plan_id",
    },
}
# SPEC §1.3: legacy rows may carry NULL here, and the backfill COALESCEs them.
LEGACY_NULLABLE = {
    ("processes", "instances"),
    ("processes", "memory"),
    ("tasks", "memory_in_mb"),
    ("apps", "name"),
}


def _kind(column_type: sa.types.TypeEngine[object], backend: db.Backend, *, is_pk: bool) -> str:
    if isinstance(column_type, sa.String):
        return f"varchar({column_type.length})"
    if isinstance(column_type, sa.DateTime):
        return "timestamp"
    if isinstance(column_type, sa.BigInteger):
        return "bigint"
    if isinstance(column_type, sa.Integer):
        # SQLite only autoincrements an INTEGER PRIMARY KEY, which is 64-bit there.
        return "bigint" if is_pk and backend is db.Backend.SQLITE else "int"
    return type(column_type).__name__


def _columns(engine: Engine, table: str, backend: db.Backend) -> dict[str, tuple[str, bool]]:
    inspector = sa.inspect(engine)
    pk = set(inspector.get_pk_constraint(table)["constrained_columns"])
    return {
        c["name"]: (_kind(c["type"], backend, is_pk=c["name"] in pk), bool(c["nullable"]))
        for c in inspector.get_columns(table)
    }


def _indexes(engine: Engine, table: str) -> set[tuple[tuple[str, ...], bool]]:
    return {
        (tuple(str(c) for c in ix["column_names"]), bool(ix["unique"]))
        for ix in sa.inspect(engine).get_indexes(table)
    }


def test_spec_1_1_app_usage_events_columns_and_indexes(engine: Engine, backend: db.Backend) -> None:
    """SPEC §1.1: app_usage_events has Cloud Foundry's columns, types, nullability and indexes."""
    assert _columns(engine, "app_usage_events", backend) == APP_COLUMNS
    assert _indexes(engine, "app_usage_events") == APP_INDEXES


def test_spec_1_2_service_usage_events_columns_and_indexes(
    engine: Engine, backend: db.Backend
) -> None:
    """SPEC §1.2: service_usage_events has Cloud Foundry's columns, types, nullability, indexes."""
    assert _columns(engine, "service_usage_events", backend) == SERVICE_COLUMNS
    assert _indexes(engine, "service_usage_events") == SERVICE_INDEXES


def test_spec_1_3_resource_tables(engine: Engine, backend: db.Backend) -> None:
    """SPEC §1.3: the resource tables and their columns; unique guids; legacy NULLs allowed."""
    inspector = sa.inspect(engine)
    for table, expected in RESOURCE_COLUMNS.items():
        columns = {c["name"]: c for c in inspector.get_columns(table)}
        assert set(columns) == expected, table
        unique_guid = any(
            ix["column_names"] == ["guid"] and ix["unique"] for ix in inspector.get_indexes(table)
        ) or any(uc["column_names"] == ["guid"] for uc in inspector.get_unique_constraints(table))
        assert unique_guid, f"{table}.guid is not unique"
        assert not columns["guid"]["nullable"]
    for table, column in LEGACY_NULLABLE:
        assert {c["name"]: c for c in inspector.get_columns(table)}[column]["nullable"]


def _event(guid: str, created_at: datetime) -> dict[str, object]:
    return {
        "guid": guid,
        "created_at": created_at,
        "instance_count": 1,
        "memory_in_mb_per_instance": 64,
        "state": "STARTED",
        "app_guid": "p",
        "app_name": "a",
        "space_guid": "s",
        "space_name": "s",
        "org_guid": "o",
    }


def test_spec_1_ids_never_reused_after_delete(engine: Engine) -> None:
    """SPEC §1: ids autoincrement and are never reused after the newest row is deleted."""
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    with engine.begin() as conn:
        first = conn.execute(
            app_usage_events.insert().values(_event("g1", moment))
        ).inserted_primary_key
        second = conn.execute(
            app_usage_events.insert().values(_event("g2", moment))
        ).inserted_primary_key
    assert first is not None and second is not None
    with engine.begin() as conn:
        conn.execute(app_usage_events.delete().where(app_usage_events.c.id == second[0]))
    # A new connection, so no driver-side cache hides what the database would reuse.
    engine.dispose()
    with engine.begin() as conn:
        third = conn.execute(
            app_usage_events.insert().values(_event("g3", moment))
        ).inserted_primary_key
    assert third is not None
    assert first[0] < second[0] < third[0]


@pytest.mark.parametrize(
    "written",
    [
        datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC),
        datetime(2026, 3, 4, 7, 6, 7, 1, tzinfo=timezone(timedelta(hours=2))),
    ],
    ids=["utc", "plus-two-hours"],
)
def test_spec_1_timestamps_keep_microseconds_in_utc(engine: Engine, written: datetime) -> None:
    """SPEC §1: created_at keeps microseconds on every backend and is stored and read as UTC."""
    with engine.begin() as conn:
        conn.execute(
            service_usage_events.insert().values(
                guid="s1",
                created_at=written,
                state="CREATED",
                org_guid="o",
                space_guid="s",
                space_name="s",
                service_instance_guid="i",
                service_instance_name="n",
                service_instance_type="managed_service_instance",
            )
        )
    with engine.connect() as conn:
        read = conn.execute(sa.select(service_usage_events.c.created_at)).scalar_one()
        # Compare in the database too: ordering by created_at must see the microseconds.
        later = conn.execute(
            sa.select(sa.func.count()).where(
                service_usage_events.c.created_at > written - timedelta(microseconds=1)
            )
        ).scalar_one()
    assert read == written
    assert read.tzinfo is not None and read.utcoffset() == timedelta(0)
    assert later == 1
