"""Differential property test: the database cleanup keeps exactly what the pure-Python model of
R5–R7 keeps, on every backend, for random histories with created_at out of id order, for
tasks sometimes a NULL key (R9), and legacy-shaped keys ('' and case or space variants)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from tests.conftest import examples
from tests.retention.history import NOW, Event, clock, load, remaining_ids
from tests.retention.model import kept_after_cleanup, safety_violations
from usageledger.lifecycles import APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS, opening_states
from usageledger.retention import BatchProgress, cleanup
from usageledger.retention import run as retention_run

# Keys by state, the common ones repeated (more collisions). Besides them: '' (a legacy row's),
# keys that differ from p1/t1/s1 only in case or a trailing space (a resource of their own,
# on every backend), and a state no lifecycle has.
APP_STATES: dict[str, tuple[str | None, ...]] = {
    "STARTED": ("p1", "p1", "p1", "p2", "P1", ""),
    "WAS_RUNNING": ("p1", "p1", "p2", ""),
    "STOPPED": ("p1", "p1", "p2", "p1 ", ""),
    # None: a legacy task row without task_guid (NULL pairs with nothing, R5, R9).
    "TASK_STARTED": ("t1", "t2", None, "T1"),
    "TASK_WAS_RUNNING": ("t1", "t2", None, ""),
    "TASK_STOPPED": ("t1", "t2", None, "T1", ""),
    "STAGING_STARTED": ("b1",),
    "STAGING_STOPPED": ("b1",),
    "BUILDPACK_SET": ("b1",),
    "MYSTERY": ("p1",),
}
SERVICE_STATES: dict[str, tuple[str | None, ...]] = {
    "CREATED": ("s1", "s1", "s2", "S1"),
    "UPDATED": ("s1", "s1", "s2", ""),
    "WAS_RUNNING": ("s1", "s2", "s1 "),
    "DELETED": ("s1", "s1", "s2", "S1", ""),
}


class Interrupted(Exception):
    """Stands for Ctrl-C or a crash between two batches."""


@st.composite
def histories(draw: st.DrawFn) -> tuple[str, list[Event], int]:
    table = draw(st.sampled_from([APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS]))
    states = APP_STATES if table == APP_USAGE_EVENTS else SERVICE_STATES
    openings = sorted(opening_states(table))  # drawn twice as often: longer runs
    cutoff_days = draw(st.integers(min_value=0, max_value=8))
    # Either time follows id over ~10 days with jitter of up to a few days either way, or each
    # row is old or fresh at random: both put rows near the cutoff out of id order.
    shuffled = draw(st.booleans())
    jitter = draw(st.integers(min_value=0, max_value=3))
    length = draw(st.integers(min_value=0, max_value=30))
    events: list[Event] = []
    for i in range(length):
        state = draw(st.sampled_from(sorted(states) + sorted(openings)))
        key = draw(st.sampled_from(states[state]))
        days: float
        if shuffled:
            days = cutoff_days + draw(st.sampled_from([-1, 1, 2]))
        else:
            days = (length - i) * 10 / max(length, 1)
            days += draw(st.integers(min_value=-jitter, max_value=jitter))
        hours = max(0.0, days) * 24 + draw(st.integers(min_value=0, max_value=3))
        events.append(Event(state, key, NOW - timedelta(hours=hours)))
    return table, events, cutoff_days


def _interrupted_history() -> tuple[str, list[Event], int]:
    """Old rows with three superseded openings (pass 1) and four other old rows (pass 2), then
    one fresh row: with one id a batch, an interrupt after the second batch stops pass 1, or
    R3's single pass, after it committed a batch."""
    old, fresh = NOW - timedelta(days=6), NOW - timedelta(days=1)
    rows = [
        ("STARTED", "p1"),
        ("STOPPED", "p1"),
        ("STARTED", "p2"),
        ("STARTED", "p2"),
        ("TASK_STARTED", "t1"),
        ("TASK_STOPPED", "t1"),
        ("STAGING_STARTED", "b1"),
        ("BUILDPACK_SET", "b1"),
    ]
    events = [Event(state, key, old) for state, key in rows]
    return APP_USAGE_EVENTS, [*events, Event("STARTED", "p3", fresh)], 4


@settings(
    max_examples=examples(50),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    history=histories(),
    batch_size=st.integers(min_value=1, max_value=4),
    keep_running=st.sampled_from([True, True, False]),
    keep_one=st.booleans(),
    interrupt_after=st.none() | st.integers(min_value=1, max_value=3),
    chunk_rows=st.integers(min_value=1, max_value=8),
)
# Drawn interrupts may fall after the last batch; these two always stop a pass (R7, R8).
@example(
    history=_interrupted_history(),
    batch_size=1,
    keep_running=True,
    keep_one=True,
    interrupt_after=2,
    chunk_rows=3,
)
@example(
    history=_interrupted_history(),
    batch_size=1,
    keep_running=False,
    keep_one=True,
    interrupt_after=2,
    chunk_rows=3,
)
def test_r5_r7_cleanup_matches_model_even_when_interrupted(
    engine: Engine,
    history: tuple[str, list[Event], int],
    batch_size: int,
    keep_running: bool,
    keep_one: bool,
    interrupt_after: int | None,
    chunk_rows: int,
) -> None:
    """R5–R7, R2, R3, R10: kept rows equal the model's; an interrupted run keeps every batch it
    reported (R8: each batch its own transaction), stays safe (R7) and the next run finishes
    it; a second run deletes nothing. Small chunks make the walk's decisions cross chunk
    boundaries (R11)."""
    with mock.patch.object(retention_run, "WALK_CHUNK_ROWS", chunk_rows):
        _check_against_model(engine, history, batch_size, keep_running, keep_one, interrupt_after)


def _check_against_model(
    engine: Engine,
    history: tuple[str, list[Event], int],
    batch_size: int,
    keep_running: bool,
    keep_one: bool,
    interrupt_after: int | None,
) -> None:
    table, events, cutoff_days = history
    stored = load(engine, table, events)
    cutoff = NOW - timedelta(days=cutoff_days)
    options: dict[str, Any] = {
        "keep_running_records": keep_running,
        "keep_at_least_one_record": keep_one,
    }

    def stop_after_some_batches(progress: BatchProgress) -> None:
        seen.append(progress)
        if interrupt_after is not None and len(seen) >= interrupt_after:
            raise Interrupted

    seen: list[BatchProgress] = []
    try:
        cleanup(
            engine,
            table,
            cutoff_age_in_days=cutoff_days,
            batch_size=batch_size,
            clock=clock(),
            on_batch=stop_after_some_batches,
            **options,
        )
    except Interrupted:
        after_interrupt = remaining_ids(engine, table)
        # R8: every batch reported before the interrupt committed on its own.
        assert len(stored) - len(after_interrupt) == sum(p.deleted_in_batch for p in seen) > 0
        if keep_running:
            assert safety_violations(stored, table, after_interrupt) == []
        cleanup(
            engine,
            table,
            cutoff_age_in_days=cutoff_days,
            batch_size=batch_size,
            clock=clock(),
            **options,
        )
    remaining = remaining_ids(engine, table)
    assert remaining == kept_after_cleanup(stored, table, cutoff, **options)
    if keep_running:
        assert safety_violations(stored, table, remaining) == []
    again = cleanup(
        engine,
        table,
        cutoff_age_in_days=cutoff_days,
        batch_size=batch_size,
        clock=clock(),
        **options,
    )
    assert again.deleted == 0
