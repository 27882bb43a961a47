"""Hand-written race specs (SIMULATOR.md) on real connections: the races the project exists
for happen, and the rules hold through them. Races that need two writers at once run only on
PostgreSQL and MariaDB; SQLite serializes writers, so it cannot express them."""

from __future__ import annotations

import pytest

from tests.simulator import specs
from tests.simulator.conftest import Simulate
from usageledger import db
from usageledger.simulator.checker import RowInfo
from usageledger.simulator.run import RunResult

NEEDS_CONCURRENT_WRITERS = (
    "SQLite runs one writer at a time: a transaction cannot hold an id while another commits"
)


def _final_rows_of(result: RunResult, label: str) -> tuple[str, list[RowInfo]]:
    """The guid of the resource `label` and its rows in the final table, by id."""
    guid = {label: g for g, label in result.truth.labels.items()}[label]
    return guid, sorted((r for r in result.final_rows if r.key == guid), key=lambda r: r.id)


def test_b4_backfill_seed_waits_for_a_stop_in_flight(
    simulate: Simulate, backend: db.Backend
) -> None:
    """B4/B5: the stop's STOPPED has its id when the seed batch reaches the process; the batch
    waits for the stop's row lock (a blocked lock), reads it stopped and seeds nothing, so no
    baseline follows the stop and the repair has nothing to do."""
    if backend is db.Backend.SQLITE:
        pytest.skip(NEEDS_CONCURRENT_WRITERS)
    result = simulate(specs.backfill_vs_stop())
    assert result.coverage["blocked_lock"] >= 1
    assert result.coverage["baseline_after_stop"] == 0
    assert result.coverage["repair_fired"] == 0
    assert result.report.verdict.value == "valid"


def test_b5_backfill_vs_task_end_race_happens_and_is_repaired(
    simulate: Simulate, backend: db.Backend
) -> None:
    """B5/P2/I3: the seed commits a task baseline between the stop's gate and its row lock; the
    task ends without a TASK_STOPPED, the consumer opens the baseline, and the repair appends
    the ending: the over-bill is a bounded, reported deviation."""
    if backend is db.Backend.SQLITE:
        pytest.skip(NEEDS_CONCURRENT_WRITERS)
    result = simulate(specs.backfill_vs_task_end())
    assert result.coverage["repair_fired"] >= 1
    assert result.report.verdict.value == "valid"


def test_b8_backfill_taking_the_lock_between_unlock_and_close_is_not_two_at_once(
    simulate: Simulate, backend: db.Backend
) -> None:
    """B8/I8: the first backfill's unlock frees the server lock, and its connection closes a
    step later; the second backfill takes the lock in between. That is one holder after the
    other: both run, and I8 holds."""
    if backend is db.Backend.SQLITE:
        pytest.skip("SQLite's run lock is a file lock, freed and closed in one step")
    result = simulate(
        specs.backfill_takes_the_lock_as_it_is_freed(backend is db.Backend.POSTGRESQL)
    )
    assert result.coverage["two_backfills_at_once"] == 0, "the second found the lock free"
    finished = [h.actor for h in result.history if h.kind == "op" and h.phase == "ok"]
    assert {"backfill-1", "backfill-2"} <= set(finished)
    assert result.report.verdict.value == "valid", [
        f.witness for f in result.report.invalid_findings()
    ]


def test_c2_naive_consumer_loses_an_interval_under_out_of_order_commits(
    simulate: Simulate, backend: db.Backend
) -> None:
    """C2/I1/I10: ids commit out of order; the naive max-id cursor loses the late row, the
    reference consumer waits at the gap and bills it."""
    if backend is db.Backend.SQLITE:
        pytest.skip(NEEDS_CONCURRENT_WRITERS)
    naive = simulate(specs.id_gap("naive"))
    assert naive.coverage["out_of_order_commit"] >= 1
    assert {"I1", "I10"} <= naive.report.broken()
    reference = simulate(specs.id_gap("reference"))
    assert reference.report.verdict.value == "valid"
    assert reference.coverage["consumer_waited_at_gap"] >= 1


def test_r7_cleanup_crash_between_passes_leaves_a_consistent_table(simulate: Simulate) -> None:
    """R7/I6: a cleanup that dies after pass 1 leaves no ending without its opening."""
    result = simulate(specs.crash_between_passes())
    assert result.coverage["crash_between_passes"] == 1
    assert result.report.verdict.value == "valid"


def test_b1_old_cleanup_in_a_rolling_deploy_then_backfill_restores_a_baseline(
    simulate: Simulate,
) -> None:
    """S2/I6: the old cleanup deletes a running app's start (reported as expected); a later
    backfill seeds a baseline, and a consumer that starts afterwards bills from it."""
    result = simulate(specs.rolling_deploy())
    assert result.report.of("I6").expected >= 1
    assert result.report.verdict.value == "valid"
    proc = next(g for g, label in result.truth.labels.items() if label == "proc-1")
    assert any(r.state == "WAS_RUNNING" and r.key == proc for r in result.observed)
    late = next(v for v in result.consumers if v.name == "consumer-2")
    assert any(s.guid == proc and s.start_is_lower_bound for s in late.ledger.segments)


def test_p2_old_cleanup_deleting_a_task_start_is_its_damage_not_an_invalid_bill(
    simulate: Simulate,
) -> None:
    """S2/P2/I3: the old cleanup deletes two running tasks' starts after a consumer read them.
    task-1 ends before a backfill restores its baseline: no TASK_STOPPED, and the open bill is
    reported as the old cleanup's damage (expected), not as invalid. task-2's baseline comes
    first, so its end writes its stop and its bill closes."""
    result = simulate(specs.old_cleanup_deletes_a_task_start())
    assert result.coverage["old_cleanup"] == 1
    assert result.report.verdict.value == "valid"
    guid = {label: g for g, label in result.truth.labels.items()}
    states = {(r.key, r.state) for r in result.observed}
    assert (guid["task-1"], "TASK_STOPPED") not in states
    assert (guid["task-2"], "TASK_WAS_RUNNING") in states
    assert (guid["task-2"], "TASK_STOPPED") in states
    lost = [f for f in result.report.findings if f.invariant == "I3" and f.guid == guid["task-1"]]
    assert [f.severity.value for f in lost] == ["expected"]
    assert "old cleanup" in lost[0].witness and "TASK_STOPPED" in lost[0].witness
    assert not [
        f for f in result.report.findings if f.invariant == "I3" and f.guid == guid["task-2"]
    ]


def test_p2_legacy_tasks_stop_with_evidence_only(simulate: Simulate) -> None:
    """P2/I9: tasks whose start was pruned get baselines; their ends write TASK_STOPPED, the
    task destroyed while PENDING writes none."""
    result = simulate(specs.legacy_tasks())
    assert result.report.verdict.value == "valid"
    stops = [r for r in result.observed if r.state == "TASK_STOPPED"]
    assert len(stops) == 2


def test_b9_purge_and_reseed_then_backfill_restores_baselines(simulate: Simulate) -> None:
    """S2/B9: the purge empties both tables and reseeds one STARTED per started process; the
    backfill restores the running task's and service's baselines. A task that ended between
    the two wrote no TASK_STOPPED (P2): its open bill is reported as the purge's damage
    (expected), and the verdict stays valid."""
    result = simulate(specs.purge_and_reseed())
    assert result.coverage["purge_and_reseed"] == 1
    assert result.report.verdict.value == "valid"
    guid = {label: g for g, label in result.truth.labels.items()}
    purge = next(c for c in result.cleanups if c.variant == "purge")
    assert {(r.table, r.id) for r in purge.before} == purge.deleted()
    reseeded = [r for r in purge.after if r.key == guid["proc-1"]]
    assert [(r.state, r.previous_state) for r in reseeded] == [("STARTED", "STARTED")]
    assert len(purge.after) == 1  # nothing for tasks or services: that is the backfill's job
    states = {(r.key, r.state) for r in result.observed}
    assert (guid["task-2"], "TASK_WAS_RUNNING") in states
    assert (guid["svc-1"], "WAS_RUNNING") in states
    assert (guid["task-2"], "TASK_STOPPED") in states
    assert (guid["task-1"], "TASK_WAS_RUNNING") not in states
    assert (guid["task-1"], "TASK_STOPPED") not in states
    lost = [f for f in result.report.findings if f.invariant == "I3" and f.guid == guid["task-1"]]
    assert [f.severity.value for f in lost] == ["expected"]
    assert "purge" in lost[0].witness and "TASK_STOPPED" in lost[0].witness
    assert result.report.of("I6").expected >= 1
    late = next(v for v in result.consumers if v.name == "consumer-2")
    assert all(s.start_is_lower_bound for s in late.ledger.segments)
    assert any(f.deviation == "purged before read" for f in result.report.findings)


def test_b5_repair_waits_for_a_restart_in_flight_and_appends_no_ending(
    simulate: Simulate, backend: db.Backend
) -> None:
    """B5/I1/I7: a stale baseline (it follows its process's STOPPED by id) is due for repair
    while the producer starts the process again. The backfill waits for the start's row lock
    and then reads the process running, so it appends no ending: the new run stays open for
    the consumer, which bills it from the real start on. An ending appended from the snapshot
    would close a running process (I1, I7)."""
    if backend is db.Backend.SQLITE:
        pytest.skip(NEEDS_CONCURRENT_WRITERS)
    result = simulate(specs.repair_vs_restart())
    guid, rows = _final_rows_of(result, "proc-1")
    assert [(r.state, r.previous_state) for r in rows] == [
        ("STOPPED", "STARTED"),
        ("WAS_RUNNING", None),
        ("STARTED", "STOPPED"),
    ]
    assert result.coverage["blocked_lock"] >= 1, "the backfill did not meet the start's lock"
    assert result.coverage["repair_fired"] == 0
    assert guid in result.truth.running_at_end
    assert result.report.verdict.value == "valid", [
        f.witness for f in result.report.findings if f.severity.value == "invalid"
    ]
    (view,) = result.consumers
    (open_segment,) = [s for s in view.ledger.segments if s.guid == guid and s.end is None]
    assert open_segment.opened_by_id in {rows[1].id, rows[2].id}


def test_s2_purge_reseeding_a_stopping_process_is_its_damage_not_an_invalid_run(
    simulate: Simulate, backend: db.Backend
) -> None:
    """S2/B5/I3/I7: a stop has its STOPPED's id while the purge runs; the purge reads the
    process as STARTED and reseeds a STARTED above that STOPPED. The process stopped, yet on
    record it runs again, and the repair closes baselines only: the open bill and the open run
    are reported as the purge's damage (expected), naming both rows, and the run stays valid."""
    if backend is db.Backend.SQLITE:
        pytest.skip(NEEDS_CONCURRENT_WRITERS)
    result = simulate(specs.purge_reseeds_a_stopping_process())
    guid, rows = _final_rows_of(result, "proc-1")
    assert [(r.state, r.previous_state) for r in rows] == [
        ("STOPPED", "STARTED"),
        ("STARTED", "STARTED"),
    ], "the race did not happen: the purge's STARTED must follow the stop's STOPPED"
    assert guid not in result.truth.running_at_end
    stop, reseed = rows
    assert result.report.verdict.value == "valid", [
        f.witness for f in result.report.findings if f.severity.value == "invalid"
    ]
    damage = [f for f in result.report.findings if f.guid == guid and f.invariant in ("I3", "I7")]
    assert sorted((f.invariant, f.severity.value) for f in damage) == [
        ("I3", "expected"),
        ("I7", "expected"),
    ]
    for finding in damage:
        assert f"#{reseed.id} STARTED" in finding.witness
        assert f"#{stop.id} STOPPED" in finding.witness


def test_s9_late_row_below_cursor_counts_the_race_a_correct_consumer_survives(
    simulate: Simulate, backend: db.Backend
) -> None:
    """S9/C2: a row that commits inside the gap the reference consumer waits at counts as the
    race happening (late row below a cursor), while the run stays valid (no I10)."""
    if backend is db.Backend.SQLITE:
        pytest.skip(NEEDS_CONCURRENT_WRITERS)
    result = simulate(specs.id_gap("reference"))
    assert result.report.verdict.value == "valid"
    assert result.coverage["late_row_below_cursor"] >= 1
