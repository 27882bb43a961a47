"""The P2 task stop gate together with backfill baselines (SPEC P2, B1, B5)."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from tests.backfill.platform import app_rows, forget_history, make_app, running_task
from usageledger import producer
from usageledger.backfill import backfill


def test_p2_b1_task_seeded_while_running_then_succeeding_gets_exactly_one_stop(
    engine: Engine,
) -> None:
    """P2, B1: the baseline is start evidence, so the producer writes one TASK_STOPPED; the
    repair then has nothing to add."""
    app = make_app(engine)
    task = running_task(engine, app)
    forget_history(engine)
    assert backfill(engine).task.seeded == 1

    assert producer.succeed_task(engine, task) is True
    assert producer.destroy_task(engine, task) is False

    again = backfill(engine)
    assert again.rows_added == 0
    states = [r["state"] for r in app_rows(engine) if r["task_guid"] == task]
    assert states == ["TASK_WAS_RUNNING", "TASK_STOPPED"]


def test_p2_b1_task_destroyed_while_pending_gets_no_baseline_and_no_stop(engine: Engine) -> None:
    """P2, B1: a pending task is not running: no baseline, and its destroy writes nothing."""
    app = make_app(engine)
    task = producer.create_task(engine, app.guid, "later")
    assert backfill(engine).task.seeded == 0

    assert producer.destroy_task(engine, task) is False

    assert backfill(engine).rows_added == 0
    assert [r for r in app_rows(engine) if r["task_guid"] == task] == []


def test_p2_b1_b5_task_that_ended_without_evidence_gets_no_stop_baseline_or_ending(
    engine: Engine,
) -> None:
    """P2, B1, B5: a task that stopped before any evidence existed writes no stop (P2); it no
    longer runs, so it gets no baseline (B1), and without a baseline there is nothing to repair
    (B5): the backfill adds nothing for it."""
    app = make_app(engine)
    task = running_task(engine, app)
    forget_history(engine)
    assert producer.fail_task(engine, task) is False

    assert backfill(engine).rows_added == 0
    assert app_rows(engine) == []
