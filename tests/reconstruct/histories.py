"""Usage-event histories for the reconstruct tests: rows written straight into the event tables,
and Hypothesis strategies for random histories of a few resources."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import sqlalchemy as sa
from hypothesis import strategies as st
from sqlalchemy.engine import Connection, Engine

from usageledger.lifecycles import APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS
from usageledger.reconstruct.billing import UsageEvent
from usageledger.schema import app_usage_events, service_usage_events

T0 = datetime(2026, 1, 1, tzinfo=UTC)
_counter = itertools.count()


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def app_row(
    state: str,
    *,
    app_guid: str = "",
    minute: float = 0,
    instances: int = 1,
    memory: int = 256,
    previous_state: str | None = None,
    previous_instances: int | None = None,
    previous_memory: int | None = None,
    task_guid: str | None = None,
    parent_app_guid: str | None = None,
    package_guid: str | None = None,
    name: str = "",
) -> dict[str, Any]:
    return {
        "guid": str(uuid.uuid4()),
        "created_at": at(minute),
        "instance_count": instances,
        "memory_in_mb_per_instance": memory,
        "state": state,
        "app_guid": app_guid,
        "app_name": name if task_guid is None else "",
        "space_guid": "space-1",
        "space_name": "space",
        "org_guid": "org-1",
        "previous_state": previous_state,
        "previous_instance_count": previous_instances,
        "previous_memory_in_mb_per_instance": previous_memory,
        "task_guid": task_guid,
        "task_name": name if task_guid is not None else None,
        "parent_app_guid": parent_app_guid,
        "package_guid": package_guid,
    }


def service_row(
    state: str, *, instance: str, minute: float = 0, plan: str | None = "plan-a", name: str = "db"
) -> dict[str, Any]:
    return {
        "guid": str(uuid.uuid4()),
        "created_at": at(minute),
        "state": state,
        "org_guid": "org-1",
        "space_guid": "space-1",
        "space_name": "space",
        "service_instance_guid": instance,
        "service_instance_name": name,
        "service_instance_type": "managed_service_instance",
        "service_plan_guid": plan,
    }


def insert_app(bind: Engine | Connection, *rows: dict[str, Any]) -> list[int]:
    return _insert(bind, app_usage_events, rows)


def insert_service(bind: Engine | Connection, *rows: dict[str, Any]) -> list[int]:
    return _insert(bind, service_usage_events, rows)


def _insert(
    bind: Engine | Connection, table: sa.Table, rows: Sequence[dict[str, Any]]
) -> list[int]:
    ids: list[int] = []
    if isinstance(bind, Engine):
        with bind.begin() as conn:
            return _insert(conn, table, rows)
    for row in rows:
        key = bind.execute(table.insert().values(**row)).inserted_primary_key
        assert key is not None
        ids.append(int(key[0]))
    return ids


def event(table: str, event_id: int, row: dict[str, Any]) -> UsageEvent:
    """The UsageEvent a consumer reads for `row` stored with `event_id` (pure tests)."""
    names = {f.name for f in attrs.fields(UsageEvent)}
    values = {k: v for k, v in row.items() if k in names}
    for key in ("app_name", "app_guid"):
        if values.get(key) is None and key in values:
            values[key] = ""
    return UsageEvent(table=table, id=event_id, **values)


def app_events(*rows: dict[str, Any]) -> list[UsageEvent]:
    return [event(APP_USAGE_EVENTS, i, row) for i, row in enumerate(rows, start=1)]


def service_events(*rows: dict[str, Any]) -> list[UsageEvent]:
    return [event(SERVICE_USAGE_EVENTS, i, row) for i, row in enumerate(rows, start=1)]


# --- random histories -----------------------------------------------------------------------

APP_STATES = (
    "STARTED",
    "STOPPED",
    "WAS_RUNNING",
    "STAGING_STARTED",
    "STAGING_STOPPED",
    "BUILDPACK_SET",
    "MYSTERY",
)
TASK_STATES = ("TASK_STARTED", "TASK_STOPPED", "TASK_WAS_RUNNING")
SERVICE_STATES = ("CREATED", "UPDATED", "DELETED", "WAS_RUNNING")
#: Resource keys, the common ones first (Hypothesis shrinks towards them).
APP_KEYS = ("p1", "p2", "p3", "", "P1", "p1 ", "t1")
TASK_KEYS: tuple[str | None, ...] = ("t1", "t2", "", None, "T1")
SERVICE_KEYS = ("s1", "s2", "", "S1")


@st.composite
def app_table_rows(draw: st.DrawFn, max_size: int = 30) -> list[dict[str, Any]]:
    """A random app_usage_events history over a few processes and tasks, created_at sometimes
    out of id order; any sequence of states, including the ones the producer never writes.
    Keys include legacy shapes: '' and a NULL task_guid, keys that differ only in case or a
    trailing space, and one key used by a process and a task."""
    size = draw(st.integers(0, max_size))
    rows = []
    minute = 0.0
    for _ in range(size):
        minute += draw(st.sampled_from([-3.0, 0.0, 1.0, 5.0, 30.0]))
        if draw(st.booleans()):
            state = draw(st.sampled_from(APP_STATES))
            guid = draw(st.sampled_from(APP_KEYS))
            staging = state.startswith("STAGING") or state == "BUILDPACK_SET"
            rows.append(
                app_row(
                    state,
                    app_guid="" if staging else guid,
                    minute=minute,
                    instances=draw(st.integers(1, 3)),
                    memory=draw(st.sampled_from([128, 256])),
                    previous_state=draw(
                        st.sampled_from([None, "STARTED", "STOPPED", "WAS_RUNNING"])
                    ),
                    previous_instances=draw(st.one_of(st.none(), st.integers(1, 3))),
                    previous_memory=draw(st.one_of(st.none(), st.sampled_from([128, 256]))),
                    parent_app_guid=guid if staging else None,
                    package_guid="pkg" if staging else None,
                    name=f"app-{guid}",
                )
            )
        else:
            state = draw(st.sampled_from(TASK_STATES))
            task = draw(st.sampled_from(TASK_KEYS))
            rows.append(
                app_row(
                    state,
                    task_guid=task,
                    minute=minute,
                    memory=draw(st.sampled_from([64, 512])),
                    previous_state=draw(st.sampled_from([None, "TASK_WAS_RUNNING"])),
                    name=f"task-{task}",
                )
            )
    return rows


@st.composite
def service_table_rows(draw: st.DrawFn, max_size: int = 15) -> list[dict[str, Any]]:
    size = draw(st.integers(0, max_size))
    rows = []
    minute = 0.0
    for _ in range(size):
        minute += draw(st.sampled_from([-2.0, 0.0, 2.0, 60.0]))
        rows.append(
            service_row(
                draw(st.sampled_from(SERVICE_STATES)),
                instance=draw(st.sampled_from(SERVICE_KEYS)),
                minute=minute,
                plan=draw(st.sampled_from(["plan-a", "plan-b", None])),
            )
        )
    return rows


def fresh_label() -> str:
    return f"c{next(_counter)}"
