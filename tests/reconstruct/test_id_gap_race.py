"""The id-gap race (C2) with real concurrent connections.

Transaction A inserts an event and holds; transaction B inserts one and commits; the consumer
polls; A commits; the consumer polls again. The reference consumer bills both events. A naive
consumer that keeps "the highest id seen" as its cursor (kept here, in the tests, never in the
product) moves past A's id on the first poll and never reads A's event.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from tests.reconstruct.histories import app_row, insert_app
from usageledger import db
from usageledger.clock import SimulatedClock
from usageledger.lifecycles import APP_USAGE_EVENTS
from usageledger.reconstruct import consumer, ledger_store
from usageledger.reconstruct.source import fetch_after
from usageledger.schema import app_usage_events

GRACE = timedelta(seconds=60)


class NaiveMaxIdCursor:
    """The wrong way (SPEC S8 "a naive consumer cursor"): skip to the highest id seen."""

    def __init__(self) -> None:
        self.position = 0
        self.seen: list[str] = []

    def poll(self, engine: Engine) -> None:
        with db.transaction(engine, read_only=True) as conn:
            events = fetch_after(conn, APP_USAGE_EVENTS, self.position, 1000)
        for event in events:
            self.seen.append(event.app_guid)
            self.position = max(self.position, event.id)


def test_c2_id_gap_race_reference_bills_both_naive_loses_one(
    engine: Engine, ledger: Engine, clock: SimulatedClock, backend: db.Backend
) -> None:
    """C2: A holds a lower id while B commits a higher one; the reference consumer waits at
    the gap and bills A after it commits; the naive max-id cursor provably loses A."""
    if backend is db.Backend.SQLITE:
        pytest.skip("SQLite has one writer at a time; see test_c2_sqlite_commits_ids_in_order")
    naive = NaiveMaxIdCursor()
    with engine.connect() as holder:
        held = holder.begin()
        a_key = holder.execute(
            app_usage_events.insert().values(
                **app_row("STARTED", app_guid="A", minute=0, previous_state="STOPPED")
            )
        ).inserted_primary_key
        assert a_key is not None
        a_id = a_key[0]
        (b_id,) = insert_app(
            engine, app_row("STARTED", app_guid="B", minute=1, previous_state="STOPPED")
        )
        assert a_id < b_id  # the lower id is still invisible to everybody else

        first = consumer.consume(
            engine, ledger, clock=clock, grace=GRACE, tables=[APP_USAGE_EVENTS]
        )
        naive.poll(engine)
        assert first.events_applied == 0 and first.waiting_at[APP_USAGE_EVENTS].first == a_id
        assert naive.seen == ["B"] and naive.position == b_id

        held.commit()

    clock.advance(timedelta(seconds=1))
    second = consumer.consume(engine, ledger, clock=clock, grace=GRACE, tables=[APP_USAGE_EVENTS])
    naive.poll(engine)
    assert second.events_applied == 2
    with db.transaction(ledger, read_only=True) as conn:
        billed = {
            s.guid for s in ledger_store.read_ledger(conn, consumer.DEFAULT_CONSUMER).segments
        }
    assert billed == {"A", "B"}
    assert "A" not in naive.seen  # lost for good: its cursor is already past A's id


def test_c2_sqlite_commits_ids_in_order(db_url: URL, engine: Engine, backend: db.Backend) -> None:
    """C2 on SQLite, and why S3 documents that SQLite cannot show out-of-order commits: SQLite
    allows one writing transaction at a time (BEGIN IMMEDIATE). While A's transaction has
    inserted and holds, B cannot even begin its own: with a short busy timeout B's insert fails
    with "database is locked" instead of taking an id, so no id above A's can be committed
    before A. Once A commits, B's insert takes the next id after A's."""
    if backend is not db.Backend.SQLITE:
        pytest.skip("the in-order property is SQLite's; the race itself is tested above")
    impatient = db.make_engine(db_url)
    db.set_sqlite_busy_timeout(impatient, 50)
    b_row = app_row("STARTED", app_guid="B", minute=1, previous_state="STOPPED")
    try:
        with engine.connect() as holder:
            held = holder.begin()
            a_key = holder.execute(
                app_usage_events.insert().values(**app_row("STARTED", app_guid="A"))
            ).inserted_primary_key
            assert a_key is not None
            with pytest.raises(sa.exc.OperationalError, match="database is locked"):
                insert_app(impatient, b_row)
            held.commit()
        (b_id,) = insert_app(impatient, b_row)
    finally:
        impatient.dispose()
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(app_usage_events.c.id, app_usage_events.c.app_guid).order_by("id")
        ).all()
    assert [tuple(r) for r in rows] == [(a_key[0], "A"), (b_id, "B")]
    assert a_key[0] < b_id
