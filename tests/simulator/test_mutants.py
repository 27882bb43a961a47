"""S8: each known-wrong variant, patched into the real code, is caught by the invariant it
must break. The mutants live in tests/simulator/mutants.py, never in production code."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.simulator import specs
from tests.simulator.conftest import Simulate
from tests.simulator.mutants import MUTANTS
from usageledger import db
from usageledger.simulator.scenario import Scenario

CASES: list[tuple[str, Callable[[], Scenario], str, bool]] = [
    # (mutant, scenario, invariant it must break, needs concurrent writers)
    ("reversed_deletion_order", specs.crash_between_passes, "I6", False),
    ("task_baselines_named_was_running", specs.legacy_tasks, "I4", False),
    ("no_repair", specs.backfill_vs_task_end, "I3", True),
    ("repair_deletes_baseline", specs.backfill_vs_task_end, "I3", True),
    ("seed_without_guard", specs.running_at_the_end, "I7", False),
    ("ungated_task_stop", specs.legacy_tasks, "I9", False),
    ("canceling_running_for_seed_only", specs.legacy_tasks, "I1", False),
    ("repair_without_its_locking_read", specs.repair_vs_restart, "I1", True),
    ("second_interval_on_baseline", specs.baseline_for_open_resource, "I2", False),
    # SQLite holds one writer at a time: the second backfill cannot begin while the first
    # waits inside its batch, so the overlap needs a server.
    ("lock_that_does_not_exclude", specs.two_backfills, "I8", True),
]


@pytest.mark.parametrize(
    ("mutant", "make", "invariant", "concurrent"), CASES, ids=[c[0] for c in CASES]
)
def test_s8_mutant_is_caught(
    mutant: str,
    make: Callable[[], Scenario],
    invariant: str,
    concurrent: bool,
    simulate: Simulate,
    backend: db.Backend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """S8: the checker reports the specific invariant the mutant breaks."""
    if concurrent and backend is db.Backend.SQLITE:
        pytest.skip("the race needs two writers at once; SQLite serializes them")
    scenario = make()
    assert simulate(scenario).report.verdict.value == "valid"  # the real code passes
    MUTANTS[mutant](monkeypatch)
    report = simulate(scenario).report
    assert invariant in report.broken(), [f.witness for f in report.findings]


def test_s8_naive_consumer_cursor_is_caught(simulate: Simulate, backend: db.Backend) -> None:
    """S8: the naive max-id cursor fails I1 and I10 under the id gap."""
    if backend is db.Backend.SQLITE:
        pytest.skip("SQLite commits ids in order: no gap for the naive cursor to skip")
    assert {"I1", "I10"} <= simulate(specs.id_gap("naive")).report.broken()


def test_s8_pairing_by_created_at_is_caught(simulate: Simulate, backend: db.Backend) -> None:
    """S8: a consumer that pairs events by created_at takes an ending stamped before the
    reseeded STARTED it follows (by id) as noise and bills forever (I3); the reference one is
    valid."""
    if backend is db.Backend.SQLITE:
        pytest.skip("the stop must hold its transaction while the reseed commits: two writers")
    assert "I3" in simulate(specs.created_at_out_of_id_order("created_at")).report.broken()
    assert simulate(specs.created_at_out_of_id_order()).report.verdict.value == "valid"


def test_s8_a_consumer_blind_to_resizes_is_caught_as_a_wrong_footprint(
    simulate: Simulate,
) -> None:
    """S6 I5 end to end: a consumer that ignores the scale of a running process bills its old
    size from the scale on; the checker reports a wrong footprint (I5), and the reference
    consumer on the same scenario is valid."""
    assert simulate(specs.scaled_process("resize_blind")).report.broken() == {"I5"}
    assert simulate(specs.scaled_process()).report.verdict.value == "valid"
