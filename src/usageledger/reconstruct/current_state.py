"""What is running now, from the event tables alone (SPEC CS1–CS4).

Two implementations that must agree on every input (CS2): `running_by_sql`, one set-based query
per lifecycle that walks the lifecycle indexes and touches only the latest events of each
resource, and `running_by_fold`, the consumer's state machine over every event. `drift` compares
the result with the resource tables (CS3). Everything runs in read-only transactions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from usageledger import db
from usageledger.lifecycles import (
    APP_PROCESS,
    APP_USAGE_EVENTS,
    LIFECYCLES,
    SERVICE_INSTANCE,
    SERVICE_USAGE_EVENTS,
    TASK,
    Lifecycle,
)
from usageledger.reconstruct.billing import (
    ResourceId,
    ResourceState,
    UsageEvent,
    start_is_lower_bound,
    transition,
)
from usageledger.reconstruct.source import read_all_events
from usageledger.schema import (
    EVENT_TABLES,
    processes,
    service_instances,
    tasks,
)

KINDS: tuple[str, ...] = tuple(lc.kind for lc in LIFECYCLES)
#: Task states in which a task is still billable (SPEC B1: CANCELING is still running).
RUNNING_TASK_STATES = ("RUNNING", "CANCELING")


@attrs.frozen(kw_only=True)
class RunningResource:
    """One running resource (CS1): start of its current run, current footprint, last event."""

    kind: str
    guid: str
    name: str
    space_guid: str
    org_guid: str
    started_at: datetime
    start_is_lower_bound: bool
    instance_count: int | None
    memory_in_mb_per_instance: int | None
    service_plan_guid: str | None
    last_event_id: int


@attrs.frozen(kw_only=True)
class Drift:
    """A disagreement between the event tables and the resource tables (CS3)."""

    kind: str
    guid: str
    problem: str  # "running_without_open_run" (run backfill) | "open_run_not_running" (repair)
    remedy: str


RUNNING_WITHOUT_OPEN_RUN = "running_without_open_run"
OPEN_RUN_NOT_RUNNING = "open_run_not_running"


def _kinds(kind: str | None) -> list[Lifecycle]:
    return [lc for lc in LIFECYCLES if kind is None or lc.kind == kind]


#: The columns of a run's last opening that a running resource shows (CS1): its key, names and
#: footprint; `state` tells a task row from a process row. Fewer columns than the consumer
#: reads, since current-state sends tens of thousands of these rows to the client.
_LATEST_COLUMNS: dict[str, tuple[str, ...]] = {
    APP_USAGE_EVENTS: (
        "id",
        "state",
        "app_guid",
        "task_guid",
        "app_name",
        "task_name",
        "space_guid",
        "org_guid",
        "instance_count",
        "memory_in_mb_per_instance",
    ),
    SERVICE_USAGE_EVENTS: (
        "id",
        "state",
        "service_instance_guid",
        "service_instance_name",
        "service_plan_guid",
        "space_guid",
        "org_guid",
    ),
}
#: Text columns that legacy rows may hold as NULL; a UsageEvent keeps '' (as the reader does).
_EMPTY_WHEN_NULL = ("app_guid", "app_name", "service_instance_name", "space_guid", "org_guid")


def _running_query(lc: Lifecycle) -> sa.Select[*tuple[Any, ...]]:
    """The set-based query for one lifecycle: every running key's last opening (its footprint
    and names) and the opening that started its current run.

    One pass over the lifecycle's rows (the index (state, key, id) for processes and services)
    gives, per key, the last ending and the last opening; a key runs when its last opening is
    above its last ending. The run starts at the first opening above the last ending: the key's
    first opening when it never ended, else found by an index probe for that key alone.

    Only the running keys go on: their last opening is joined by primary key, and the three
    columns of their start row are read by correlated subqueries on the primary key, so that
    no plan can turn the lookup of a few thousand start rows into a hash of the whole table.
    """
    t = EVENT_TABLES[lc.table]
    key = t.c[lc.key_column]
    last = (
        sa.select(
            key.label("k"),
            sa.func.max(sa.case((t.c.state.in_(lc.endings), t.c.id))).label("end_id"),
            sa.func.max(sa.case((t.c.state.in_(lc.openings), t.c.id))).label("open_id"),
            sa.func.min(sa.case((t.c.state.in_(lc.openings), t.c.id))).label("min_open_id"),
        )
        .where(t.c.state.in_(lc.states))
        .group_by(key)
        .subquery(f"{lc.kind}_last")
    )
    end_id = sa.func.coalesce(last.c.end_id, 0)
    opening = t.alias(f"{lc.kind}_opening")
    first_opening = (
        sa.select(sa.func.min(opening.c.id))
        .where(
            opening.c[lc.key_column] == last.c.k,
            opening.c.state.in_(lc.openings),
            opening.c.id > end_id,
        )
        .scalar_subquery()
    )
    # A key that never ended starts at its first opening; only the others need the probe.
    start_id = sa.case((last.c.end_id.is_(None), last.c.min_open_id), else_=first_opening)
    runs = (
        sa.select(last.c.open_id, start_id.label("start_id"))
        .where(last.c.open_id > end_id)
        .subquery(f"{lc.kind}_runs")
    )
    latest = t.alias(f"{lc.kind}_latest")

    def of_start(column: str) -> sa.ColumnElement[Any]:
        if column not in t.c:
            return sa.null()
        first = t.alias(f"{lc.kind}_start_{column}")
        return sa.select(first.c[column]).where(first.c.id == runs.c.start_id).scalar_subquery()

    return sa.select(
        *(latest.c[name] for name in _LATEST_COLUMNS[lc.table]),
        of_start("created_at").label("start_created_at"),
        of_start("state").label("start_state"),
        of_start("previous_state").label("start_previous_state"),
        runs.c.start_id.label("start_id"),
    ).select_from(runs.join(latest, latest.c.id == runs.c.open_id))


def _running_from_events(kind: str, latest: UsageEvent, start: UsageEvent) -> RunningResource:
    footprint = latest.footprint
    return RunningResource(
        kind=kind,
        guid=latest.key or "",
        name=latest.name,
        space_guid=latest.space_guid,
        org_guid=latest.org_guid,
        started_at=start.created_at,
        start_is_lower_bound=start_is_lower_bound(start),
        instance_count=footprint.instance_count,
        memory_in_mb_per_instance=footprint.memory_in_mb_per_instance,
        service_plan_guid=footprint.service_plan_guid,
        last_event_id=latest.id,
    )


def running_by_sql(conn: Connection, kind: str | None = None) -> list[RunningResource]:
    """CS1 by one set-based query per lifecycle, sorted by kind and guid.

    Sets the planner up for these queries first, for the caller's transaction only
    (`db.prepare_for_current_state`: more memory for the per-key aggregation, index probes for
    the running keys' rows).
    """
    db.prepare_for_current_state(conn)
    found: list[RunningResource] = []
    for lc in _kinds(kind):
        names = _LATEST_COLUMNS[lc.table]
        width = len(names)
        for row in conn.execute(_running_query(lc)).all():
            values = dict(zip(names, row[:width], strict=True))
            for name in _EMPTY_WHEN_NULL:
                if name in values and values[name] is None:
                    values[name] = ""
            start_created_at, start_state, start_previous_state, start_id = row[width:]
            # The last opening's own created_at is not read: a running resource shows its
            # run's start, which comes from the start row.
            latest = UsageEvent(table=lc.table, guid="", created_at=start_created_at, **values)
            start = UsageEvent(
                table=lc.table,
                id=int(start_id),
                guid="",
                created_at=start_created_at,
                state=start_state,
                previous_state=start_previous_state,
            )
            found.append(_running_from_events(lc.kind, latest, start))
    return sorted(found, key=lambda r: (KINDS.index(r.kind), r.guid))


def running_from_events(
    events: Iterable[UsageEvent], kind: str | None = None
) -> list[RunningResource]:
    """CS1 by the consumer's state machine (CS2), streaming: memory grows with the number of
    resources, not events. `events` must come in id order per table."""
    wanted = {lc.kind for lc in _kinds(kind)}
    states: dict[ResourceId, ResourceState] = {}
    for event in events:
        if event.kind not in wanted:
            continue
        step = transition(states.get((event.kind, event.key or "")), event)
        if step.state is not None:
            states[(step.state.kind, step.state.guid)] = step.state
    found = [
        RunningResource(
            kind=state.kind,
            guid=state.guid,
            name=state.name,
            space_guid=state.space_guid,
            org_guid=state.org_guid,
            started_at=state.run_start,
            start_is_lower_bound=state.run_start_is_lower_bound,
            instance_count=state.footprint.instance_count,
            memory_in_mb_per_instance=state.footprint.memory_in_mb_per_instance,
            service_plan_guid=state.footprint.service_plan_guid,
            last_event_id=state.last_event_id,
        )
        for state in states.values()
        if state.is_open and state.run_start is not None
    ]
    return sorted(found, key=lambda r: (KINDS.index(r.kind), r.guid))


def running_by_fold(conn: Connection, kind: str | None = None) -> list[RunningResource]:
    """CS1 by folding every event of both tables (reads the whole tables; CS2 cross-check)."""
    return running_from_events(read_all_events(conn), kind)


def running_per_resource_tables(conn: Connection, kind: str | None = None) -> dict[str, set[str]]:
    """What the resource tables say is running, per kind (CS3; same definition as backfill)."""
    result: dict[str, set[str]] = {}
    for lc in _kinds(kind):
        if lc is APP_PROCESS:
            statement = sa.select(processes.c.guid).where(processes.c.state == "STARTED")
        elif lc is TASK:
            statement = sa.select(tasks.c.guid).where(tasks.c.state.in_(RUNNING_TASK_STATES))
        else:
            assert lc is SERVICE_INSTANCE
            statement = sa.select(service_instances.c.guid)
        result[lc.kind] = {str(g) for g in conn.execute(statement).scalars()}
    return result


def drift(running: Sequence[RunningResource], per_tables: dict[str, set[str]]) -> list[Drift]:
    """CS3: running per the resource tables without an open run on record (run backfill), and
    open on record but not running (awaiting repair)."""
    on_record: dict[str, set[str]] = {k: set() for k in per_tables}
    for r in running:
        if r.kind in on_record:
            on_record[r.kind].add(r.guid)
    found: list[Drift] = []
    for kind in sorted(per_tables, key=KINDS.index):
        for guid in sorted(per_tables[kind] - on_record[kind]):
            found.append(
                Drift(
                    kind=kind,
                    guid=guid,
                    problem=RUNNING_WITHOUT_OPEN_RUN,
                    remedy="run `usageledger backfill` to seed a baseline",
                )
            )
        for guid in sorted(on_record[kind] - per_tables[kind]):
            found.append(
                Drift(
                    kind=kind,
                    guid=guid,
                    problem=OPEN_RUN_NOT_RUNNING,
                    remedy="awaiting repair: run `usageledger backfill` to append the ending",
                )
            )
    return found
