"""Real races (SPEC B5, B8): a live platform and a backfill on separate connections, in a fixed
order. PostgreSQL and MariaDB interleave the transactions for real; SQLite serializes writers,
so where a race cannot happen there the test says why and another test shows its outcome."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from tests.backfill.platform import (
    app_rows,
    forget_history,
    make_app,
    managed_instance,
    running_task,
    service_rows,
    started_process,
    stop_below_baseline,
)
from usageledger import db, producer
from usageledger.backfill import BACKFILL_LOCK, Phase, backfill, backfill_batches
from usageledger.reconstruct import current_state
from usageledger.schema import app_usage_events, service_usage_events

SERIALIZED_WRITERS = (
    "SQLite lets one writer at a time: the seed batch waits for the producer's open "
    "transaction at BEGIN IMMEDIATE and then reads it committed"
)


def _need_server(backend: db.Backend) -> None:
    if backend is db.Backend.SQLITE:
        pytest.skip(SERIALIZED_WRITERS)


def _wait_until_blocked(engine: Engine, session: int, what: str) -> None:
    for _ in range(100):
        if db.is_waiting_for_lock(engine, session):
            return
        time.sleep(0.05)
    raise AssertionError(f"the {what} never waited for the producer's row lock")


def _seed_while_in_flight(
    engine: Engine, kind: str, change: Callable[[sa.Connection], object]
) -> list[tuple[Phase, int]]:
    """Run `change` on a platform transaction, start the backfill's seed batch, check that it
    waits for the producer's row lock, commit the change, and let the run finish."""
    with db.run_lock(engine, BACKFILL_LOCK, wait=False) as lock:
        assert lock.connection is not None
        session = db.connection_id(lock.connection)
        steps = backfill_batches(engine, lock, kinds=(kind,))
        done: list[tuple[Phase, int]] = []
        with engine.connect() as platform:
            platform.begin()
            change(platform)  # its event has an id, not committed
            run = threading.Thread(target=lambda: done.extend((r.phase, r.inserted) for r in steps))
            run.start()
            _wait_until_blocked(engine, session, "seed")
            platform.commit()
            run.join(30)
    assert not run.is_alive()
    return done


def test_b4_b5_race_seed_waits_for_a_stop_in_flight_and_seeds_nothing(
    engine: Engine, backend: db.Backend
) -> None:
    """B4, B5: the stop's STOPPED already has an id when the seed batch reads the process. The
    batch waits for the producer's row lock, reads the process stopped, and seeds no baseline
    (before, it read its snapshot's STARTED and committed a baseline after the STOPPED, which
    stayed open until a repair ran after the stop had committed)."""
    _need_server(backend)
    app = make_app(engine)
    process = started_process(engine, app)
    forget_history(engine)
    batches = _seed_while_in_flight(engine, "app", lambda c: producer.stop_process(c, process))
    assert batches == [(Phase.SEED, 0)]
    assert [r["state"] for r in app_rows(engine)] == ["STOPPED"]
    assert backfill(engine).rows_added == 0


def test_b4_race_seed_waits_for_a_scale_in_flight_and_restates_no_old_size(
    engine: Engine, backend: db.Backend
) -> None:
    """B4, B2: a scale of a process whose start was pruned is being committed while the seed
    batch reads it. The batch waits, then finds the scale's STARTED on record (an opening of
    the current run) and seeds nothing; before, it seeded a WAS_RUNNING with the old size after
    the scale, and consumers billed 2 instances while 5 ran, with no repair ever due."""
    _need_server(backend)
    app = make_app(engine)
    process = started_process(engine, app, instances=2)
    forget_history(engine)
    batches = _seed_while_in_flight(
        engine, "app", lambda c: producer.scale_process(c, process, instances=5)
    )
    assert batches == [(Phase.SEED, 0)]
    assert [(r["state"], r["instance_count"]) for r in app_rows(engine)] == [("STARTED", 5)]
    with db.transaction(engine, read_only=True) as conn:
        [running] = current_state.running_by_sql(conn, "app")
    assert running.instance_count == 5 and running.start_is_lower_bound


def test_b4_race_seed_waits_for_a_plan_change_in_flight(
    engine: Engine, backend: db.Backend
) -> None:
    """B4, B2: the same for a service instance whose plan is changing: the UPDATED with the new
    plan is on record when the batch reads, and no baseline restates the old plan after it."""
    _need_server(backend)
    app = make_app(engine)
    instance = managed_instance(engine, app)
    broker = producer.create_service_broker(engine, "broker-2")
    offering = producer.create_service(engine, broker, "mysql")
    big = producer.create_service_plan(engine, offering, "big")
    forget_history(engine)
    batches = _seed_while_in_flight(
        engine, "service", lambda c: producer.update_service_instance(c, instance, plan_guid=big)
    )
    assert batches == [(Phase.SEED, 0)]
    assert [(r["state"], r["service_plan_name"]) for r in service_rows(engine)] == [
        ("UPDATED", "big")
    ]


def test_b4_b5_race_seed_waits_for_a_task_end_and_a_delete_in_flight(
    engine: Engine, backend: db.Backend
) -> None:
    """B4, B5, P2: a task succeeding (no evidence, so no TASK_STOPPED) and a service instance
    being deleted while the seed batch reads them: it waits for both and seeds no baseline that
    would bill the task or the instance until a later repair."""
    _need_server(backend)
    app = make_app(engine)
    task = running_task(engine, app)
    instance = managed_instance(engine, app)
    forget_history(engine)
    assert _seed_while_in_flight(engine, "task", lambda c: producer.succeed_task(c, task)) == [
        (Phase.SEED, 0)
    ]
    assert _seed_while_in_flight(
        engine, "service", lambda c: producer.delete_service_instance(c, instance)
    ) == [(Phase.SEED, 0)]
    assert app_rows(engine) == []
    assert [r["state"] for r in service_rows(engine)] == ["DELETED"]


def test_b5_race_repair_waits_for_a_restart_in_flight_and_appends_nothing(
    engine: Engine, backend: db.Backend
) -> None:
    """B5: a stale baseline's process (stopped below it: the outcome of a seed that raced a stop)
    is being restarted (its STARTED already has an id) while the repair runs; the repair waits
    for the producer's row lock, reads STARTED, and appends no STOPPED that would close the new
    run."""
    _need_server(backend)
    app = make_app(engine)
    process = started_process(engine, app)
    forget_history(engine)
    backfill(engine)
    stop_below_baseline(engine, process)

    with db.run_lock(engine, BACKFILL_LOCK, wait=False) as lock:
        assert lock.connection is not None
        session = db.connection_id(lock.connection)
        steps = backfill_batches(engine, lock, kinds=("app",))
        assert next(steps).inserted == 0  # the seed: the process is stopped
        with engine.connect() as platform:
            platform.begin()
            producer.start_process(platform, process)  # STARTED has its id, not committed
            repairs: list[int] = []
            repair = threading.Thread(target=lambda: repairs.append(next(steps).inserted))
            repair.start()
            _wait_until_blocked(engine, session, "repair")
            platform.commit()
            repair.join(30)
        assert repairs == [0]
        assert list(steps) == []

    assert [r["state"] for r in app_rows(engine)] == ["STOPPED", "WAS_RUNNING", "STARTED"]


def test_b5_repair_takes_no_lock_on_a_running_resource(engine: Engine, backend: db.Backend) -> None:
    """B5: the repair's locking read is only for baselines it is about to repair. A running
    process with an open baseline, whose row a producer holds (a scale in flight), does not
    make the repair batch wait (PostgreSQL ran the locking read before the snapshot's "it
    runs" and so locked every running resource in the window)."""
    _need_server(backend)
    app = make_app(engine)
    process = started_process(engine, app)
    forget_history(engine)
    backfill(engine)

    with db.run_lock(engine, BACKFILL_LOCK, wait=False) as lock:
        assert lock.connection is not None
        session = db.connection_id(lock.connection)
        steps = backfill_batches(engine, lock, kinds=("app",))
        assert next(steps).inserted == 0  # the seed: the baseline is open
        with engine.connect() as platform:
            platform.begin()
            producer.scale_process(platform, process, instances=3)  # holds the process row
            repairs: list[int] = []
            repair = threading.Thread(target=lambda: repairs.append(next(steps).inserted))
            repair.start()
            repair.join(10)
            blocked = repair.is_alive() and db.is_waiting_for_lock(engine, session)
            platform.commit()
            repair.join(30)
        assert not blocked
        assert repairs == [0]
        assert list(steps) == []


def test_b5_repair_respects_an_ending_committed_between_batches(engine: Engine) -> None:
    """B5: the condition is evaluated by the repair's own INSERT, so a DELETED committed after
    the run started (between its batches) is respected and nothing is appended."""
    app = make_app(engine)
    instance = managed_instance(engine, app)
    forget_history(engine)
    backfill(engine)

    with db.run_lock(engine, BACKFILL_LOCK, wait=False) as lock:
        steps = backfill_batches(engine, lock, kinds=("service",))
        assert next(steps).phase is Phase.SEED  # nothing to seed: the baseline is open
        producer.delete_service_instance(engine, instance)
        repair = next(steps)
        assert (repair.phase, repair.inserted) == (Phase.REPAIR, 0)

    assert [r["state"] for r in service_rows(engine)] == ["WAS_RUNNING", "DELETED"]


def _platform_to_seed(engine: Engine) -> set[str]:
    app = make_app(engine)
    guids = {started_process(engine, app) for _ in range(5)}
    guids |= {running_task(engine, app, name) for name in "abc"}
    guids |= {managed_instance(engine, app, name) for name in "xy"}
    forget_history(engine)
    return guids


def _assert_one_baseline_each(engine: Engine, guids: set[str]) -> None:
    keys = [r["app_guid"] for r in app_rows(engine, "WAS_RUNNING")]
    keys += [r["task_guid"] for r in app_rows(engine, "TASK_WAS_RUNNING")]
    keys += [r["service_instance_guid"] for r in service_rows(engine, "WAS_RUNNING")]
    assert sorted(keys) == sorted(guids)
    with engine.connect() as conn:
        for table in (app_usage_events, service_usage_events):
            states = conn.execute(sa.select(table.c.state).distinct()).scalars().all()
            assert set(states) <= {"WAS_RUNNING", "TASK_WAS_RUNNING"}


def test_b8_killed_lock_holder_stops_its_work_and_a_rerun_finishes_without_duplicates(
    engine: Engine, db_url: URL, backend: db.Backend
) -> None:
    """B8: the lock and the batches share one connection; killing it mid-run (an operator's
    pg_terminate_backend / KILL) ends the run and frees the lock, and a rerun completes."""
    if backend is db.Backend.SQLITE:
        pytest.skip("SQLite has no server session to kill; see the killed-process test")
    guids = _platform_to_seed(engine)
    lock = db.run_lock(engine, BACKFILL_LOCK, wait=False)
    assert lock.connection is not None
    holder = db.connection_id(lock.connection)
    steps = backfill_batches(engine, lock, batch_size=2)
    assert next(steps).inserted == 2

    db.kill_connection(engine, holder)
    with pytest.raises(sa.exc.DBAPIError):
        next(steps)
    lock.release()

    rerun_engine = db.make_engine(db_url)
    try:
        result = backfill(rerun_engine)
    finally:
        rerun_engine.dispose()
    assert result.app.seeded == 3
    _assert_one_baseline_each(engine, guids)


HOLDER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from usageledger import db
    from usageledger.backfill import BACKFILL_LOCK, backfill_batches
    engine = db.make_engine(sys.argv[1])
    lock = db.run_lock(engine, BACKFILL_LOCK, wait=False)
    steps = backfill_batches(engine, lock, batch_size=2)
    next(steps)
    print("holding", flush=True)
    time.sleep(120)
    """
)


def test_b8_killed_holder_process_frees_the_lock_and_a_rerun_finishes_without_duplicates(
    engine: Engine, db_url: URL
) -> None:
    """B8: a backfill process killed mid-run (SIGKILL) leaves no lock behind on any backend
    (SQLite: the kernel drops its flock) and a rerun adds exactly the missing baselines."""
    guids = _platform_to_seed(engine)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER_SCRIPT, db_url.render_as_string(hide_password=False)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "holding"
        assert db.try_run_lock(engine, BACKFILL_LOCK) is None  # the child holds it
        holder.kill()
        holder.wait(10)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert len(app_rows(engine, "WAS_RUNNING")) == 2

    result = backfill(engine, wait_for_lock=True)

    assert result.app.seeded == 3
    _assert_one_baseline_each(engine, guids)
