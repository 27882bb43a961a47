"""A backfill run (SPEC B3, B8, B10): batch size checked first, windows walked by id, the run
lock, and the result."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy.engine import URL, Engine

from tests.backfill.platform import (
    app_rows,
    forget_history,
    make_app,
    managed_instance,
    running_task,
    snapshot,
    spy_on_lock_wait,
    started_process,
)
from usageledger import db
from usageledger.backfill import (
    BACKFILL_LOCK,
    BackfillResult,
    Phase,
    backfill,
    backfill_batches,
)
from usageledger.errors import BadInputError, LockHeldError


def test_b3_bad_batch_size_is_rejected_before_any_work(engine: Engine) -> None:
    """B3: anything but an integer ≥ 1 is bad input, and nothing is written."""
    app = make_app(engine)
    started_process(engine, app)
    forget_history(engine)

    for bad in (0, -1, "abc", "5", 2.5, True, None):
        with pytest.raises(BadInputError, match="batch size"):
            backfill(engine, batch_size=bad)  # type: ignore[arg-type]

    assert snapshot(engine) == {}
    # The lock was never taken, so a good run goes straight ahead.
    assert backfill(engine).app.seeded == 1


def test_b3_unknown_kind_is_bad_input(engine: Engine) -> None:
    """B9: kinds are app, task and service."""
    with pytest.raises(BadInputError, match="unknown backfill kind"):
        backfill(engine, kinds=("app", "processes"))


def test_b3_batches_walk_each_table_by_id_in_windows(engine: Engine) -> None:
    """B3: each kind's seed walks its resource table by id, then its repair walks the baselines,
    in windows of at most batch_size ids, apps, then tasks, then services."""
    app = make_app(engine)
    for _ in range(5):
        started_process(engine, app)
    for name in "abc":
        running_task(engine, app, name)
    managed_instance(engine, app)
    forget_history(engine)

    with db.run_lock(engine, BACKFILL_LOCK, wait=False) as lock:
        reports = list(backfill_batches(engine, lock, batch_size=2))

    phases = [(r.kind, r.phase) for r in reports]
    assert [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p] == [
        (kind, phase) for kind in ("app", "task", "service") for phase in Phase
    ]
    # Seeds walk the resource tables (5 processes, 3 tasks, 1 instance) two ids at a time. The
    # repairs walk the baselines' ids, which MariaDB may allocate with gaps.
    assert [phases.count((kind, Phase.SEED)) for kind in ("app", "task", "service")] == [3, 2, 1]
    for report in reports:
        assert 0 < report.through_id - report.after_id <= 2
    seeds = [r for r in reports if (r.kind, r.phase) == ("app", Phase.SEED)]
    assert [r.after_id for r in seeds[1:]] == [r.through_id for r in seeds[:-1]]
    assert [(r.number, r.count) for r in seeds] == [(1, 3), (2, 3), (3, 3)]
    assert sum(r.inserted for r in reports if r.phase is Phase.SEED) == 5 + 3 + 1
    assert sum(r.inserted for r in reports if r.phase is Phase.REPAIR) == 0


def test_b10_result_counts_and_json_document(engine: Engine) -> None:
    """B10: seeded, repaired and batches per kind, plus elapsed_seconds, in B10's JSON shape."""
    app = make_app(engine)
    started_process(engine, app)
    started_process(engine, app)
    running_task(engine, app)
    forget_history(engine)

    result = backfill(engine, batch_size=1)

    assert isinstance(result, BackfillResult)
    document = result.to_json()
    assert list(document) == ["app", "task", "service", "elapsed_seconds"]
    assert document["app"] == {"seeded": 2, "repaired": 0, "batches": 4}
    assert document["task"] == {"seeded": 1, "repaired": 0, "batches": 2}
    assert document["service"] == {"seeded": 0, "repaired": 0, "batches": 0}
    assert document["elapsed_seconds"] >= result.app.elapsed_seconds > 0


def test_b8_second_backfill_fails_fast_or_waits_and_then_adds_nothing(
    engine: Engine, db_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B8: while one run holds the lock, another fails fast; with wait it asks for the lock and
    does not get it until the first has finished and released it, and then finds nothing left
    to do (B7)."""
    app = make_app(engine)
    for _ in range(4):
        started_process(engine, app)
    forget_history(engine)
    other = db.make_engine(db_url)
    waited: list[BackfillResult] = []
    second = threading.Thread(target=lambda: waited.append(backfill(other, wait_for_lock=True)))
    try:
        with db.run_lock(engine, BACKFILL_LOCK, wait=False) as lock:
            steps = backfill_batches(engine, lock, batch_size=1)
            assert next(steps).inserted == 1  # the first run is mid-way

            with pytest.raises(LockHeldError, match="another run holds the backfill lock"):
                backfill(other)

            waits = spy_on_lock_wait(monkeypatch, BACKFILL_LOCK)
            second.start()
            waits.assert_waiting()
            assert sum(r.inserted for r in steps) == 3
            assert not waits.returned.is_set(), "the second run got the lock before the release"
        second.join(60)
        assert not second.is_alive()
        assert waits.returned.is_set()
        assert waited[0].rows_added == 0
        assert len(app_rows(engine, "WAS_RUNNING")) == 4
    finally:
        if second.ident is not None:
            second.join(60)  # even after a failure: no run may outlive the test
        other.dispose()
