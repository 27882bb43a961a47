"""Real races (SPEC B5, B8): a live platform and a backfill on separate connections, in a fixed
order. PostgreSQL and MariaDB interleave the transactions for real; SQLite serializes writers,
so where a race cannot happen there the test says why and another test shows its outcome."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

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
)
from usageledger import db, producer
from usageledger.backfill import BACKFILL_LOCK, Phase, backfill, backfill_batches
from usageledger.schema import app_usage_events, service_usage_events

SERIALIZED_WRITERS = (
    "SQLite lets one writer at a time: the seed batch would wait for the producer's open stop "
    "transaction and then see it committed, so a baseline can never land after a stop; "
    "test_repair.py builds that outcome directly"
)


def _need_server(backend: db.Backend) -> None:
    if backend is db.Backend.SQLITE:
        pytest.skip(SERIALIZED_WRITERS)


def test_b5_race_seed_snapshot_before_concurrent_stop_then_repair_appends_stopped(
    engine: Engine, backend: db.Backend
) -> None:
    """B5: the stop's row gets its id first, the seed batch reads a snapshot without it and
    commits a baseline after it; the repair then appends the missing STOPPED."""
    _need_server(backend)
    app = make_app(engine)
    process = started_process(engine, app)
    forget_history(engine)

    with db.run_lock(engine, BACKFILL_LOCK, wait=False) as lock:
        steps = backfill_batches(engine, lock, kinds=("app",))
        with engine.connect() as platform:
            platform.begin()
            producer.stop_process(platform, process)  # STOPPED written, not yet committed
            seed = next(steps)
            assert (seed.phase, seed.inserted) == (Phase.SEED, 1)
            platform.commit()
        assert [r["state"] for r in app_rows(engine)] == ["STOPPED", "WAS_RUNNING"]
        repair = next(steps)
        assert (repair.phase, repair.inserted) == (Phase.REPAIR, 1)
        assert list(steps) == []

    rows = app_rows(engine)
    assert [r["state"] for r in rows] == ["STOPPED", "WAS_RUNNING", "STOPPED"]
    assert rows[2]["previous_state"] == "WAS_RUNNING"
    assert backfill(engine).rows_added == 0


def _wait_until_blocked(engine: Engine, session: int) -> None:
    for _ in range(100):
        if db.is_waiting_for_lock(engine, session):
            return
        time.sleep(0.05)
    raise AssertionError("the repair never waited for the producer's row lock")


def test_b5_race_repair_waits_for_a_restart_in_flight_and_appends_nothing(
    engine: Engine, backend: db.Backend
) -> None:
    """B5: a stale baseline's process is being restarted (its STARTED already has an id) while
    the repair runs; the repair waits for the producer's row lock, reads STARTED, and appends no
    STOPPED that would close the new run."""
    _need_server(backend)
    app = make_app(engine)
    process = started_process(engine, app)
    forget_history(engine)

    with db.run_lock(engine, BACKFILL_LOCK, wait=False) as lock:
        assert lock.connection is not None
        session = db.connection_id(lock.connection)
        steps = backfill_batches(engine, lock, kinds=("app",))
        with engine.connect() as platform:
            platform.begin()
            producer.stop_process(platform, process)
            assert next(steps).inserted == 1  # the stale baseline, after the stop
            platform.commit()
            platform.begin()
            producer.start_process(platform, process)  # STARTED has its id, not committed
            repairs: list[int] = []
            repair = threading.Thread(target=lambda: repairs.append(next(steps).inserted))
            repair.start()
            _wait_until_blocked(engine, session)
            platform.commit()
            repair.join(30)
        assert repairs == [0]
        assert list(steps) == []

    assert [r["state"] for r in app_rows(engine)] == ["STOPPED", "WAS_RUNNING", "STARTED"]


def test_b5_race_task_ends_without_evidence_while_seeded_then_repaired(
    engine: Engine, backend: db.Backend
) -> None:
    """P2, B5: the task succeeds while its baseline is being seeded; the gate saw no evidence and
    wrote no stop, the baseline commits after; the repair appends the TASK_STOPPED."""
    _need_server(backend)
    app = make_app(engine)
    task = running_task(engine, app)
    forget_history(engine)

    with db.run_lock(engine, BACKFILL_LOCK, wait=False) as lock:
        steps = backfill_batches(engine, lock, kinds=("task",))
        with engine.connect() as platform:
            platform.begin()
            assert producer.succeed_task(platform, task) is False
            assert next(steps).inserted == 1
            platform.commit()
        repair = next(steps)
        assert (repair.phase, repair.inserted) == (Phase.REPAIR, 1)

    assert [r["state"] for r in app_rows(engine)] == ["TASK_WAS_RUNNING", "TASK_STOPPED"]


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
