"""The forward reader and its ledger on real databases (C1, C2, C10, C12, C14)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.reconstruct.histories import app_row, at, insert_app, insert_service, service_row
from usageledger import db, retention
from usageledger.clock import SimulatedClock
from usageledger.errors import FellBehindRetentionError, SourceResetError
from usageledger.lifecycles import APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS
from usageledger.migrations import ledger as ledger_migrations
from usageledger.reconstruct import consumer, ledger_store
from usageledger.reconstruct.billing import Ledger, fold
from usageledger.reconstruct.gaps import IdRange
from usageledger.reconstruct.source import read_all_events
from usageledger.schema import (
    app_usage_events,
    ledger_cursors,
    ledger_metadata,
    ledger_segments,
    service_usage_events,
)

NO_GRACE = timedelta(0)
GRACE = timedelta(seconds=60)


def stored(ledger: Engine, name: str = consumer.DEFAULT_CONSUMER) -> Ledger:
    with db.transaction(ledger, read_only=True) as conn:
        return ledger_store.read_ledger(conn, name).canonical()


def folded(engine: Engine) -> Ledger:
    with db.transaction(engine, read_only=True) as conn:
        return fold(list(read_all_events(conn))).canonical()


def cursor_of(ledger: Engine, table: str, name: str = consumer.DEFAULT_CONSUMER) -> int | None:
    with ledger.connect() as conn:
        return conn.execute(
            sa.select(ledger_cursors.c.position).where(
                ledger_cursors.c.consumer == name, ledger_cursors.c.source_table == table
            )
        ).scalar()


def _history(engine: Engine) -> None:
    insert_app(
        engine,
        app_row("STARTED", app_guid="p1", minute=0, previous_state="STOPPED"),
        app_row("TASK_STARTED", task_guid="t1", minute=1),
        app_row(
            "STARTED",
            app_guid="p1",
            minute=2,
            instances=3,
            previous_state="STARTED",
            previous_instances=1,
            previous_memory=256,
        ),
        app_row("TASK_STOPPED", task_guid="t1", minute=3),
        app_row("STOPPED", app_guid="p1", minute=4, previous_instances=3, previous_memory=256),
        app_row("WAS_RUNNING", app_guid="p2", minute=5),
    )
    insert_service(
        engine,
        service_row("CREATED", instance="s1", minute=0, plan="small"),
        service_row("UPDATED", instance="s1", minute=6, plan="large"),
    )


def test_c1_small_batches_build_the_same_ledger_as_the_fold(
    engine: Engine, ledger: Engine, clock: SimulatedClock
) -> None:
    """C1: reading forward in bounded batches, the stored ledger equals the pure fold."""
    _history(engine)
    result = consumer.consume(engine, ledger, clock=clock, grace=NO_GRACE, batch_size=2)
    assert result.events_applied == 8
    assert result.batches >= 5
    assert result.positions == {APP_USAGE_EVENTS: 6, SERVICE_USAGE_EVENTS: 2}
    assert stored(ledger) == folded(engine)
    assert len(stored(ledger).segments) == 6


def test_c3_a_guid_shared_by_a_process_and_a_task_keeps_two_states(
    engine: Engine, ledger: Engine, clock: SimulatedClock
) -> None:
    """C3: state is kept per (kind, guid); a batch that touches only the task must neither
    load nor overwrite the process with the same guid (the ledger looks states up by guid)."""
    insert_app(
        engine,
        app_row("STARTED", app_guid="x1", minute=0, previous_state="STOPPED"),
        app_row("TASK_STARTED", task_guid="x1", minute=1),
        app_row("TASK_STOPPED", task_guid="x1", minute=2),
        app_row("STOPPED", app_guid="x1", minute=3),
    )
    consumer.consume(engine, ledger, clock=clock, grace=NO_GRACE, batch_size=1)
    ledger_now = stored(ledger)
    assert ledger_now == folded(engine)
    assert [(s.kind, s.closed_by_id) for s in ledger_now.segments] == [("app", 4), ("task", 3)]
    assert not ledger_now.findings


def test_c1_crash_before_commit_applies_nothing_and_a_rerun_finishes(
    engine: Engine, ledger: Engine, clock: SimulatedClock
) -> None:
    """C1: the batch's states, segments and cursor commit together; a crash loses the batch
    whole, and the rerun neither skips nor repeats an event."""
    _history(engine)
    with (
        mock.patch.object(ledger_store, "write_cursor", side_effect=RuntimeError("killed")),
        pytest.raises(RuntimeError),
    ):
        consumer.consume(engine, ledger, clock=clock, grace=NO_GRACE, batch_size=4)
    with ledger.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(ledger_segments)).scalar() == 0
    assert cursor_of(ledger, APP_USAGE_EVENTS) == 0  # created before the batch, never moved
    consumer.consume(engine, ledger, clock=clock, grace=NO_GRACE, batch_size=4)
    assert stored(ledger) == folded(engine)


def test_c2_cursor_waits_at_a_hole_until_the_grace_period_ends(
    engine: Engine, ledger: Engine, clock: SimulatedClock
) -> None:
    """C2: a missing id holds the cursor for the grace period on the consumer's clock, then
    becomes a permanent gap on record."""
    ids = insert_app(
        engine,
        app_row("STARTED", app_guid="p1", minute=0, previous_state="STOPPED"),
        app_row("STARTED", app_guid="p2", minute=1, previous_state="STOPPED"),
        app_row("STARTED", app_guid="p3", minute=2, previous_state="STOPPED"),
    )
    with engine.begin() as conn:  # a rolled-back transaction leaves exactly such a hole
        conn.execute(app_usage_events.delete().where(app_usage_events.c.id == ids[1]))
    first = consumer.consume(engine, ledger, clock=clock, grace=GRACE, tables=[APP_USAGE_EVENTS])
    assert first.events_applied == 1 and cursor_of(ledger, APP_USAGE_EVENTS) == ids[0]
    assert first.waiting_at[APP_USAGE_EVENTS].first == ids[1]
    clock.advance(timedelta(seconds=59))
    again = consumer.consume(engine, ledger, clock=clock, grace=GRACE, tables=[APP_USAGE_EVENTS])
    assert again.events_applied == 0
    clock.advance(timedelta(seconds=1))
    last = consumer.consume(engine, ledger, clock=clock, grace=GRACE, tables=[APP_USAGE_EVENTS])
    assert last.events_applied == 1 and cursor_of(ledger, APP_USAGE_EVENTS) == ids[2]
    with ledger.connect() as conn:
        gaps = ledger_store.gap_records(conn, consumer.DEFAULT_CONSUMER)
    assert [(g.first_id, g.last_id, g.status) for g in gaps] == [(ids[1], ids[1], "permanent")]


def test_c2_row_committed_late_below_a_visible_one_is_billed(
    engine: Engine, ledger: Engine, clock: SimulatedClock
) -> None:
    """C2: a lower id that becomes visible after a higher one, within the grace period, is
    applied in id order (written here with explicit ids, as a late commit would leave it)."""
    early = app_row("STARTED", app_guid="late", minute=0, previous_state="STOPPED")
    with engine.begin() as conn:
        conn.execute(
            app_usage_events.insert().values(
                id=1, **app_row("STARTED", app_guid="first", minute=0, previous_state="STOPPED")
            )
        )
        conn.execute(
            app_usage_events.insert().values(id=3, **app_row("STOPPED", app_guid="late", minute=5))
        )
    consumer.consume(engine, ledger, clock=clock, grace=GRACE, tables=[APP_USAGE_EVENTS])
    assert cursor_of(ledger, APP_USAGE_EVENTS) == 1
    with engine.begin() as conn:
        conn.execute(app_usage_events.insert().values(id=2, **early))
    consumer.consume(engine, ledger, clock=clock, grace=GRACE, tables=[APP_USAGE_EVENTS])
    segments = stored(ledger).segments_of("late")
    assert [(s.start, s.end) for s in segments] == [(at(0), at(5))]
    assert stored(ledger) == folded(engine)


def _fall_behind(engine: Engine, ledger: Engine, clock: SimulatedClock) -> None:
    """Consume 1..3, then let an old-style cleanup delete 1..5 and a backfill seed baselines."""
    insert_app(
        engine,
        app_row("STARTED", app_guid="p1", minute=0, previous_state="STOPPED"),
        app_row("STARTED", app_guid="p2", minute=1, previous_state="STOPPED"),
        app_row("STARTED", app_guid="p3", minute=2, previous_state="STOPPED"),
    )
    consumer.consume(engine, ledger, clock=clock, grace=NO_GRACE, tables=[APP_USAGE_EVENTS])
    insert_app(
        engine,
        app_row("STOPPED", app_guid="p1", minute=10),
        app_row("STOPPED", app_guid="p2", minute=11),
        app_row("STARTED", app_guid="p4", minute=12, previous_state="STOPPED"),
    )
    with engine.begin() as conn:
        conn.execute(app_usage_events.delete().where(app_usage_events.c.id <= 5))
    insert_app(
        engine,
        app_row("WAS_RUNNING", app_guid="p3", minute=20),
        app_row("WAS_RUNNING", app_guid="p4", minute=20),
    )


def test_c10_fell_behind_retention_closes_unsupported_runs_and_reports_the_gap(
    engine: Engine, ledger: Engine, clock: SimulatedClock
) -> None:
    """C10: the cursor's row is gone and the table starts above it: report ids 4..5, close p1
    and p2 (no kept opening, no ending) flagged gap_close, keep p3 (a kept baseline), go on."""
    _fall_behind(engine, ledger, clock)
    waiting = consumer.consume(engine, ledger, clock=clock, grace=GRACE, tables=[APP_USAGE_EVENTS])
    assert waiting.fell_behind == () and waiting.events_applied == 0  # in-flight? wait first
    clock.advance(GRACE)
    result = consumer.consume(engine, ledger, clock=clock, grace=GRACE, tables=[APP_USAGE_EVENTS])
    assert [(g.first_id, g.last_id, g.gap_closed) for g in result.fell_behind] == [(4, 5, 2)]
    with pytest.raises(FellBehindRetentionError) as raised:
        consumer.raise_if_fell_behind(result)
    assert raised.value.exit_code == 4 and "4..5" in str(raised.value)
    led = stored(ledger)
    closes = {s.guid: s for s in led.segments if s.gap_close}
    assert set(closes) == {"p1", "p2"}
    assert all(s.end == at(12) and s.closed_by_id is None for s in closes.values())
    assert {r.guid for r in led.open_resources()} == {"p3", "p4"}
    p3 = led.segments_of("p3")
    assert len(p3) == 1 and p3[0].start == at(2)  # the baseline opened no second interval
    codes = [f.code.value for f in led.findings]
    assert "fell_behind_retention" in codes and codes.count("gap_close") == 2
    with ledger.connect() as conn:
        gaps = ledger_store.gap_records(conn, consumer.DEFAULT_CONSUMER)
    assert [(g.first_id, g.last_id, g.status) for g in gaps] == [(4, 5, "retention")]


def test_c10_a_new_consumer_on_a_pruned_table_is_not_behind(
    engine: Engine, ledger: Engine, clock: SimulatedClock
) -> None:
    """C10: starting from zero on a pruned table bootstraps from the kept rows; no exit 4."""
    insert_app(
        engine,
        app_row("STARTED", app_guid="p1", minute=0, previous_state="STOPPED"),
        app_row("STARTED", app_guid="p2", minute=1, previous_state="STOPPED"),
    )
    with engine.begin() as conn:
        conn.execute(app_usage_events.delete().where(app_usage_events.c.id == 1))
    result = consumer.consume(engine, ledger, clock=clock, grace=NO_GRACE)
    assert result.fell_behind == ()
    assert [r.guid for r in stored(ledger).open_resources()] == ["p2"]


def test_c12_replaying_from_zero_gives_the_same_ledger(
    engine: Engine, ledger: Engine, clock: SimulatedClock
) -> None:
    """C12: a second consumer replaying the same rows from id 0 builds an identical ledger."""
    _history(engine)
    consumer.consume(engine, ledger, consumer="first", clock=clock, grace=NO_GRACE, batch_size=3)
    consumer.consume(
        engine, ledger, consumer="second", clock=clock, grace=NO_GRACE, batch_size=1000
    )
    assert stored(ledger, "first") == stored(ledger, "second") == folded(engine)


def test_c14_ledger_in_a_separate_database(
    engine: Engine, ledger: Engine, separate_ledger: Engine, clock: SimulatedClock
) -> None:
    """C14: the ledger lives in another database; the platform database gets no ledger rows.
    The platform database has empty ledger tables of its own here (the `ledger` fixture: the
    default place of a ledger), so a consumer that wrote any of its rows there, a cursor or a
    segment, would leave them to be counted."""
    _history(engine)
    consumer.consume(engine, separate_ledger, clock=clock, grace=NO_GRACE)
    assert stored(separate_ledger) == folded(engine)
    assert cursor_of(separate_ledger, SERVICE_USAGE_EVENTS) == 2
    with ledger.connect() as conn:
        in_platform = {
            t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            for t in ledger_metadata.sorted_tables
        }
    assert in_platform == dict.fromkeys(in_platform, 0)


def _ledger_as_stored(ledger: Engine, name: str) -> tuple[Any, ...]:
    """Everything a consumer stores, as read back: the ledger in stored order (not canonical:
    C12 asks for the same ledger bit for bit), the gaps and the cursors."""
    with db.transaction(ledger, read_only=True) as conn:
        cursors = [
            (c.table, c.position, c.last_event_id, c.last_event_guid)
            for c in ledger_store.read_cursors(conn, name)
        ]
        return (
            ledger_store.read_ledger(conn, name),
            ledger_store.gap_records(conn, name),
            cursors,
        )


def test_c14_c12_a_ledger_on_another_backend_is_the_same_ledger(
    request: pytest.FixtureRequest,
    backend_url: str,
    _databases: Any,
    engine: Engine,
    ledger: Engine,
    clock: SimulatedClock,
) -> None:
    """C14 with C12: a billing system keeps its ledger in a database of its own, often of
    another kind than the platform's. The same rows consumed into a ledger on every other
    configured backend give the ledger this backend's own ledger gets, value for value:
    timestamps with microseconds (DATETIME(6) on MariaDB, TIMESTAMP on PostgreSQL, text on
    SQLite), lower-bound and repaired flags, resizes, staging, a plan change, a quarantined
    state and a permanent id hole."""
    from tests.conftest import _configured_urls

    others = [u for u in _configured_urls(request.config) if u != backend_url]
    if not others:
        pytest.skip("needs a second configured backend")
    _history(engine)  # a resize, a task, a baseline after the fact, a plan change
    insert_app(
        engine,
        app_row("STAGING_STARTED", parent_app_guid="a1", package_guid="k1", minute=5.000001),
        app_row("EXPLODED", app_guid="p3", minute=5.5),
        app_row("STAGING_STOPPED", parent_app_guid="a1", package_guid="k1", minute=5.999999),
    )
    with engine.begin() as conn:  # an id nobody commits: a hole the consumer must settle (C2)
        hole = insert_app(conn, app_row("STARTED", app_guid="p9", minute=6))[0]
        conn.execute(sa.delete(app_usage_events).where(app_usage_events.c.id == hole))
    insert_app(
        engine,
        app_row("STOPPED", app_guid="p2", minute=6.123457, previous_state="WAS_RUNNING"),
        app_row("STOPPED", app_guid="p1", minute=7),
    )
    insert_service(engine, service_row("DELETED", instance="s2", minute=7.25))

    def consume_into(target: Engine) -> tuple[Any, ...]:
        consumer.consume(engine, target, clock=clock, grace=NO_GRACE, batch_size=3)
        return _ledger_as_stored(target, consumer.DEFAULT_CONSUMER)

    here = consume_into(ledger)
    assert here[1], "the hole was recorded as a gap"
    assert any(s.start_is_lower_bound for s in here[0].segments)
    assert len(here[0].findings) >= 2, "the unknown state and the second ending"
    for other in others:
        target = db.make_engine(_databases.empty_url(other), create=True)
        try:
            ledger_migrations.upgrade(target)
            assert consume_into(target) == here, db.display_url(other)
        finally:
            target.dispose()


def _keep_running_cleanup(engine: Engine, days_after_t0: int = 40) -> None:
    """The real cleanup (R5–R7), run when every row above is older than the 31-day cutoff."""
    retention.cleanup(
        engine,
        APP_USAGE_EVENTS,
        cutoff_age_in_days=31,
        clock=SimulatedClock(at(0) + timedelta(days=days_after_t0)),
    )


def _ids(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(app_usage_events.c.id).order_by("id")).scalars())


def test_c10_keep_running_cleanup_past_the_cursor_is_detected(
    engine: Engine, ledger: Engine, clock: SimulatedClock
) -> None:
    """C10 with the keep-running cleanup: a long-running process keeps the table's lowest id
    far below the cursor, so "the table starts above the cursor" never holds; the consumer
    still finds it fell behind (the cleanup's watermark is above its cursor), closes p1 and p2
    whose endings were pruned unread, keeps p0 (its kept opening) and exits 4. Before, the
    pruned range passed as a rolled-back hole and p1 and p2 stayed open for ever."""
    insert_app(
        engine,
        app_row("STARTED", app_guid="p0", minute=0, previous_state="STOPPED"),
        app_row("STARTED", app_guid="p1", minute=1, previous_state="STOPPED"),
        app_row("STARTED", app_guid="p2", minute=2, previous_state="STOPPED"),
    )
    consumer.consume(engine, ledger, clock=clock, grace=NO_GRACE, tables=[APP_USAGE_EVENTS])
    insert_app(
        engine,
        app_row("STOPPED", app_guid="p1", minute=10),
        app_row("STOPPED", app_guid="p2", minute=11),
        app_row("STARTED", app_guid="p4", minute=12, previous_state="STOPPED"),
    )
    _keep_running_cleanup(engine)
    assert _ids(engine) == [1, 6]
    result = consumer.consume(
        engine, ledger, clock=clock, grace=NO_GRACE, tables=[APP_USAGE_EVENTS]
    )
    assert [(g.first_id, g.last_id, g.gap_closed) for g in result.fell_behind] == [(4, 5, 2)]
    with pytest.raises(FellBehindRetentionError):
        consumer.raise_if_fell_behind(result)
    led = stored(ledger)
    assert {s.guid for s in led.segments if s.gap_close} == {"p1", "p2"}
    assert {r.guid for r in led.open_resources()} == {"p0", "p4"}


def test_c10_cleanup_watermark_detects_pruning_when_the_last_read_row_is_kept(
    engine: Engine, ledger: Engine, clock: SimulatedClock
) -> None:
    """C10: the consumer's last row (p0's latest opening) is one retention keeps, and the table
    still starts at p0's first opening; the cleanup's watermark (the highest id it planned to
    delete, above the cursor) says rows above the cursor may be gone, so the pruned STOPPED of
    p1 is found and p1 closed."""
    insert_app(
        engine,
        app_row("STARTED", app_guid="p0", minute=0, previous_state="STOPPED"),
        app_row("STARTED", app_guid="p1", minute=1, previous_state="STOPPED"),
        app_row("TASK_STARTED", task_guid="t1", minute=2),
        app_row("TASK_STOPPED", task_guid="t1", minute=3),
        app_row(
            "STARTED",
            app_guid="p0",
            minute=4,
            instances=2,
            previous_state="STARTED",
            previous_instances=1,
            previous_memory=256,
        ),
    )
    consumer.consume(engine, ledger, clock=clock, grace=NO_GRACE, tables=[APP_USAGE_EVENTS])
    insert_app(
        engine,
        app_row("STOPPED", app_guid="p1", minute=10),
        app_row("STARTED", app_guid="p2", minute=12, previous_state="STOPPED"),
    )
    _keep_running_cleanup(engine)
    assert _ids(engine) == [1, 5, 7]
    result = consumer.consume(
        engine, ledger, clock=clock, grace=NO_GRACE, tables=[APP_USAGE_EVENTS]
    )
    assert [(g.first_id, g.last_id, g.gap_closed) for g in result.fell_behind] == [(6, 6, 1)]
    led = stored(ledger)
    assert [s.guid for s in led.segments if s.gap_close] == ["p1"]
    assert {r.guid for r in led.open_resources()} == {"p0", "p2"}


def test_c10_a_restart_in_the_pruned_range_ends_the_old_run(
    engine: Engine, ledger: Engine, clock: SimulatedClock
) -> None:
    """C10: p1 stopped and started again inside the pruned range; the kept row is the new
    run's real start. The old run is closed (gap close) and the new one starts at its own
    start, as `reconstruct current-state` says; before, the restart was absorbed into one run
    from day 0."""
    insert_app(engine, app_row("STARTED", app_guid="p1", minute=0, previous_state="STOPPED"))
    consumer.consume(engine, ledger, clock=clock, grace=NO_GRACE, tables=[APP_USAGE_EVENTS])
    restart = 5 * 24 * 60
    insert_app(
        engine,
        app_row("STOPPED", app_guid="p1", minute=60),
        app_row("STARTED", app_guid="p1", minute=restart, previous_state="STOPPED"),
    )
    _keep_running_cleanup(engine)
    assert _ids(engine) == [3]
    result = consumer.consume(
        engine, ledger, clock=clock, grace=NO_GRACE, tables=[APP_USAGE_EVENTS]
    )
    assert [(g.first_id, g.last_id, g.gap_closed) for g in result.fell_behind] == [(2, 2, 1)]
    led = stored(ledger)
    (closed,) = [s for s in led.segments if s.end is not None]
    assert closed.gap_close and (closed.start, closed.end) == (at(0), at(restart))
    (state,) = led.open_resources()
    assert state.run_start == at(restart) and state.run_opened_by_id == 3


def test_c10_a_rolled_back_hole_after_an_old_style_cleanup_is_not_falling_behind(
    engine: Engine, ledger: Engine, clock: SimulatedClock
) -> None:
    """C10/C2: a caught-up consumer whose read rows an old delete-everything cleanup removed
    (p1's opening) then passes a rolled-back hole: nothing above its cursor was pruned (no
    watermark, and the table does not start above the cursor), so no C10, and p1, still
    running, stays open."""
    insert_app(
        engine,
        app_row("STARTED", app_guid="p1", minute=0, previous_state="STOPPED"),
        app_row("TASK_STARTED", task_guid="t1", minute=40 * 24 * 60),
        app_row("TASK_STOPPED", task_guid="t1", minute=40 * 24 * 60 + 1),
    )
    consumer.consume(engine, ledger, clock=clock, grace=GRACE, tables=[APP_USAGE_EVENTS])
    with engine.begin() as conn:
        conn.execute(app_usage_events.delete().where(app_usage_events.c.id == 1))
        conn.execute(
            app_usage_events.insert().values(
                id=5, **app_row("STARTED", app_guid="p2", minute=40 * 24 * 60 + 2)
            )
        )
    waiting = consumer.consume(engine, ledger, clock=clock, grace=GRACE, tables=[APP_USAGE_EVENTS])
    assert waiting.waiting_at  # hole 4 first waits out its grace period (C2)
    clock.advance(GRACE)
    result = consumer.consume(engine, ledger, clock=clock, grace=GRACE, tables=[APP_USAGE_EVENTS])
    assert result.fell_behind == () and result.events_applied == 1
    assert {r.guid for r in stored(ledger).open_resources()} == {"p1", "p2"}
    with ledger.connect() as conn:
        gaps = ledger_store.gap_records(conn, consumer.DEFAULT_CONSUMER)
    assert [(g.first_id, g.last_id, g.status) for g in gaps] == [(4, 4, "permanent")]


def test_c1_a_new_consumer_name_used_twice_at_once_creates_one_cursor(
    engine: Engine, ledger: Engine, clock: SimulatedClock
) -> None:
    """C1: two first runs of the same new consumer name race to create its cursor; the loser
    waits for the winner's row instead of failing on the primary key, both runs end, and the
    ledger holds one cursor for the table and the same segments as one run would."""
    insert_app(engine, app_row("STARTED", app_guid="p1", minute=0, previous_state="STOPPED"))
    if db.backend_of(ledger) is db.Backend.SQLITE:
        pytest.skip("SQLite writers begin with BEGIN IMMEDIATE: the second waits before reading")
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []
    real_new_row = ledger_store._new_cursor_row

    def both_saw_no_cursor(*args: Any) -> dict[str, Any]:
        # Stages the race: both runs have looked and found no cursor before either inserts.
        # The staging depends on how the cursor is created; if it no longer applies, say so.
        try:
            barrier.wait(timeout=10)
        except threading.BrokenBarrierError:
            raise AssertionError(
                "only one run reached ledger_store._new_cursor_row within 10 s: the race this "
                "test stages did not happen (did the way a new cursor is created change?)"
            ) from None
        return real_new_row(*args)

    def run() -> None:
        try:
            consumer.consume(engine, ledger, clock=clock, grace=NO_GRACE, tables=[APP_USAGE_EVENTS])
        except BaseException as exc:
            errors.append(exc)

    with mock.patch.object(ledger_store, "_new_cursor_row", both_saw_no_cursor):
        # Daemon threads: a run that hangs fails the test below instead of the interpreter's exit.
        threads = [threading.Thread(target=run, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert [t.is_alive() for t in threads] == [False, False], "a run hung for 60 s"
    assert errors == []
    with ledger.connect() as conn:
        cursors = conn.execute(
            sa.select(ledger_cursors.c.consumer, ledger_cursors.c.source_table)
        ).all()
    assert [tuple(c) for c in cursors] == [(consumer.DEFAULT_CONSUMER, APP_USAGE_EVENTS)]
    assert stored(ledger) == folded(engine)


def test_c3_keys_differing_only_in_case_are_two_resources(
    engine: Engine, ledger: Engine, clock: SimulatedClock
) -> None:
    """C3: the ledger compares keys byte for byte on every backend (MariaDB's default
    collation would make `P2` and `p2` one primary key, and utf8mb4_bin `P2` and `P2 `, and
    the consumer fail for good)."""
    insert_app(
        engine,
        app_row("STARTED", app_guid="P2", minute=0, previous_state="STOPPED"),
        app_row("STARTED", app_guid="p2", minute=1, previous_state="STOPPED"),
        app_row("STOPPED", app_guid="p2", minute=2),
        app_row("STARTED", app_guid="P2 ", minute=3, previous_state="STOPPED"),
    )
    consumer.consume(engine, ledger, clock=clock, grace=NO_GRACE, tables=[APP_USAGE_EVENTS])
    led = stored(ledger)
    assert sorted(r.guid for r in led.open_resources()) == ["P2", "P2 "]
    assert [(s.guid, s.end) for s in led.segments if s.end is not None] == [("p2", at(2))]


def _keep_running_cleanup_of_services(engine: Engine, *, keep_running: bool = True) -> None:
    retention.cleanup(
        engine,
        SERVICE_USAGE_EVENTS,
        cutoff_age_in_days=31,
        keep_running_records=keep_running,
        clock=SimulatedClock(at(0) + timedelta(days=40)),
    )


@pytest.mark.parametrize("keep_running", [True, False])
def test_c10_a_caught_up_consumer_passing_a_hole_after_a_cleanup_is_not_behind(
    engine: Engine, ledger: Engine, clock: SimulatedClock, keep_running: bool
) -> None:
    """C10/C2: a consumer that read everything, then a cleanup (with or without keep-running
    records) of rows it had read, then a rolled-back id: nothing above its cursor was planned
    for deletion, so the hole is a permanent C2 hole, not C10, and s2 and s3 stay open."""
    insert_service(
        engine,
        service_row("CREATED", instance="s1", minute=0),
        service_row("DELETED", instance="s1", minute=1),
        service_row("CREATED", instance="s2", minute=2),
        service_row("CREATED", instance="s3", minute=3),
    )
    consumer.consume(engine, ledger, clock=clock, grace=NO_GRACE, tables=[SERVICE_USAGE_EVENTS])
    _keep_running_cleanup_of_services(engine, keep_running=keep_running)
    with engine.begin() as conn:  # id 5 was rolled back
        conn.execute(
            service_usage_events.insert().values(
                id=6, **service_row("CREATED", instance="s4", minute=40 * 24 * 60)
            )
        )
    result = consumer.consume(
        engine, ledger, clock=clock, grace=NO_GRACE, tables=[SERVICE_USAGE_EVENTS]
    )
    assert result.fell_behind == () and result.events_applied == 1
    assert {r.guid for r in stored(ledger).open_resources()} == {"s2", "s3", "s4"}


def test_c10_service_deleted_and_pruned_unread_is_closed(
    engine: Engine, ledger: Engine, clock: SimulatedClock
) -> None:
    """C10 on the service table: the consumer read two CREATED rows; s1's DELETED came after,
    and the cleanup pruned s1's run whole (R5a, R7) while s2's CREATED stays. The watermark is
    above the cursor: fell behind, s1 closed (gap close), s2 open."""
    insert_service(
        engine,
        service_row("CREATED", instance="s1", minute=0),
        service_row("CREATED", instance="s2", minute=1),
    )
    consumer.consume(engine, ledger, clock=clock, grace=NO_GRACE, tables=[SERVICE_USAGE_EVENTS])
    insert_service(
        engine,
        service_row("DELETED", instance="s1", minute=5),
        service_row("CREATED", instance="s3", minute=6),
    )
    _keep_running_cleanup_of_services(engine)
    result = consumer.consume(
        engine, ledger, clock=clock, grace=NO_GRACE, tables=[SERVICE_USAGE_EVENTS]
    )
    assert [(g.first_id, g.last_id, g.gap_closed) for g in result.fell_behind] == [(3, 3, 1)]
    led = stored(ledger)
    assert [s.guid for s in led.segments if s.gap_close] == ["s1"]
    assert {r.guid for r in led.open_resources()} == {"s2", "s3"}


def test_c1_a_source_table_whose_ids_restarted_is_refused(
    engine: Engine, separate_ledger: Engine, clock: SimulatedClock
) -> None:
    """C1: after the platform's event table is recreated (ids start at 1 again), a consumer
    whose cursor stands above every id refuses with a one-line error and writes nothing.
    Before, it read on from its old cursor and skipped every new event below it, silently."""
    _history(engine)
    consumer.consume(engine, separate_ledger, clock=clock, grace=NO_GRACE)
    assert cursor_of(separate_ledger, APP_USAGE_EVENTS) == 6
    db.truncate_tables(engine, [app_usage_events])  # a schema reset: ids restart
    insert_app(engine, app_row("STARTED", app_guid="new", minute=20, previous_state="STOPPED"))
    before = stored(separate_ledger)
    with pytest.raises(SourceResetError) as raised:
        consumer.consume(engine, separate_ledger, clock=clock, grace=NO_GRACE)
    assert raised.value.exit_code == 2
    assert "highest id is now 1" in str(raised.value) and "\n" not in str(raised.value)
    assert stored(separate_ledger) == before
    assert cursor_of(separate_ledger, APP_USAGE_EVENTS) == 6
    # Grown past the old cursor: the highest id no longer tells, the guid at id 6 does.
    insert_app(
        engine,
        *(app_row("TASK_STARTED", task_guid=f"n{i}", minute=21 + i) for i in range(7)),
    )
    with pytest.raises(SourceResetError) as raised:
        consumer.consume(engine, separate_ledger, clock=clock, grace=NO_GRACE)
    assert "its event 6 is now another event" in str(raised.value)
    assert stored(separate_ledger) == before


def test_c1_a_cleanup_that_took_the_newest_row_is_no_reset(
    engine: Engine, ledger: Engine, clock: SimulatedClock
) -> None:
    """C1/R2: a cleanup told not to keep the newest row can leave the table's highest id below
    a caught-up cursor (created_at out of id order); its watermark says so, and the consumer
    goes on instead of reporting a reset."""
    insert_app(
        engine,
        app_row("STARTED", app_guid="p1", minute=5000, previous_state="STOPPED"),
        app_row("STARTED", app_guid="p2", minute=0, previous_state="STOPPED"),
    )
    consumer.consume(engine, ledger, clock=clock, grace=NO_GRACE, tables=[APP_USAGE_EVENTS])
    retention.cleanup(
        engine,
        APP_USAGE_EVENTS,
        cutoff_age_in_days=3,
        keep_at_least_one_record=False,
        keep_running_records=False,
        clock=SimulatedClock(at(5000) + timedelta(days=2)),
    )
    assert _ids(engine) == [1]
    result = consumer.consume(
        engine, ledger, clock=clock, grace=NO_GRACE, tables=[APP_USAGE_EVENTS]
    )
    assert result.events_applied == 0 and result.positions == {APP_USAGE_EVENTS: 2}


def test_c2_holes_below_the_cleanup_watermark_need_no_grace_period(
    engine: Engine, ledger: Engine, clock: SimulatedClock
) -> None:
    """C2/C10: a new consumer on a table a keep-running cleanup pruned passes the pruned holes
    at once (no transaction still holds an id below rows older than the cutoff), while a hole
    above the watermark still waits for its grace period."""
    insert_app(
        engine,
        app_row("STARTED", app_guid="p1", minute=0, previous_state="STOPPED"),
        app_row("STOPPED", app_guid="p1", minute=1),
        app_row("STARTED", app_guid="p2", minute=2, previous_state="STOPPED"),
    )
    _keep_running_cleanup(engine)
    assert _ids(engine) == [3]
    insert_app(engine, app_row("STARTED", app_guid="p3", minute=60 * 24 * 40))
    with engine.begin() as conn:  # a rolled-back insert's hole above the watermark
        conn.execute(app_usage_events.delete().where(app_usage_events.c.id == 4))
    insert_app(engine, app_row("STARTED", app_guid="p4", minute=60 * 24 * 40))
    result = consumer.consume(engine, ledger, clock=clock, grace=GRACE, tables=[APP_USAGE_EVENTS])
    assert result.fell_behind == ()
    assert cursor_of(ledger, APP_USAGE_EVENTS) == 3  # past 1..2 at once, waiting at 4
    assert result.waiting_at[APP_USAGE_EVENTS] == IdRange(4, 4)
    clock.advance(GRACE)
    consumer.consume(engine, ledger, clock=clock, grace=GRACE, tables=[APP_USAGE_EVENTS])
    assert cursor_of(ledger, APP_USAGE_EVENTS) == 5
    assert {r.guid for r in stored(ledger).open_resources()} == {"p2", "p4"}


def test_c2_a_cleanup_with_cutoff_0_settles_no_hole_before_a_grace_period(
    engine: Engine, ledger: Engine, clock: SimulatedClock
) -> None:
    """C2: right after a cleanup with cutoff 0, a hole below its watermark may still be a
    transaction in flight (cutoff 0 makes rows being committed old at once), so it waits out
    the grace period as any hole does; once the cutoff is a grace period old it is settled."""
    insert_app(
        engine,
        app_row("STARTED", app_guid="p1", minute=0, previous_state="STOPPED"),
        app_row("TASK_STARTED", task_guid="t1", minute=1),
        app_row("STOPPED", app_guid="p1", minute=2),
        app_row("STARTED", app_guid="p2", minute=3, previous_state="STOPPED"),
    )
    with engine.begin() as conn:  # id 2: as if its transaction were still open
        conn.execute(app_usage_events.delete().where(app_usage_events.c.id == 2))
    cleanup_clock = SimulatedClock(datetime(2026, 6, 1, tzinfo=UTC))
    retention.cleanup(engine, APP_USAGE_EVENTS, cutoff_age_in_days=0, clock=cleanup_clock)
    assert _ids(engine) == [4]
    result = consumer.consume(engine, ledger, clock=clock, grace=GRACE, tables=[APP_USAGE_EVENTS])
    assert result.waiting_at[APP_USAGE_EVENTS] == IdRange(1, 3)
    clock.advance(GRACE)
    consumer.consume(engine, ledger, clock=clock, grace=GRACE, tables=[APP_USAGE_EVENTS])
    assert cursor_of(ledger, APP_USAGE_EVENTS) == 4
