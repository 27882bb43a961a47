"""Properties of one backfill run (SPEC §5) over random platforms, on every backend.

A platform is a few processes (STARTED, STOPPED or gone; legacy NULL instances and memory, B4),
tasks in every state or gone, service instances (managed, user-provided or gone), and random
usage events for them in random id order: real starts and endings, baselines, starts pruned by
an old cleanup, stale baselines of resources that have stopped or are gone, legacy task rows
without task_guid, '' keys, keys that differ from a resource's only in case or a trailing
space, a key shared by a process and a task, and staging rows. What the run must do is
computed by a small model in this file, from the resource tables and the rows, as SPEC §2 and
§5 state it, never by the product's own helpers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import attrs
import sqlalchemy as sa
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from tests.conftest import examples
from usageledger import db
from usageledger.backfill import backfill
from usageledger.clock import SimulatedClock
from usageledger.schema import (
    RESOURCE_TABLES,
    app_usage_events,
    apps,
    droplets,
    organizations,
    packages,
    processes,
    service_brokers,
    service_instances,
    service_plans,
    service_usage_events,
    services,
    spaces,
    tasks,
)

Row = dict[str, Any]
#: Every event row of both tables, by table name, in id order.
Tables = dict[str, list[Row]]

SEED_TIME = datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)
EARLIER = datetime(2026, 2, 1, tzinfo=UTC)
EVENT_TABLES = (app_usage_events, service_usage_events)

# --- the model: SPEC §2's lifecycles and §5's rules, independent of usageledger ------------


@attrs.frozen
class Kind:
    """One lifecycle of SPEC §2: its table, key column, openings, ending and baseline."""

    name: str
    table: str
    key: str
    openings: frozenset[str]
    ending: str
    baseline: str

    @property
    def states(self) -> frozenset[str]:
        return self.openings | {self.ending}


APP = Kind(
    "app",
    "app_usage_events",
    "app_guid",
    frozenset({"STARTED", "WAS_RUNNING"}),
    "STOPPED",
    "WAS_RUNNING",
)
TASK = Kind(
    "task",
    "app_usage_events",
    "task_guid",
    frozenset({"TASK_STARTED", "TASK_WAS_RUNNING"}),
    "TASK_STOPPED",
    "TASK_WAS_RUNNING",
)
SERVICE = Kind(
    "service",
    "service_usage_events",
    "service_instance_guid",
    frozenset({"CREATED", "UPDATED", "WAS_RUNNING"}),
    "DELETED",
    "WAS_RUNNING",
)
KINDS = (APP, TASK, SERVICE)


def kind_of(table: str, state: str) -> Kind | None:
    return next((k for k in KINDS if k.table == table and state in k.states), None)


def history(rows: Tables, kind: Kind, key: str | None) -> list[Row]:
    """The key's lifecycle rows in id order (a NULL key pairs with nothing, not even NULL)."""
    if key is None:
        return []
    return [r for r in rows[kind.table] if r["state"] in kind.states and r[kind.key] == key]


def run_on_record(rows: Tables, kind: Kind, key: str | None) -> bool:
    """B2: an opening of the key with no ending after it, by id."""
    rows_of_key = history(rows, kind, key)
    return bool(rows_of_key) and rows_of_key[-1]["state"] in kind.openings


def open_baseline(rows: Tables, kind: Kind, key: str | None) -> Row | None:
    """B5: the key's latest baseline, when no ending follows it (by id)."""
    rows_of_key = history(rows, kind, key)
    baselines = [r for r in rows_of_key if r["state"] == kind.baseline]
    if not baselines:
        return None
    latest = baselines[-1]
    if any(r["state"] == kind.ending and r["id"] > latest["id"] for r in rows_of_key):
        return None
    return latest


# --- random platforms -----------------------------------------------------------------------

PROCESS_GUIDS = ("p1", "p2", "p3", "p4")
#: "p1" is also a task's guid: a process and a task may share a key string (different columns).
TASK_GUIDS = ("t1", "t2", "t3", "p1")
INSTANCE_GUIDS = ("s1", "s2", "s3")
TASK_STATES = ("PENDING", "RUNNING", "CANCELING", "SUCCEEDED", "FAILED")
#: Two apps: "a1" with a staged current droplet and buildpack, "a2" with no package at all.
APP_GUIDS = ("a1", "a2")
SPACE_OF_APP = {"a1": "space-a", "a2": "space-b"}
PACKAGE_STATE_OF_APP = {"a1": "STAGED", "a2": "PENDING"}
BUILDPACK_OF_APP: dict[str, tuple[str | None, str | None]] = {
    "a1": ("bp-1", "ruby"),
    "a2": (None, None),
}
ORG = "org-1"


@attrs.frozen
class Process:
    guid: str
    app: str
    #: STARTED or STOPPED; None: the row is gone (inserted, then deleted: a sparse id window).
    state: str | None
    type: str | None
    instances: int | None
    memory: int | None


@attrs.frozen
class Task:
    guid: str
    app: str
    state: str | None  # None: gone
    name: str | None
    memory: int | None


@attrs.frozen
class Instance:
    guid: str
    managed: bool
    gone: bool
    name: str | None


@attrs.frozen
class Event:
    """An existing usage event. `size` makes rows of one key tell apart (sizes, names)."""

    kind: str  # "app", "task", "service" or "staging" (no lifecycle)
    state: str
    key: str | None
    size: int


@attrs.frozen
class Platform:
    app_name: str | None
    space_name: str | None
    processes: tuple[Process, ...]
    tasks: tuple[Task, ...]
    instances: tuple[Instance, ...]
    events: tuple[Event, ...]

    def running(self, kind: Kind) -> set[str]:
        """B1: STARTED processes, RUNNING or CANCELING tasks, existing service instances."""
        if kind is APP:
            return {p.guid for p in self.processes if p.state == "STARTED"}
        if kind is TASK:
            return {t.guid for t in self.tasks if t.state in ("RUNNING", "CANCELING")}
        return {i.guid for i in self.instances if not i.gone}

    def keys(self, kind: Kind) -> set[str]:
        """Every key the model judges: the resources' and the events' (not NULL)."""
        resources: Iterable[str] = {
            APP: (p.guid for p in self.processes),
            TASK: (t.guid for t in self.tasks),
            SERVICE: (i.guid for i in self.instances),
        }[kind]
        events = (e.key for e in self.events if e.kind == kind.name and e.key is not None)
        return {*resources, *events}


sizes = st.none() | st.integers(min_value=0, max_value=8)


def process_specs(guid: str) -> st.SearchStrategy[Process]:
    return st.builds(
        Process,
        guid=st.just(guid),
        app=st.sampled_from(APP_GUIDS),
        state=st.sampled_from(["STARTED", "STARTED", "STOPPED", None]),
        type=st.sampled_from(["web", "worker", None]),
        instances=sizes,
        memory=st.none() | st.sampled_from([64, 256, 1024]),
    )


def task_specs(guid: str) -> st.SearchStrategy[Task]:
    return st.builds(
        Task,
        guid=st.just(guid),
        app=st.sampled_from(APP_GUIDS),
        state=st.sampled_from([*TASK_STATES, None]),
        name=st.none() | st.just("migrate"),
        memory=st.none() | st.sampled_from([128, 512]),
    )


def instance_specs(guid: str) -> st.SearchStrategy[Instance]:
    return st.builds(
        Instance,
        guid=st.just(guid),
        managed=st.booleans(),
        gone=st.booleans(),
        name=st.none() | st.just("db"),
    )


def some_of(*choices: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[Any, ...]]:
    """Each resource of the pool exists (as a row, or as a row that is gone) or never did."""
    return st.tuples(*(st.one_of(choice, choice, st.none()) for choice in choices)).map(
        lambda drawn: tuple(x for x in drawn if x is not None)
    )


#: Event states and keys per lifecycle: the resources' keys, and keys of legacy rows. Those are
#: '' (a legacy row's key), None (a task row without task_guid, SPEC §1.1: nullable; NULL pairs
#: with nothing), and keys that differ from a resource's only in case or a trailing space (a
#: resource of their own on every backend, as for retention and the consumer). Staging rows
#: (no lifecycle) key on app a1. Baselines are drawn twice as often as other states.
EVENT_CHOICES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str | None, ...]]] = {
    "app": (("STARTED", "STOPPED", "WAS_RUNNING", "WAS_RUNNING"), PROCESS_GUIDS, ("", "P1", "p1 ")),
    "task": (
        ("TASK_STARTED", "TASK_STOPPED", "TASK_WAS_RUNNING", "TASK_WAS_RUNNING"),
        TASK_GUIDS,
        ("", None, "T1"),
    ),
    "service": (
        ("CREATED", "UPDATED", "DELETED", "WAS_RUNNING", "WAS_RUNNING"),
        INSTANCE_GUIDS,
        ("", "s1 "),
    ),
    "staging": (("STAGING_STARTED", "STAGING_STOPPED", "BUILDPACK_SET"), (), ("a1",)),
}


@st.composite
def event_lists(draw: st.DrawFn) -> tuple[Event, ...]:
    """Up to three events per resource key and one per legacy key, then shuffled: each key's
    rows, and the keys' rows between them, land in random id order."""
    drawn: list[Event] = []
    for kind, (states, resource_keys, legacy_keys) in EVENT_CHOICES.items():
        for key, most in [*((k, 3) for k in resource_keys), *((k, 1) for k in legacy_keys)]:
            for _ in range(draw(st.integers(min_value=0, max_value=most))):
                state = draw(st.sampled_from(states))
                drawn.append(Event(kind, state, key, draw(st.integers(min_value=0, max_value=9))))
    return tuple(draw(st.permutations(drawn)))


platforms = st.builds(
    Platform,
    app_name=st.none() | st.just("shop"),
    space_name=st.none() | st.just("prod"),
    processes=some_of(*map(process_specs, PROCESS_GUIDS)),
    tasks=some_of(*map(task_specs, TASK_GUIDS)),
    instances=some_of(*map(instance_specs, INSTANCE_GUIDS)),
    events=event_lists(),
)
batch_sizes = st.integers(min_value=1, max_value=5)

#: Every case at least once: a running resource of each kind with its start pruned and one
#: with its run on record; a CANCELING task without a record; stale baselines of a stopped
#: process, a gone process, a finished task, a gone task and a deleted instance (two of them
#: for one process, and one already closed); '' keys, a NULL task_guid, NULL sizes.
EVERY_CASE = Platform(
    app_name=None,
    space_name="prod",
    processes=(
        Process("p1", "a1", "STARTED", "web", None, None),
        Process("p2", "a2", "STARTED", None, 3, 256),
        Process("p3", "a1", "STOPPED", "web", 2, 64),
        Process("p4", "a1", None, "worker", 1, 64),
    ),
    tasks=(
        Task("t1", "a1", "CANCELING", None, None),
        Task("t2", "a2", "RUNNING", "migrate", 512),
        Task("t3", "a1", "SUCCEEDED", "migrate", 128),
        Task("p1", "a1", None, None, 128),
    ),
    instances=(
        Instance("s1", managed=True, gone=False, name="db"),
        Instance("s2", managed=False, gone=False, name=None),
        Instance("s3", managed=True, gone=True, name="db"),
    ),
    events=(
        Event("app", "STARTED", "p1", 1),
        Event("app", "STOPPED", "p1", 1),
        Event("app", "WAS_RUNNING", "p3", 2),
        Event("app", "STARTED", "p2", 3),
        Event("task", "TASK_WAS_RUNNING", "t3", 4),
        Event("task", "TASK_STARTED", "t2", 5),
        Event("task", "TASK_WAS_RUNNING", "p1", 6),
        Event("app", "WAS_RUNNING", "p4", 7),
        Event("app", "WAS_RUNNING", "p4", 8),
        Event("task", "TASK_STARTED", None, 1),
        Event("task", "TASK_STOPPED", None, 1),
        Event("app", "WAS_RUNNING", "", 2),
        Event("task", "TASK_WAS_RUNNING", "", 3),
        Event("app", "WAS_RUNNING", "p3", 9),
        Event("app", "STOPPED", "p3", 9),
        Event("staging", "STAGING_STARTED", "a1", 0),
        Event("service", "CREATED", "s1", 1),
        Event("service", "WAS_RUNNING", "s3", 2),
        Event("service", "WAS_RUNNING", "", 3),
    ),
)

#: A baseline without task_guid (a NULL key pairs with nothing, R9): it identifies no resource,
#: so no ending can ever be "later" for it, and closing it would add a row every run (B5, B7).
NULL_KEY_BASELINE = Platform(
    app_name="shop",
    space_name="prod",
    processes=(),
    tasks=(),
    instances=(),
    events=(Event("task", "TASK_WAS_RUNNING", None, 0),),
)
#: Keys compare byte for byte on every backend: another process's STARTED ('P1') is not the
#: current run of p1 (B2), and an ending of 'p2 ' does not close p2's stale baseline (B5).
KEY_VARIANTS = Platform(
    app_name="shop",
    space_name="prod",
    processes=(
        Process("p1", "a1", "STARTED", "web", 1, 64),
        Process("p2", "a1", "STOPPED", "web", 1, 64),
    ),
    tasks=(),
    instances=(),
    events=(
        Event("app", "STARTED", "P1", 1),
        Event("app", "WAS_RUNNING", "p2", 2),
        Event("app", "STOPPED", "p2 ", 2),
    ),
)


# --- writing a platform --------------------------------------------------------------------


def _event_row(event: Event) -> Row:
    common: Row = {
        "guid": str(uuid.uuid4()),
        "created_at": EARLIER,
        "state": event.state,
        "org_guid": ORG,
        "space_guid": "space-a",
        "space_name": f"space-{event.size}",
    }
    if event.kind == "service":
        return {
            **common,
            "service_instance_guid": event.key,
            "service_instance_name": f"db-{event.size}",
            "service_instance_type": "managed_service_instance",
            "service_plan_guid": f"plan-{event.size}",
        }
    is_app, is_task = event.kind == "app", event.kind == "task"
    previous = event.state in ("STOPPED", "TASK_STOPPED") or event.size % 2 == 1
    return {
        **common,
        "instance_count": 1 if is_task else event.size,
        "memory_in_mb_per_instance": 64 * event.size,
        "app_guid": event.key if is_app else "",
        "app_name": f"shop-{event.size}" if is_app else "",
        "task_guid": event.key if is_task else None,
        "task_name": f"task-{event.size}" if is_task else None,
        "parent_app_guid": "a1",
        "package_guid": "pk-1" if event.kind == "staging" else None,
        "package_state": "STAGED",
        "process_type": "web" if is_app else None,
        # Baselines carry previous_state NULL (B4); other rows sometimes a state.
        "previous_state": "STARTED" if previous and "WAS_RUNNING" not in event.state else None,
        "previous_instance_count": event.size if previous else None,
        "previous_memory_in_mb_per_instance": 32 * event.size if previous else None,
    }


def build(engine: Engine, platform: Platform) -> None:
    """Empty every table (ids restarted), then write the platform; events in list order."""
    db.truncate_tables(engine, [*RESOURCE_TABLES, *EVENT_TABLES])
    with engine.begin() as conn:
        conn.execute(organizations.insert().values(id=1, guid=ORG, name="acme"))
        conn.execute(
            spaces.insert(),
            [
                {"id": 1, "guid": "space-a", "name": platform.space_name, "organization_id": 1},
                {"id": 2, "guid": "space-b", "name": "dev", "organization_id": 1},
            ],
        )
        conn.execute(
            apps.insert(),
            [
                {"guid": "a1", "name": platform.app_name, "space_guid": "space-a"},
                {"guid": "a2", "name": "batch", "space_guid": "space-b"},
            ],
        )
        conn.execute(packages.insert().values(guid="pk-1", app_guid="a1", state="READY"))
        conn.execute(
            droplets.insert().values(
                guid="d-1",
                app_guid="a1",
                package_guid="pk-1",
                state="STAGED",
                buildpack_receipt_buildpack_guid="bp-1",
                buildpack_receipt_buildpack="ruby",
            )
        )
        conn.execute(apps.update().where(apps.c.guid == "a1").values(droplet_guid="d-1"))
        conn.execute(service_brokers.insert().values(id=1, guid="broker-1", name="broker"))
        conn.execute(services.insert().values(id=1, guid="svc-1", label="pg", service_broker_id=1))
        conn.execute(service_plans.insert().values(id=1, guid="plan-1", name="small", service_id=1))
        for p in platform.processes:
            conn.execute(
                processes.insert().values(
                    guid=p.guid,
                    app_guid=p.app,
                    type=p.type,
                    state=p.state or "STARTED",
                    instances=p.instances,
                    memory=p.memory,
                )
            )
        for t in platform.tasks:
            conn.execute(
                tasks.insert().values(
                    guid=t.guid,
                    app_guid=t.app,
                    name=t.name,
                    state=t.state or "RUNNING",
                    memory_in_mb=t.memory,
                )
            )
        for i in platform.instances:
            conn.execute(
                service_instances.insert().values(
                    guid=i.guid,
                    name=i.name,
                    space_id=1,
                    is_gateway_service=i.managed,
                    service_plan_id=1 if i.managed else None,
                )
            )
        # Gone resources leave holes in the id windows the seed walks.
        gone_processes = [p.guid for p in platform.processes if p.state is None]
        gone_tasks = [t.guid for t in platform.tasks if t.state is None]
        gone_instances = [i.guid for i in platform.instances if i.gone]
        conn.execute(processes.delete().where(processes.c.guid.in_(gone_processes)))
        conn.execute(tasks.delete().where(tasks.c.guid.in_(gone_tasks)))
        conn.execute(service_instances.delete().where(service_instances.c.guid.in_(gone_instances)))
        for event in platform.events:  # one statement each: ids follow list order
            table = service_usage_events if event.kind == "service" else app_usage_events
            conn.execute(table.insert().values(**_event_row(event)))


def read(engine: Engine) -> Tables:
    with engine.connect() as conn:
        return {
            table.name: [
                dict(r._mapping) for r in conn.execute(sa.select(table).order_by(table.c.id))
            ]
            for table in EVENT_TABLES
        }


def added_rows(before: Tables, after: Tables) -> Tables:
    return {
        name: [r for r in rows if r["id"] not in {b["id"] for b in before[name]}]
        for name, rows in after.items()
    }


def run_once(engine: Engine, platform: Platform, batch_size: int) -> tuple[Tables, Tables]:
    """Write the platform, run one backfill; the event rows before and after it."""
    build(engine, platform)
    before = read(engine)
    backfill(engine, batch_size=batch_size, clock=SimulatedClock(SEED_TIME))
    return before, read(engine)


def _id_order(rows: Tables) -> None:
    for table_rows in rows.values():
        ids = [r["id"] for r in table_rows]
        assert ids == sorted(ids)


PROPERTY = settings(
    max_examples=examples(15),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --- properties -------------------------------------------------------------------------------


@PROPERTY
@given(platform=platforms, batch_size=batch_sizes)
@example(platform=EVERY_CASE, batch_size=1)
@example(platform=NULL_KEY_BASELINE, batch_size=1)
@example(platform=KEY_VARIANTS, batch_size=1)
def test_b1_b2_b5_after_a_run_the_tables_say_what_runs(
    engine: Engine, platform: Platform, batch_size: int
) -> None:
    """B1, B2, B5: after one run every running resource has an opening of its current run with
    no later ending; no resource that is not running keeps a baseline without a later ending;
    a running resource whose run was on record gets no second opening, one whose run was not
    gets exactly one baseline, and a stale baseline gets exactly one ending."""
    before, after = run_once(engine, platform, batch_size)
    _id_order(after)
    added = added_rows(before, after)
    accounted = 0
    for kind in KINDS:
        running = platform.running(kind)
        for key in sorted(platform.keys(kind)):
            if key in running:
                expected = [] if run_on_record(before, kind, key) else [kind.baseline]
            else:
                expected = [kind.ending] if open_baseline(before, kind, key) else []
            if key in running and history(before, kind, key):
                event(f"{kind.name}: running, run on record: {not expected}")
            elif expected:
                event(f"{kind.name}: {'baseline seeded' if key in running else 'repaired'}")
            got = [r["state"] for r in history(added, kind, key)]
            where = f"{kind.name} {key!r} (running: {key in running})"
            assert got == expected, f"B1/B2/B5: {where} added {got}, expected {expected}"
            accounted += len(got)
            if key in running:
                assert run_on_record(after, kind, key), f"B1: {where} has no open run on record"
            else:
                stale = open_baseline(after, kind, key)
                assert stale is None, f"B5: {where} keeps an open baseline {stale}"
    every_added = [r for rows in added.values() for r in rows]
    assert len(every_added) == accounted, f"rows no rule asks for: {every_added}"


@PROPERTY
@given(platform=platforms, batch_size=batch_sizes, second_batch_size=batch_sizes)
@example(platform=EVERY_CASE, batch_size=2, second_batch_size=1)
@example(platform=NULL_KEY_BASELINE, batch_size=1, second_batch_size=1)
def test_b7_a_second_run_right_after_adds_no_rows(
    engine: Engine, platform: Platform, batch_size: int, second_batch_size: int
) -> None:
    """B7: a second run right after a first (with any batch size) adds no rows."""
    _, after_first = run_once(engine, platform, batch_size)

    again = backfill(engine, batch_size=second_batch_size, clock=SimulatedClock(SEED_TIME))

    assert read(engine) == after_first
    assert again.rows_added == 0


@PROPERTY
@given(platform=platforms, batch_size=batch_sizes)
@example(platform=EVERY_CASE, batch_size=3)
def test_b6_no_existing_row_is_deleted_or_changed(
    engine: Engine, platform: Platform, batch_size: int
) -> None:
    """B6: every row that existed before the run is still there, every column unchanged, and
    every row the run appended has a higher id than all of them."""
    before, after = run_once(engine, platform, batch_size)

    for name, rows in before.items():
        after_by_id = {r["id"]: r for r in after[name]}
        for row in rows:
            assert after_by_id.get(row["id"]) == row, f"B6: {name} row {row['id']} changed"
        new_ids = set(after_by_id) - {r["id"] for r in rows}
        if rows and new_ids:
            assert min(new_ids) > max(r["id"] for r in rows)


def _expected_baseline(platform: Platform, kind: Kind, key: str) -> Row:
    """B4: the columns a baseline for this running resource must carry."""
    if kind is SERVICE:
        instance = next(i for i in platform.instances if i.guid == key)
        managed = instance.managed
        return {
            "org_guid": ORG,
            "space_guid": "space-a",
            "space_name": platform.space_name or "",
            "service_instance_name": instance.name or "",
            "service_instance_type": (
                "managed_service_instance" if managed else "user_provided_service_instance"
            ),
            "service_plan_guid": "plan-1" if managed else None,
            "service_plan_name": "small" if managed else None,
            "service_guid": "svc-1" if managed else None,
            "service_label": "pg" if managed else None,
            "service_broker_name": "broker" if managed else None,
            "service_broker_guid": "broker-1" if managed else None,
        }
    app = (
        next(p.app for p in platform.processes if p.guid == key)
        if kind is APP
        else next(t.app for t in platform.tasks if t.guid == key)
    )
    app_name = (platform.app_name or "") if app == "a1" else "batch"
    space = SPACE_OF_APP[app]
    common: Row = {
        "space_guid": space,
        "space_name": (platform.space_name or "") if space == "space-a" else "dev",
        "org_guid": ORG,
        "parent_app_guid": app,
        "parent_app_name": app_name,
        "previous_state": None,
        "package_guid": None,
    }
    if kind is APP:
        process = next(p for p in platform.processes if p.guid == key)
        instances, memory = process.instances or 0, process.memory or 0
        buildpack_guid, buildpack_name = BUILDPACK_OF_APP[app]
        return {
            **common,
            "app_guid": key,
            "app_name": app_name,
            "instance_count": instances,
            "previous_instance_count": instances,
            "memory_in_mb_per_instance": memory,
            "previous_memory_in_mb_per_instance": memory,
            "process_type": process.type,
            "buildpack_guid": buildpack_guid,
            "buildpack_name": buildpack_name,
            "package_state": PACKAGE_STATE_OF_APP[app],
            "previous_package_state": "UNKNOWN",
            "task_guid": None,
            "task_name": None,
        }
    task = next(t for t in platform.tasks if t.guid == key)
    return {
        **common,
        "app_guid": "",
        "app_name": "",
        "instance_count": 1,
        "previous_instance_count": 1,
        "memory_in_mb_per_instance": task.memory or 0,
        "previous_memory_in_mb_per_instance": task.memory or 0,
        "process_type": None,
        "buildpack_guid": None,
        "buildpack_name": None,
        "package_state": "STAGED",
        "previous_package_state": "STAGED",
        "task_guid": key,
        "task_name": task.name or "",
    }


@PROPERTY
@given(platform=platforms, batch_size=batch_sizes)
@example(platform=EVERY_CASE, batch_size=4)
def test_b4_b5_appended_rows_have_the_baseline_and_ending_shape(
    engine: Engine, platform: Platform, batch_size: int
) -> None:
    """B4, B5: every appended row has a fresh guid, created_at = the run's time and every NOT
    NULL column filled. A baseline has previous_state NULL and the columns B4 derives from the
    resource tables (legacy NULL sizes and names as 0 and ''); a repaired ending has
    previous_state = the baseline's state and every other column copied from the latest
    baseline of its resource."""
    before, after = run_once(engine, platform, batch_size)
    added = added_rows(before, after)
    guids_before = {r["guid"] for rows in before.values() for r in rows}
    guids_added = [r["guid"] for rows in added.values() for r in rows]
    assert len(set(guids_added)) == len(guids_added), "B4: a guid appended twice"
    assert not guids_before & set(guids_added), "B4: an appended row reuses a guid"
    for table in EVENT_TABLES:
        required = [c.name for c in table.c if not c.nullable]
        for row in added[table.name]:
            assert all(row[c] is not None for c in required), f"B4: NULL in {row}"
            assert row["created_at"] == SEED_TIME
            kind = kind_of(table.name, row["state"])
            assert kind is not None, f"a state no lifecycle has: {row}"
            key = row[kind.key]
            if row["state"] == kind.baseline:
                expected = _expected_baseline(platform, kind, key)
                assert {c: row[c] for c in expected} == expected, f"B4: {kind.name} {key!r}"
                continue
            assert row["state"] == kind.ending, f"neither a baseline nor an ending: {row}"
            baseline = open_baseline(before, kind, key)
            assert baseline is not None, f"B5: an ending without a stale baseline: {row}"
            if "previous_state" in row:
                assert row["previous_state"] == baseline["state"]
            copied = set(row) - {"id", "guid", "created_at", "state", "previous_state"}
            assert {c: row[c] for c in copied} == {c: baseline[c] for c in copied}, (
                f"B5: {kind.name} {key!r} ending is not a copy of its latest baseline"
            )
