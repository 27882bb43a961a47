"""What is running now, from the event tables alone (SPEC CS1–CS4).

Two implementations that must agree on every input (CS2): `running_by_sql`, one set-based query
per lifecycle that walks the lifecycle indexes and touches only the latest events of each
resource, and `running_by_fold`, the consumer's state machine over every event. `drift` compares
the result with the resource tables (CS3). Everything runs in read-only transactions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from usageledger import db
from usageledger.event_lookups import in_states, state_groups
from usageledger.lifecycles import (
    APP_PROCESS,
    LIFECYCLES,
    SERVICE_INSTANCE,
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


#: What a running resource shows of its run's last opening (CS1), per kind, in one layout:
#: id, key, name, space, org, instance count, memory, service plan (NULL where the kind has
#: none). Only these, since current-state sends tens of thousands of rows to the client.
_LATEST_COLUMNS: dict[str, tuple[str | None, ...]] = {
    "app": (
        "id",
        "app_guid",
        "app_name",
        "space_guid",
        "org_guid",
        "instance_count",
        "memory_in_mb_per_instance",
        None,
    ),
    "task": (
        "id",
        "task_guid",
        "task_name",
        "space_guid",
        "org_guid",
        "instance_count",
        "memory_in_mb_per_instance",
        None,
    ),
    "service": (
        "id",
        "service_instance_guid",
        "service_instance_name",
        "space_guid",
        "org_guid",
        None,
        None,
        "service_plan_guid",
    ),
}


def _running_query(lc: Lifecycle, bind: Connection) -> sa.Select[*tuple[Any, ...]]:
    """The set-based query for one lifecycle: every running key's last opening (its footprint
    and names) and the opening that started its current run.

    One pass over the lifecycle's rows (the index (state, key, id) for processes and services)
    gives, per key, its last event and its last ending; a key runs when its last event is above
    its last ending (so it is an opening). The run starts at the first opening above the last
    ending: the key's first event when it never ended, else found by index probes for that key
    alone, one per state where the index leads with (state, key) (`event_lookups`: MariaDB
    seeks an IN list on the state only, and would scan every opening for each key).

    Only the running keys go on: their last opening and their start row are joined by primary
    key, one index probe each (`db.prepare_for_current_state` rules out plans that would hash
    or scan the whole table for a few thousand rows).

    States and keys match byte for byte, as the fold matches them (CS2): on MariaDB each text
    comparison gets a byte comparison beside it, and keys group by their bytes
    (`db.byte_comparison`). Rows without a key are no resource (the fold reports them, C11).
    """
    t = EVENT_TABLES[lc.table]
    key = t.c[lc.key_column]
    as_bytes = db.byte_comparison(bind)

    def in_group(column: sa.ColumnElement[str], states: tuple[str, ...]) -> sa.ColumnElement[bool]:
        plain = in_states(column, states)
        return plain if as_bytes is None else sa.and_(plain, in_states(as_bytes(column), states))

    # Only the endings need a CASE: the key's last lifecycle event is an opening exactly when
    # it is not its last ending, and a key that never ended has nothing but openings, so its
    # first event is its first opening. One CASE per row instead of three: about a quarter
    # off the aggregation (bench, 1M events).
    # Grouped by the key's bytes, the key itself comes out through an aggregate (all of a
    # group's keys are the same bytes); the plain key serves the index probes below.
    grouped_key, stored_key = (key, key) if as_bytes is None else (as_bytes(key), sa.func.min(key))
    last = (
        sa.select(
            stored_key.label("k"),
            sa.func.max(t.c.id).label("last_id"),
            sa.func.min(t.c.id).label("first_id"),
            sa.func.max(sa.case((in_group(t.c.state, lc.endings), t.c.id))).label("end_id"),
        )
        .where(in_group(t.c.state, lc.states), key.is_not(None))
        .group_by(grouped_key)
        .subquery(f"{lc.kind}_last")
    )
    end_id = sa.func.coalesce(last.c.end_id, 0)
    opening = t.alias(f"{lc.kind}_opening")
    opening_key = opening.c[lc.key_column]
    same_key = opening_key == last.c.k
    if as_bytes is not None:
        same_key = sa.and_(same_key, as_bytes(opening_key) == as_bytes(last.c.k))
    # No run opens above id 2^62: the stand-in for "no opening of this state", since LEAST
    # does not treat NULL alike on every backend.
    none = sa.literal(2**62, sa.BigInteger)
    probes = [
        sa.func.coalesce(
            sa.select(sa.func.min(opening.c.id))
            .where(in_group(opening.c.state, group), same_key, opening.c.id > end_id)
            .scalar_subquery(),
            none,
        )
        for group in state_groups(lc, t, lc.openings)
    ]
    first_opening = probes[0] if len(probes) == 1 else db.least(bind, *probes)
    # A key that never ended starts at its first event; only the others need the probe.
    start_id = sa.case((last.c.end_id.is_(None), last.c.first_id), else_=first_opening)
    runs = (
        sa.select(last.c.last_id.label("open_id"), start_id.label("start_id"))
        .where(last.c.last_id > end_id)
        # In id order, the probes below walk the heap and the primary key forwards instead of
        # in hash order (PostgreSQL, bench 1M events: about 8 % off the whole command; other
        # backends may drop the ORDER BY of a derived table, which costs nothing there).
        .order_by(last.c.last_id)
        .subquery(f"{lc.kind}_runs")
    )
    latest = t.alias(f"{lc.kind}_latest")
    start = t.alias(f"{lc.kind}_start")
    start_previous_state = start.c.previous_state if "previous_state" in t.c else sa.null()
    return sa.select(
        *(sa.null() if name is None else latest.c[name] for name in _LATEST_COLUMNS[lc.kind]),
        start.c.created_at.label("start_created_at"),
        start.c.state.label("start_state"),
        start_previous_state.label("start_previous_state"),
    ).select_from(
        runs.join(latest, latest.c.id == runs.c.open_id).join(start, start.c.id == runs.c.start_id)
    )


def _lower_bound_of_start(table: str) -> Callable[[str, str | None], bool]:
    """Whether a run opened by a row of `table` with this (state, previous_state) starts at a
    lower bound: the consumer's own rule (`start_is_lower_bound`), asked once per combination,
    since it depends on nothing else (billing.Meaning)."""

    @functools.cache
    def lower_bound(state: str, previous_state: str | None) -> bool:
        event = UsageEvent(
            table=table,
            id=0,
            guid="",
            created_at=datetime.min,
            state=state,
            previous_state=previous_state,
        )
        return start_is_lower_bound(event)

    return lower_bound


def _running_of_rows(lc: Lifecycle, rows: Sequence[Sequence[Any]]) -> list[RunningResource]:
    """The running resources of `_running_query(lc)`'s rows (times naive UTC), sorted by guid.

    Built straight from the row values as a UsageEvent would read them (NULL text as ''; the
    footprint of a process or task is its instances and memory, of a service its plan): tens
    of thousands of rows make two UsageEvent objects per row a noticeable share of the time.
    """
    lower_bound = _lower_bound_of_start(lc.table)
    found = [
        RunningResource(
            kind=lc.kind,
            guid=guid or "",
            name=name or "",
            space_guid=space or "",
            org_guid=org or "",
            started_at=created_at.replace(tzinfo=UTC),
            start_is_lower_bound=lower_bound(state, previous_state),
            instance_count=count,
            memory_in_mb_per_instance=memory,
            service_plan_guid=plan,
            last_event_id=id_,
        )
        for (
            id_,
            guid,
            name,
            space,
            org,
            count,
            memory,
            plan,
            created_at,
            state,
            previous_state,
        ) in rows
    ]
    found.sort(key=attrgetter("guid"))
    return found


def running_by_sql(conn: Connection, kind: str | None = None) -> list[RunningResource]:
    """CS1 by one set-based query per lifecycle, sorted by kind and guid.

    Sets the planner up for these queries first, for the caller's transaction only
    (`db.prepare_for_current_state`: more memory for the per-key aggregation, no parallel
    workers, index probes for the running keys' rows).
    """
    db.prepare_for_current_state(conn)
    found: list[RunningResource] = []
    # LIFECYCLES is in KINDS order, so appending per lifecycle keeps the sort by kind.
    for lc in _kinds(kind):
        found.extend(_running_of_rows(lc, db.fetch_rows(conn, _running_query(lc, conn))))
    return found


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


#: A run opened by a baseline (or a resize, C6) is what the backfill's repair closes (B5).
_AWAITING_REPAIR = (
    "awaiting repair: if a baseline opened it, `usageledger backfill` appends the ending"
)
#: A run with a real start: no repair applies; the platform lost the ending (SPEC §3).
_ENDING_MISSING = (
    "its ending is missing: the platform stopped it without recording one, and the backfill "
    "repairs only baselines (see docs/operations.md)"
)


def drift(running: Sequence[RunningResource], per_tables: dict[str, set[str]]) -> list[Drift]:
    """CS3: running per the resource tables without an open run on record (run backfill), and
    open on record but not running (awaiting repair)."""
    on_record: dict[str, set[str]] = {k: set() for k in per_tables}
    lower_bound: set[tuple[str, str]] = set()
    for r in running:
        if r.kind in on_record:
            on_record[r.kind].add(r.guid)
            if r.start_is_lower_bound:
                lower_bound.add((r.kind, r.guid))
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
                    remedy=(_AWAITING_REPAIR if (kind, guid) in lower_bound else _ENDING_MISSING),
                )
            )
    return found
