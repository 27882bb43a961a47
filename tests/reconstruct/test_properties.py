"""Properties of the consumer over random histories: replay determinism (C12), kill and restart
(C1), and segments of one resource never overlapping (C7, C9)."""

from __future__ import annotations

import contextlib
import itertools
from collections import defaultdict
from datetime import timedelta
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from tests.conftest import examples
from tests.reconstruct.histories import (
    app_events,
    app_table_rows,
    insert_app,
    insert_service,
    service_events,
    service_table_rows,
)
from usageledger import db
from usageledger.clock import SimulatedClock
from usageledger.reconstruct import consumer, ledger_store
from usageledger.reconstruct.billing import Ledger, fold
from usageledger.reconstruct.source import read_all_events
from usageledger.schema import app_usage_events, ledger_metadata, service_usage_events

NO_GRACE = timedelta(0)


class Killed(Exception):
    """The consumer process died mid-batch (before its commit)."""


def assert_no_overlap(ledger: Ledger) -> None:
    by_resource = defaultdict(list)
    for segment in ledger.segments:
        by_resource[(segment.kind, segment.guid)].append(segment)
    for segments in by_resource.values():
        segments.sort(key=lambda s: (s.start, s.opened_by_id))
        for earlier, later in itertools.pairwise(segments):
            assert earlier.end is not None, f"an open segment is followed by another: {segments}"
            assert earlier.end <= later.start, f"overlap: {earlier} and {later}"
        assert sum(1 for s in segments if s.is_open) <= 1


@settings(max_examples=examples(100), deadline=None)
@given(apps=app_table_rows(max_size=40), services=service_table_rows(max_size=20))
def test_c7_c12_fold_is_deterministic_and_never_overlaps(
    apps: list[dict[str, Any]], services: list[dict[str, Any]]
) -> None:
    """C12: folding the same events twice gives equal ledgers; C7/C9: one resource's segments
    never overlap and at most one is open."""
    events = app_events(*apps) + service_events(*services)
    first = fold(events)
    assert fold(list(reversed(events))) == first
    assert_no_overlap(first)


@settings(
    max_examples=examples(12),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    apps=app_table_rows(max_size=25),
    services=service_table_rows(max_size=10),
    batch_size=st.integers(2, 6),
    kills=st.lists(st.integers(1, 8), max_size=3),
)
def test_c1_c12_killed_and_restarted_consumer_ends_with_the_same_ledger(
    engine: Engine,
    ledger: Engine,
    clock: SimulatedClock,
    apps: list[dict[str, Any]],
    services: list[dict[str, Any]],
    batch_size: int,
    kills: list[int],
) -> None:
    """C1, C12: a consumer killed before the commit of random batches and restarted ends with
    the same ledger as an uninterrupted one, which equals the pure fold of the rows."""
    db.truncate_tables(
        engine, [app_usage_events, service_usage_events, *ledger_metadata.sorted_tables]
    )
    insert_app(engine, *apps)
    insert_service(engine, *services)
    consumer.consume(
        engine, ledger, consumer="steady", clock=clock, grace=NO_GRACE, batch_size=batch_size
    )
    real_write = ledger_store.write_cursor
    for kill_at in kills:
        calls = 0

        def dying_write(*args: Any, kill_at: int = kill_at, **kwargs: Any) -> None:
            nonlocal calls
            calls += 1
            if calls == kill_at:
                raise Killed
            real_write(*args, **kwargs)

        with (
            mock.patch.object(ledger_store, "write_cursor", side_effect=dying_write),
            contextlib.suppress(Killed),
        ):
            consumer.consume(
                engine,
                ledger,
                consumer="killed",
                clock=clock,
                grace=NO_GRACE,
                batch_size=batch_size,
            )
    consumer.consume(
        engine, ledger, consumer="killed", clock=clock, grace=NO_GRACE, batch_size=batch_size
    )
    with db.transaction(ledger, read_only=True) as conn:
        steady = ledger_store.read_ledger(conn, "steady")
        killed = ledger_store.read_ledger(conn, "killed")
    with db.transaction(engine, read_only=True) as conn:
        expected = fold(list(read_all_events(conn)))
    assert killed.canonical() == steady.canonical() == expected.canonical()
    assert_no_overlap(killed)
