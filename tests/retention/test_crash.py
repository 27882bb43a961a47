"""Crash safety (SPEC R7, R8): an interrupted cleanup leaves a table that never shows a running
resource without the first and latest opening of its run, nor an opening whose ending is gone;
the next run finishes the job, ending where an uninterrupted run would."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from tests.retention.history import (
    CUTOFF,
    CUTOFF_DAYS,
    clock,
    load,
    realistic_history,
    remaining_ids,
)
from tests.retention.model import kept_after_cleanup, safety_violations, superseded_openings
from usageledger import db
from usageledger.lifecycles import APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS
from usageledger.retention import (
    NON_OPENINGS,
    SUPERSEDED_OPENINGS,
    BatchProgress,
    cleanup,
    plan_cleanup,
    prune_superseded_openings,
)
from usageledger.schema import EVENT_TABLES

TABLES = [APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS]


def _needs_server(backend: db.Backend) -> None:
    if backend is db.Backend.SQLITE:
        pytest.skip("SQLite has no server sessions to kill (Ctrl-C is covered everywhere)")


@pytest.mark.parametrize("table", TABLES)
def test_r7_crash_between_passes_is_safe_and_next_run_finishes(engine: Engine, table: str) -> None:
    """R7: after pass 1 alone the table is safe; the next full run ends as an uninterrupted one."""
    stored = load(engine, table, realistic_history(table, seed=7))
    plan = plan_cleanup(engine, table, cutoff=CUTOFF)
    pass_1 = prune_superseded_openings(engine, plan, batch_size=5)
    assert pass_1.total == len(superseded_openings(stored, table, CUTOFF)) > 0
    assert safety_violations(stored, table, remaining_ids(engine, table)) == []
    cleanup(engine, table, cutoff_age_in_days=CUTOFF_DAYS, clock=clock(), batch_size=5)
    remaining = remaining_ids(engine, table)
    assert remaining == kept_after_cleanup(stored, table, CUTOFF)
    assert safety_violations(stored, table, remaining) == []


@pytest.mark.parametrize("in_pass", [SUPERSEDED_OPENINGS, NON_OPENINGS])
def test_r8_killed_connection_between_batches_is_safe(
    engine: Engine, backend: db.Backend, in_pass: str
) -> None:
    """R8: the server kills the cleanup's session between two batches (inside pass 1 or pass 2);
    committed batches stay, the table is safe, and a rerun completes it."""
    _needs_server(backend)
    table = APP_USAGE_EVENTS
    stored = load(engine, table, realistic_history(table, seed=11))
    with engine.connect() as conn:
        session = db.connection_id(conn)
        conn.rollback()
        batches: list[BatchProgress] = []

        def kill_after(progress: BatchProgress) -> None:
            if progress.pass_name == in_pass:
                batches.append(progress)
                if len(batches) == 2:
                    db.kill_connection(engine, session)

        with pytest.raises(DBAPIError):
            cleanup(
                conn,
                table,
                cutoff_age_in_days=CUTOFF_DAYS,
                clock=clock(),
                batch_size=4,
                on_batch=kill_after,
            )
    assert len(batches) == 2
    after_kill = remaining_ids(engine, table)
    assert len(after_kill) < len(stored)
    assert safety_violations(stored, table, after_kill) == []
    cleanup(engine, table, cutoff_age_in_days=CUTOFF_DAYS, clock=clock(), batch_size=4)
    assert remaining_ids(engine, table) == kept_after_cleanup(stored, table, CUTOFF)


@pytest.mark.parametrize("in_pass", [1, 2])
def test_r8_killed_mid_statement_rolls_back_the_batch(
    engine: Engine, backend: db.Backend, in_pass: int
) -> None:
    """R8: a session killed while its DELETE runs (blocked on a row lock) loses only that batch;
    the table is safe and a rerun completes it."""
    _needs_server(backend)
    table = APP_USAGE_EVENTS
    t = EVENT_TABLES[table]
    stored = load(engine, table, realistic_history(table, seed=23))
    expected = kept_after_cleanup(stored, table, CUTOFF)
    pass_1_ids = sorted(superseded_openings(stored, table, CUTOFF))
    old_ids = {s.id for s in stored if s.created_at < CUTOFF}
    pass_2_ids = sorted((old_ids - set(pass_1_ids)) - expected)
    victim = pass_1_ids[len(pass_1_ids) // 2] if in_pass == 1 else pass_2_ids[len(pass_2_ids) // 2]

    errors: list[BaseException] = []
    session: list[int] = []
    before_kill: set[int] = set()

    def run_cleanup() -> None:
        try:
            with engine.connect() as conn:
                session.append(db.connection_id(conn))
                conn.rollback()
                cleanup(conn, table, cutoff_age_in_days=CUTOFF_DAYS, clock=clock(), batch_size=4)
        except BaseException as exc:
            errors.append(exc)

    with engine.connect() as blocker, blocker.begin():
        blocker.execute(sa.select(t.c.id).where(t.c.id == victim).with_for_update()).all()
        worker = threading.Thread(target=run_cleanup)
        worker.start()
        deadline = time.monotonic() + 60  # generous: the CI box is shared
        while not (session and db.is_waiting_for_lock(engine, session[0])):
            assert worker.is_alive() and time.monotonic() < deadline, errors
            time.sleep(0.05)
        before_kill = remaining_ids(engine, table)
        db.kill_connection(engine, session[0])
        worker.join(20)
        assert not worker.is_alive()
    assert errors and isinstance(errors[0], DBAPIError), errors
    after_kill = remaining_ids(engine, table)
    assert victim in after_kill
    assert after_kill == before_kill  # the blocked batch rolled back whole
    assert safety_violations(stored, table, after_kill) == []
    cleanup(engine, table, cutoff_age_in_days=CUTOFF_DAYS, clock=clock(), batch_size=4)
    assert remaining_ids(engine, table) == expected


def test_r7_ctrl_c_inside_a_pass_is_safe(engine: Engine) -> None:
    """R7, R8: Ctrl-C between batches keeps the committed work (each batch is its own
    transaction, so every batch reported before the interrupt stays deleted) and leaves a safe
    table; a rerun finishes it (every backend)."""
    table = SERVICE_USAGE_EVENTS
    stored = load(engine, table, realistic_history(table, seed=5))
    seen: list[BatchProgress] = []

    def interrupt(progress: BatchProgress) -> None:
        seen.append(progress)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cleanup(
            engine,
            table,
            cutoff_age_in_days=CUTOFF_DAYS,
            clock=clock(),
            batch_size=2,
            on_batch=interrupt,
        )
    # Inside a pass: the interrupted batch is not the pass's first.
    assert seen[-1].deleted_so_far > seen[-1].deleted_in_batch
    after_interrupt = remaining_ids(engine, table)
    assert len(stored) - len(after_interrupt) == sum(p.deleted_in_batch for p in seen) > 0
    assert safety_violations(stored, table, after_interrupt) == []
    cleanup(engine, table, cutoff_age_in_days=CUTOFF_DAYS, clock=clock(), batch_size=2)
    assert remaining_ids(engine, table) == kept_after_cleanup(stored, table, CUTOFF)
