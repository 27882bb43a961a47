"""S7: every scenario in tests/regressions/ replays on each backend that can run it: valid on the
real code, and failing exactly as recorded when its mutant is applied (S8)."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest

from tests.simulator.conftest import Simulate
from tests.simulator.mutants import MUTANTS
from usageledger import db
from usageledger.simulator.scenario import (
    TICK,
    ActorSpec,
    FaultSwitches,
    Operation,
    Scenario,
    ScheduleEntry,
    Sizes,
    generate_scenario,
)
from usageledger.simulator.scheduler import FREE_RUN, fingerprint
from usageledger.simulator.shrink import Signature, load_regression, shrink, trim_schedule

FOLDER = Path(__file__).resolve().parent.parent / "regressions"
FILES = sorted(FOLDER.glob("*.json"))


def test_s7_regression_folder_holds_failures_to_replay() -> None:
    """S7: the regression suite has files to replay, and each one says how it failed (at least
    one broken invariant), so that no replay below can pass for want of an expectation."""
    assert FILES, f"no regression files in {FOLDER}"
    for path in FILES:
        regression = load_regression(path)
        assert regression.invariants, f"{path.name} expects no broken invariant"
        assert regression.backends, f"{path.name} names no backend"
        assert regression.scenario.actors, f"{path.name} has no actors"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_s7_regression_replays(
    path: Path, simulate: Simulate, backend: db.Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S7, S8: a shrunk failing scenario is valid on the real code and, with its mutant, still
    fails with the recorded signature: the same broken invariants and, where the file records
    them, the same kinds of resource (`expect` in the file, as `shrink` writes it)."""
    regression = load_regression(path)
    assert regression.invariants, f"{path.name} expects no broken invariant"
    if backend.value not in regression.backends:
        pytest.skip(f"{path.name} needs one of {', '.join(regression.backends)}")
    real = simulate(regression.scenario).report
    assert real.verdict.value == "valid", [f.witness for f in real.invalid_findings()]
    if regression.mutant is None:  # a fixed bug: the real code passing is the whole check
        return
    MUTANTS[regression.mutant](monkeypatch)
    report = simulate(regression.scenario).report
    found = Signature.of(report)
    witnesses = [f.witness for f in report.invalid_findings()]
    assert found.invariants == tuple(sorted(set(regression.invariants))), witnesses
    if "kinds" in json.loads(path.read_text()).get("expect", {}):
        assert found.kinds == tuple(sorted(set(regression.kinds))), witnesses


def test_s7_shrink_keeps_only_what_the_failure_needs() -> None:
    """S7: delta debugging drops every actor and operation the failure does not need."""
    base = generate_scenario(4, sizes=Sizes(apps=2, processes=4, tasks=3))
    culprit = Operation(at=10, op="stop_process", target="proc-2")
    producer = base.actors[0]
    noisy = ActorSpec(
        producer.name, producer.kind, (*producer.operations[:3], culprit, *producer.operations[3:])
    )
    start = attrs.evolve(base, actors=(noisy, *base.actors[1:]))

    def check(candidate: Scenario) -> Signature:
        found = any(culprit in a.operations for a in candidate.actors)
        return Signature(("I1",), ("app",)) if found else Signature((), ())

    result = shrink(start, check, max_runs=300)
    assert [op for a in result.scenario.actors for op in a.operations] == [culprit]
    assert result.signature.invariants == ("I1",)


def _crashing_scenario() -> Scenario:
    return generate_scenario(
        22,
        sizes=Sizes(apps=2, processes=3, tasks=2, service_instances=1, legacy=1),
        span_days=90,
        faults=FaultSwitches(kill_connection=False),
    )


def _crashes(scenario: Scenario) -> tuple[int, int]:
    ops = [op for a in scenario.actors for op in a.operations]
    return (
        sum(op.variant == "crash_between_passes" for op in ops),
        sum(op.crash_after_batches is not None for op in ops),
    )


def test_s7_fault_pass_rewrites_the_operations_that_crash() -> None:
    """S7/S4: switching a crash fault off rewrites the operations that carry it (a crashing
    cleanup becomes the current one, a crashing backfill runs to its end); a failure that
    needs the crash keeps it, one that does not loses every crashing operation."""
    start = _crashing_scenario()
    assert all(_crashes(start)), "the seed must plan both kinds of crash"

    def needs_crash(candidate: Scenario) -> Signature:
        return Signature(("I6",), ("app",)) if _crashes(candidate)[0] else Signature((), ())

    kept = shrink(start, needs_crash, max_runs=300).scenario
    assert _crashes(kept)[0] >= 1 and kept.faults.crash_between_passes

    def always(candidate: Scenario) -> Signature:
        return Signature(("I1",), ("app",))

    gone = shrink(start, always, max_runs=300).scenario
    assert _crashes(gone) == (0, 0)
    assert not gone.faults.crash_between_passes and not gone.faults.crash_mid_backfill


def test_s7_trimmed_schedule_drops_removed_actors_and_operations() -> None:
    """S7: a candidate replays its recorded schedule without the removed actor's steps or the
    removed operation's steps (a tick whose steps all went goes too), then runs seeded."""
    poll, sql, commit = fingerprint("op", "poll"), "aaaa0001", "aaaa0002"
    stop = fingerprint("op", "stop_process")
    schedule = tuple(
        ScheduleEntry(*e)
        for e in (
            [TICK],
            ["producer-1", stop],
            ["producer-1", sql],
            [TICK],
            ["consumer-1", poll],
            ["consumer-1", sql],
            [TICK],
            ["consumer-1", poll],
            ["!kill:consumer-1"],
            ["producer-1", commit],
        )
    )
    without_consumer = trim_schedule(schedule, frozenset({"consumer-1"}))
    assert [e.choice for e in without_consumer] == [
        TICK,
        "producer-1",
        "producer-1",
        TICK,  # the second tick's steps all went; the third still leads to a kept step
        "producer-1",
        FREE_RUN,
    ]
    without_first_poll = trim_schedule(schedule, dropped_ops={"consumer-1": frozenset({0})})
    assert [e.choice for e in without_first_poll] == [
        TICK,
        "producer-1",
        "producer-1",
        TICK,
        "consumer-1",
        "!kill:consumer-1",
        "producer-1",
        FREE_RUN,
    ]
    cut = trim_schedule(schedule, cut={"consumer-1": 1})
    assert [e.choice for e in cut][-2:] == ["consumer-1", FREE_RUN]
