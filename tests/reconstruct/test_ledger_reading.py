"""Reading the ledger downstream (docs/consumer-rules.md, "Reading the ledger downstream"): in
which order a consumer's segments become visible to a billing system that reads
`ledger_segments` forward by id, with real concurrent batches (C1)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.reconstruct.histories import app_row, insert_app, insert_service, service_row
from usageledger import db
from usageledger.clock import SimulatedClock
from usageledger.lifecycles import APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS
from usageledger.reconstruct import consumer, ledger_store
from usageledger.schema import ledger_segments

NO_GRACE = timedelta(0)
NAME = "billing"
#: How long the test lets a second batch run before it looks at what that batch did.
SETTLE_SECONDS = 0.5


def _segments(
    ledger: Engine, kinds: tuple[str, ...] | None = None, name: str = NAME
) -> list[tuple[int, str, str]]:
    """(id, kind, resource guid) of the committed segments of consumer `name`, by id, as a
    billing system reads them on its own connection."""
    s = ledger_segments.c
    query = sa.select(s.id, s.kind, s.resource_guid).where(s.consumer == name).order_by(s.id)
    if kinds is not None:
        query = query.where(s.kind.in_(kinds))
    with db.read_connection(ledger) as conn:  # on SQLite: no write lock to wait for
        return [(int(i), str(k), str(g)) for i, k, g in conn.execute(query)]


@contextmanager
def _held_after_segments(table: str) -> Iterator[tuple[threading.Event, threading.Event]]:
    """While active, the first batch of `table` stops after writing its segments, before it
    commits: (written, release). The batch writes its gaps right after its segments, inside
    the same ledger transaction (consumer.consume_batch)."""
    written, release = threading.Event(), threading.Event()
    real = ledger_store.record_gaps
    held = False

    def record_gaps(conn: Any, consumer_name: str, source_table: str, **kw: Any) -> None:
        nonlocal held
        if source_table == table and not held:
            held = True
            written.set()
            if not release.wait(timeout=60):
                raise AssertionError("the held batch was never released")
        real(conn, consumer_name, source_table, **kw)

    with mock.patch.object(ledger_store, "record_gaps", record_gaps):
        try:
            yield written, release
        finally:
            release.set()  # a failed assertion must not leave the batch's transaction open


def _in_thread(work: Callable[[], object], errors: list[BaseException]) -> threading.Thread:
    def run() -> None:
        try:
            work()
        except BaseException as exc:
            errors.append(exc)

    # Daemon: a batch that hangs fails the test instead of the interpreter's exit.
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _run(guid: str, start: float, stop: float) -> list[dict[str, Any]]:
    """One process run of `guid`: its start and its stop, minutes after T0."""
    return [
        app_row("STARTED", app_guid=guid, minute=start, previous_state="STOPPED"),
        app_row("STOPPED", app_guid=guid, minute=stop, previous_state="STARTED"),
    ]


def _second_while_first_is_held(
    written: threading.Event,
    first: Callable[[], object],
    second: Callable[[], object],
    errors: list[BaseException],
) -> tuple[threading.Thread, threading.Thread]:
    """Start `first`, wait until it is held after writing its segments, then start `second`."""
    held = _in_thread(first, errors)
    assert written.wait(timeout=30), "the first batch never wrote its segments"
    return held, _in_thread(second, errors)


def _batch(
    engine: Engine, ledger: Engine, clock: SimulatedClock, table: str, name: str = NAME
) -> Callable[[], object]:
    return lambda: consumer.consume_batch(
        engine, ledger, table=table, consumer=name, clock=clock, grace=NO_GRACE, batch_size=2
    )


def test_c1_batches_of_one_table_commit_their_segments_in_id_order(
    engine: Engine, ledger: Engine, clock: SimulatedClock
) -> None:
    """C1: two processes of one consumer on one table take turns on its cursor, so the second
    batch writes its segments only after the first committed: a reader of the table's segments
    by id never sees a higher id before a lower one. (On SQLite the second batch already waits
    for the first one's write lock, at BEGIN.)"""
    insert_app(engine, *_run("p1", 0, 5), *_run("p2", 6, 9))
    ledger_store.ensure_cursor(ledger, NAME, APP_USAGE_EVENTS, clock)
    errors: list[BaseException] = []
    with _held_after_segments(APP_USAGE_EVENTS) as (written, release):
        batch = _batch(engine, ledger, clock, APP_USAGE_EVENTS)
        first, second = _second_while_first_is_held(written, batch, batch, errors)
        second.join(timeout=SETTLE_SECONDS)
        assert second.is_alive(), "the second batch did not wait for the first one's cursor"
        assert _segments(ledger) == [], "a segment showed before its batch committed"
        release.set()
        first.join(timeout=30)
        second.join(timeout=60)
    assert errors == []
    assert not first.is_alive() and not second.is_alive()
    seen = _segments(ledger)
    # One segment per process, each billed once, in the order the batches committed.
    assert [guid for _, _, guid in seen] == ["p1", "p2"]
    assert seen[0][0] < seen[1][0]


def test_c1_segments_of_two_tables_can_commit_out_of_id_order(
    engine: Engine, ledger: Engine, clock: SimulatedClock, backend: db.Backend
) -> None:
    """C1 is per source table: a batch of the service table does not wait for a batch of the
    app table, so its segments can commit with higher ids while the app batch's lower ids are
    still uncommitted. A reader that follows all of a consumer's segments by one id then skips
    the app segment for good; a reader per source table does not. This is why
    docs/consumer-rules.md says to read the ledger per consumer and source table."""
    if backend is db.Backend.SQLITE:
        pytest.skip("SQLite has one writer at a time: the second batch waits at BEGIN")
    insert_app(engine, *_run("p1", 0, 5))
    insert_service(
        engine,
        service_row("CREATED", instance="s1", minute=1),
        service_row("DELETED", instance="s1", minute=4),
    )
    for table in (APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS):
        ledger_store.ensure_cursor(ledger, NAME, table, clock)
    errors: list[BaseException] = []
    with _held_after_segments(APP_USAGE_EVENTS) as (written, release):
        app_batch, service_batch = _second_while_first_is_held(
            written,
            _batch(engine, ledger, clock, APP_USAGE_EVENTS),
            _batch(engine, ledger, clock, SERVICE_USAGE_EVENTS),
            errors,
        )
        service_batch.join(timeout=30)
        assert not service_batch.is_alive(), "the service batch waited for the app batch"
        # A reader following every segment of the consumer by id reads now ...
        early = _segments(ledger)
        assert [kind for _, kind, _ in early] == ["service"]
        high_water = early[-1][0]
        release.set()
        app_batch.join(timeout=30)
    assert errors == []
    assert not app_batch.is_alive()
    app_kinds = tuple(consumer._kinds_of(APP_USAGE_EVENTS))
    [(app_id, _, guid)] = _segments(ledger, app_kinds)
    assert guid == "p1"
    # ... and its next read, above its high-water mark, never sees the app segment.
    assert app_id < high_water
    assert [s for s in _segments(ledger) if s[0] > high_water] == []


def test_c1_batches_of_two_consumers_do_not_wait_for_each_other(
    engine: Engine, ledger: Engine, clock: SimulatedClock, backend: db.Backend
) -> None:
    """C1 locks one consumer's cursor of one table, nothing more: while a batch of one
    consumer is open, another consumer's batch of the same table commits (on MariaDB its
    ledger transaction must not take gap locks: at REPEATABLE READ the first batch's lookup
    of resources the ledger does not hold yet locked the gap the second one inserts into)."""
    if backend is db.Backend.SQLITE:
        pytest.skip("SQLite has one writer at a time: the second batch waits at BEGIN")
    insert_app(engine, *_run("p1", 0, 5))
    for name in (NAME, "audit"):
        ledger_store.ensure_cursor(ledger, name, APP_USAGE_EVENTS, clock)
    errors: list[BaseException] = []
    with _held_after_segments(APP_USAGE_EVENTS) as (written, release):
        held, other = _second_while_first_is_held(
            written,
            _batch(engine, ledger, clock, APP_USAGE_EVENTS),
            _batch(engine, ledger, clock, APP_USAGE_EVENTS, "audit"),
            errors,
        )
        other.join(timeout=30)
        other_done = not other.is_alive()
        release.set()
        held.join(timeout=30)
        other.join(timeout=60)
    assert errors == []
    assert other_done, "the second consumer's batch waited for the first consumer's"
    for name in (NAME, "audit"):
        assert [(kind, guid) for _, kind, guid in _segments(ledger, name=name)] == [("app", "p1")]
