"""What the cleanup holds in memory per id (SPEC R8, R11; docs/retention.md, "Cost").

No database work: the walk is fed rows as fresh objects, as a driver hands them over, and the
passes run on a plan with the batch delete replaced by a counter. tracemalloc counts Python's
own allocations, so the figures are exact and the same on every run.
"""

from __future__ import annotations

import itertools
import random
import tracemalloc
from array import array
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from unittest import mock

import pytest
from sqlalchemy.engine import Connection

from tests.retention.history import CUTOFF
from usageledger import db
from usageledger.lifecycles import APP_USAGE_EVENTS, lifecycles_of
from usageledger.retention import NON_OPENINGS, SUPERSEDED_OPENINGS
from usageledger.retention import run as retention_run
from usageledger.retention.decision import NO_LIFECYCLE
from usageledger.schema import EVENT_TABLES

IDS = 200_000


def peak_bytes(action: Callable[[], object]) -> int:
    """Bytes allocated at the peak of `action`, above what existed before it."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        action()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def scaled_processes(rows: int, chunk_rows: int = 1000) -> Iterator[list[tuple[Any, ...]]]:
    """Chunks of old rows (id, state, key, old), every object made as the chunk is read: 500
    processes each scaled over and over, a STOPPED now and then (about 95 % of the old
    openings are prunable, R5)."""
    rng = random.Random(5)
    for first in range(1, rows + 1, chunk_rows):
        chunk: list[tuple[Any, ...]] = []
        for row_id in range(first, min(first + chunk_rows, rows + 1)):
            state = "STOPPED" if rng.random() < 0.02 else "STARTED"
            chunk.append((row_id, state, f"process-{rng.randrange(500)}", 1))
        yield chunk


class _Bounds:
    """Stands for the connection of `_plan`: it answers the newest id and the newest old id;
    the rows themselves come from the patched `db.stream_rows`."""

    def __init__(self, *answers: int) -> None:
        self.answers = list(answers)

    def execute(self, query: object) -> _Bounds:
        return self

    def scalar(self) -> int:
        return self.answers.pop(0)


def test_r11_decision_keeps_about_nine_bytes_per_old_row() -> None:
    """R11: the decision keeps ids only, 8 bytes each in arrays plus a byte of mark per old
    opening, never a Python int per row (about 40 bytes each); the plan it returns holds the
    prunable ids in the same arrays, squeezed in place."""
    table = EVENT_TABLES[APP_USAGE_EVENTS]
    lifecycles = lifecycles_of(APP_USAGE_EVENTS)
    plans: list[retention_run.CleanupPlan] = []

    def decide() -> None:
        with mock.patch.object(db, "stream_rows", lambda *_: scaled_processes(IDS)):
            bounds: Any = _Bounds(IDS + 1, IDS)
            plans.append(retention_run._plan(bounds, table, lifecycles, CUTOFF, True))

    per_row = peak_bytes(decide) / IDS
    assert plans[0].planned_openings > IDS * 0.9
    assert per_row < 14, f"{per_row:.1f} bytes per old row"


def planned_ids(count: int) -> tuple[dict[str, array[int]], dict[str, array[int]]]:
    """Ids 1..count spread over pass 1's and pass 2's buckets, ascending in each."""
    rng = random.Random(9)
    openings: dict[str, array[int]] = {"app": array("q"), "task": array("q")}
    non_openings: dict[str, array[int]] = {
        "app": array("q"),
        "task": array("q"),
        NO_LIFECYCLE: array("q"),
    }
    for row_id in range(1, count + 1):
        if rng.random() < 0.5:
            openings[rng.choice(("app", "task"))].append(row_id)
        else:
            non_openings[rng.choice(("app", "task", NO_LIFECYCLE))].append(row_id)
    return openings, non_openings


@pytest.mark.parametrize("pass_name", [SUPERSEDED_OPENINGS, NON_OPENINGS])
def test_r8_passes_hold_one_batch_of_ids_not_a_copy_of_the_plan(pass_name: str) -> None:
    """R8, R11: a pass cuts its batches (all buckets together, in id order, batch_size at most)
    out of the plan's arrays; it never expands every id of the pass into Python ints."""
    openings, non_openings = planned_ids(IDS)
    plan = retention_run.CleanupPlan(
        table=EVENT_TABLES[APP_USAGE_EVENTS],
        cutoff=CUTOFF,
        newest_id=IDS + 1,
        upper_id=IDS,
        prunable_openings=openings,
        kept_endings=frozenset(),
        non_openings=non_openings,
    )
    if pass_name == SUPERSEDED_OPENINGS:
        prune, planned = retention_run.prune_superseded_openings, plan.planned_openings
    else:
        prune, planned = retention_run.prune_non_openings, plan.planned_non_openings
    batches: list[tuple[int, int, int]] = []

    def counted(conn: Connection, table: Any, groups: Mapping[str, list[int]]) -> dict[str, int]:
        ids = [row_id for group in groups.values() for row_id in group]
        batches.append((len(ids), min(ids), max(ids)))
        return {bucket: len(group) for bucket, group in groups.items()}

    engine = db.make_engine("sqlite://")
    try:
        with mock.patch.object(retention_run, "_delete_batch", counted):
            per_id = peak_bytes(lambda: prune(engine, plan, batch_size=1000)) / planned
    finally:
        engine.dispose()
    assert per_id < 2, f"{per_id:.1f} bytes per id"
    assert sum(size for size, _, _ in batches) == planned
    assert all(size == 1000 for size, _, _ in batches[:-1])
    assert all(a[2] < b[1] for a, b in itertools.pairwise(batches))  # in id order
