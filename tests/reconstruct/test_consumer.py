"""The forward reader and its ledger on real databases (C1, C2, C10, C12, C14)."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.reconstruct.histories import app_row, at, insert_app, insert_service, service_row
from usageledger import db
from usageledger.clock import SimulatedClock
from usageledger.errors import FellBehindRetentionError
from usageledger.lifecycles import APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS
from usageledger.reconstruct import consumer, ledger_store
from usageledger.reconstruct.billing import Ledger, fold
from usageledger.reconstruct.source import read_all_events
from usageledger.schema import (
    app_usage_events,
    ledger_cursors,
    ledger_metadata,
    ledger_segments,
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
    assert cursor_of(ledger, APP_USAGE_EVENTS) is None
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
    engine: Engine, separate_ledger: Engine, clock: SimulatedClock
) -> None:
    """C14: the ledger lives in another database; the platform database gets no ledger rows."""
    if sa.inspect(engine).has_table("ledger_cursors"):
        # Another test of this session may have put a ledger here; only this run counts.
        db.truncate_tables(engine, list(ledger_metadata.sorted_tables))
    _history(engine)
    consumer.consume(engine, separate_ledger, clock=clock, grace=NO_GRACE)
    assert stored(separate_ledger) == folded(engine)
    assert cursor_of(separate_ledger, SERVICE_USAGE_EVENTS) == 2
    if sa.inspect(engine).has_table("ledger_cursors"):
        assert cursor_of(engine, SERVICE_USAGE_EVENTS) is None
