"""`reconstruct current-state` (CS1–CS4), and the consumer after a real cleanup (CS3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from sqlalchemy.engine import Engine

from tests.conftest import examples
from tests.reconstruct.histories import (
    app_row,
    app_table_rows,
    at,
    fresh_label,
    insert_app,
    insert_service,
    service_row,
    service_table_rows,
)
from usageledger import db, producer, retention
from usageledger.clock import SimulatedClock
from usageledger.lifecycles import (
    APP_PROCESS,
    APP_USAGE_EVENTS,
    SERVICE_INSTANCE,
    SERVICE_USAGE_EVENTS,
)
from usageledger.reconstruct import consumer, current_state, ledger_store
from usageledger.reconstruct.current_state import (
    OPEN_RUN_NOT_RUNNING,
    RUNNING_WITHOUT_OPEN_RUN,
    RunningResource,
)
from usageledger.schema import app_usage_events


def sql_and_fold(engine: Engine, kind: str | None = None) -> list[RunningResource]:
    with db.transaction(engine, read_only=True) as conn:
        by_sql = current_state.running_by_sql(conn, kind)
        by_fold = current_state.running_by_fold(conn, kind)
    assert by_sql == by_fold  # CS2
    return by_sql


def test_cs1_lists_running_resources_with_run_start_size_and_last_event(engine: Engine) -> None:
    """CS1: start = first opening of the current run (exact or lower bound), size = latest."""
    ids = insert_app(
        engine,
        app_row("STARTED", app_guid="p1", minute=0, previous_state="STOPPED", name="web"),
        app_row("STOPPED", app_guid="p1", minute=5),
        app_row("STARTED", app_guid="p1", minute=10, previous_state="STOPPED", name="web"),
        app_row(
            "STARTED", app_guid="p1", minute=20, instances=4, previous_state="STARTED", name="web"
        ),
        app_row("WAS_RUNNING", app_guid="p2", minute=30, memory=1024, name="worker"),
        app_row("TASK_STARTED", task_guid="t1", minute=31, memory=64, name="migrate"),
        app_row("TASK_STARTED", task_guid="t2", minute=32),
        app_row("TASK_STOPPED", task_guid="t2", minute=33),
        app_row("STAGING_STARTED", parent_app_guid="a", package_guid="k", minute=34),
    )
    insert_service(
        engine,
        service_row("WAS_RUNNING", instance="s1", minute=1, plan="small", name="db"),
        service_row("UPDATED", instance="s1", minute=2, plan="large", name="db"),
    )
    running = sql_and_fold(engine)
    by_guid = {r.guid: r for r in running}
    assert [r.kind for r in running] == ["app", "app", "task", "service"]
    p1 = by_guid["p1"]
    assert (p1.started_at, p1.start_is_lower_bound) == (at(10), False)
    assert (p1.instance_count, p1.memory_in_mb_per_instance, p1.last_event_id) == (4, 256, ids[3])
    assert (p1.name, p1.space_guid, p1.org_guid) == ("web", "space-1", "org-1")
    assert by_guid["p2"].start_is_lower_bound and by_guid["p2"].memory_in_mb_per_instance == 1024
    assert (by_guid["t1"].name, by_guid["t1"].memory_in_mb_per_instance) == ("migrate", 64)
    s1 = by_guid["s1"]
    assert (s1.started_at, s1.start_is_lower_bound, s1.service_plan_guid) == (at(1), True, "large")
    assert s1.instance_count is None
    assert [r.guid for r in sql_and_fold(engine, "task")] == ["t1"]


@settings(
    max_examples=examples(25),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(apps=app_table_rows(), services=service_table_rows())
def test_cs2_sql_and_fold_agree_on_random_histories(
    engine: Engine, apps: list[dict[str, Any]], services: list[dict[str, Any]]
) -> None:
    """CS2: the set-based query and the consumer fold agree on any history, on every backend.

    Each example uses its own key prefix, so the tables grow across examples without
    examples influencing each other's resources."""
    label = fresh_label()
    for row in apps:
        for key in ("app_guid", "task_guid", "parent_app_guid"):
            if row[key]:
                row[key] = f"{label}-{row[key]}"
    for row in services:
        row["service_instance_guid"] = f"{label}-{row['service_instance_guid']}"
    insert_app(engine, *apps)
    insert_service(engine, *services)
    sql_and_fold(engine)


def _platform(engine: Engine, clock: SimulatedClock) -> dict[str, str]:
    org = producer.create_organization(engine, "org")
    space = producer.create_space(engine, org, "space")
    app = producer.create_app(engine, space, "shop")
    broker = producer.create_service_broker(engine, "broker")
    service = producer.create_service(engine, broker, "postgres")
    return {
        "space": space,
        "app": app,
        "small": producer.create_service_plan(engine, service, "small"),
        "large": producer.create_service_plan(engine, service, "large"),
    }


def test_cs3_verify_reports_drift_both_ways(engine: Engine) -> None:
    """CS3: running per the resource tables without an open run (run backfill), and open on
    record but no longer running (awaiting repair)."""
    clock = SimulatedClock(datetime(2026, 1, 1, tzinfo=UTC))
    p = _platform(engine, clock)
    web = producer.create_process(engine, p["app"], type="web")
    producer.start_process(engine, web, clock=clock)
    worker = producer.create_process(engine, p["app"], type="worker")
    producer.start_process(engine, worker, clock=clock)
    with engine.begin() as conn:  # the worker's start was pruned by an old cleanup
        conn.execute(app_usage_events.delete().where(app_usage_events.c.app_guid == worker))
    insert_app(engine, app_row("WAS_RUNNING", app_guid="gone-process", minute=1))
    with db.transaction(engine, read_only=True) as conn:
        running = current_state.running_by_sql(conn)
        drift = current_state.drift(running, current_state.running_per_resource_tables(conn))
    assert [(d.kind, d.guid, d.problem) for d in drift] == [
        ("app", worker, RUNNING_WITHOUT_OPEN_RUN),
        ("app", "gone-process", OPEN_RUN_NOT_RUNNING),
    ]


def test_cs_consumer_after_keep_running_cleanup_matches_resource_tables(
    engine: Engine, ledger: Engine
) -> None:
    """R5 + C5/C12 + CS3: after a keep-running cleanup deleted 40 days of history, a new
    consumer and current-state both reach what the resource tables say is running."""
    clock = SimulatedClock(datetime(2026, 1, 1, tzinfo=UTC))
    p = _platform(engine, clock)
    procs = [producer.create_process(engine, p["app"], type=f"t{i}") for i in range(4)]
    for guid in procs:
        producer.start_process(engine, guid, clock=clock)
        clock.advance(timedelta(hours=1))
    producer.scale_process(engine, procs[0], instances=3, clock=clock)
    producer.scale_process(engine, procs[0], instances=5, clock=clock)
    producer.stop_process(engine, procs[1], clock=clock)
    task = producer.create_task(engine, p["app"], "migrate", memory_in_mb=128)
    producer.run_task(engine, task, clock=clock)
    done = producer.create_task(engine, p["app"], "once")
    producer.run_task(engine, done, clock=clock)
    producer.succeed_task(engine, done, clock=clock)
    kept = producer.create_service_instance(
        engine, p["space"], "db", plan_guid=p["small"], clock=clock
    )
    producer.update_service_instance(engine, kept, plan_guid=p["large"], clock=clock)
    dropped = producer.create_service_instance(
        engine, p["space"], "tmp", plan_guid=p["small"], clock=clock
    )
    producer.delete_service_instance(engine, dropped, clock=clock)
    clock.advance(timedelta(days=40))
    producer.scale_process(engine, procs[2], memory=512, clock=clock)
    producer.stop_process(engine, procs[3], clock=clock)

    deleted = {
        table: retention.cleanup(engine, table, cutoff_age_in_days=31, clock=clock).deleted
        for table in (APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS)
    }
    # R2 keeps the newest service row (the DELETED), so only its CREATED goes.
    assert deleted[APP_USAGE_EVENTS] >= 4 and deleted[SERVICE_USAGE_EVENTS] >= 1

    consumer.consume(engine, ledger, clock=clock, grace=timedelta(0))
    with db.transaction(ledger, read_only=True) as conn:
        ledger_now = ledger_store.read_ledger(conn, consumer.DEFAULT_CONSUMER)
    with db.transaction(engine, read_only=True) as conn:
        tables_say = current_state.running_per_resource_tables(conn)
    running = sql_and_fold(engine)
    on_record = {kind: {r.guid for r in running if r.kind == kind} for kind in tables_say}
    assert (
        on_record
        == tables_say
        == {
            "app": {procs[0], procs[2]},
            "task": {task},
            "service": {kept},
        }
    )
    in_ledger = {k: {r.guid for r in ledger_now.open_resources(k)} for k in tables_say}
    assert in_ledger == tables_say
    sizes = {r.guid: (r.instance_count, r.memory_in_mb_per_instance) for r in running}
    assert sizes[procs[0]] == (5, 256) and sizes[procs[2]] == (1, 512)
    assert {r.guid: r.service_plan_guid for r in running}[kept] == p["large"]


@pytest.mark.parametrize("kind", [None, "app", "task", "service"])
def test_cs4_kind_filter_keeps_only_that_kind(engine: Engine, kind: str | None) -> None:
    """CS4: --kind app means app processes only (not tasks)."""
    insert_app(
        engine,
        app_row("STARTED", app_guid="p", previous_state="STOPPED"),
        app_row("TASK_STARTED", task_guid="t"),
    )
    insert_service(engine, service_row("CREATED", instance="s"))
    running = sql_and_fold(engine, kind)
    expected = {"app": ["p"], "task": ["t"], "service": ["s"]}
    assert [r.guid for r in running] == (expected[kind] if kind else ["p", "t", "s"])


def test_cs1_sql_planner_settings_hold_for_the_read_only_transaction_only(
    engine: Engine,
) -> None:
    """CS1/CS2: the set-based query runs in a read-only transaction with its own planner
    settings (PostgreSQL: one process, no hash or merge joins, see
    `db.prepare_for_current_state`), and they end with that transaction."""
    if db.backend_of(engine) is not db.Backend.POSTGRESQL:
        pytest.skip("planner settings are PostgreSQL's; elsewhere prepare is a no-op")
    names = ("max_parallel_workers_per_gather", "enable_hashjoin", "enable_mergejoin", "jit")

    def settings_now(conn: Any) -> dict[str, str]:
        return {n: str(conn.exec_driver_sql(f"SHOW {n}").scalar_one()) for n in names}

    insert_app(engine, app_row("STARTED", app_guid="p", previous_state="STOPPED"))
    with db.transaction(engine, read_only=True) as conn:
        before = settings_now(conn)
        assert [r.guid for r in current_state.running_by_sql(conn)] == ["p"]
        during = settings_now(conn)
    with db.transaction(engine, read_only=True) as conn:
        after = settings_now(conn)
    assert during == {
        "max_parallel_workers_per_gather": "0",
        "enable_hashjoin": "off",
        "enable_mergejoin": "off",
        "jit": "off",
    }
    assert after == before != during


def test_cs2_sql_and_fold_agree_on_case_variants_and_rows_without_a_key(engine: Engine) -> None:
    """CS2 on inputs the random histories never make: keys that differ only in case are two
    resources, a lowercase `stopped` is an unknown state (not an ending), and a TASK_STARTED
    without task_guid is no resource (the fold reports it, C11). MariaDB's default collation
    would match all three case-insensitively; the query compares bytes everywhere."""
    insert_app(
        engine,
        app_row("STARTED", app_guid="P2", minute=0, previous_state="STOPPED"),
        app_row("STARTED", app_guid="p2", minute=1, previous_state="STOPPED"),
        app_row("stopped", app_guid="P2", minute=2),
        app_row("TASK_STARTED", task_guid=None, minute=3),
        app_row("TASK_STARTED", task_guid="t1", minute=4),
    )
    running = sql_and_fold(engine)
    assert [(r.kind, r.guid, r.started_at) for r in running] == [
        ("app", "P2", at(0)),
        ("app", "p2", at(1)),
        ("task", "t1", at(4)),
    ]


def test_cs1_a_run_start_is_found_by_index_seeks_per_state(engine: Engine) -> None:
    """CS1 cost: for a key that ended before, the start of its current run is looked up by
    seeks on the lifecycle index (state, key, id), one per opening state. MariaDB seeks an IN
    list of states on the state column only: it scanned every opening for each such key
    (minutes at 230,000 events with frequent restarts)."""
    if db.backend_of(engine) is not db.Backend.MARIADB:
        pytest.skip("the plan checked is MariaDB's (PostgreSQL seeks an IN list per value)")
    with engine.connect() as conn:
        for lc in (APP_PROCESS, SERVICE_INSTANCE):
            plan = db.explain(conn, current_state._running_query(lc, conn))
            probes = [line for line in plan if "DEPENDENT SUBQUERY" in line]
            assert len(probes) == len(lc.openings), plan
            assert all("type=ref" in line for line in probes), plan
