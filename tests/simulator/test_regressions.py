"""S7: every scenario in tests/regressions/ replays on each backend that can run it, and fails
exactly as recorded when its mutant is applied (or passes, for a fixed bug)."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest

from tests.simulator.conftest import Simulate
from tests.simulator.mutants import MUTANTS
from usageledger import db
from usageledger.simulator.scenario import (
    ActorSpec,
    Operation,
    Scenario,
    Sizes,
    generate_scenario,
)
from usageledger.simulator.shrink import Signature, load_regression, shrink

FOLDER = Path(__file__).resolve().parent.parent / "regressions"
FILES = sorted(FOLDER.glob("*.json"))


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_s7_regression_replays(
    path: Path, simulate: Simulate, backend: db.Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S7: a shrunk failing scenario still fails the same way (its mutant is still caught)."""
    regression = load_regression(path)
    if backend.value not in regression.backends:
        pytest.skip(f"{path.name} needs one of {', '.join(regression.backends)}")
    if regression.mutant is None:
        assert simulate(regression.scenario).report.verdict.value == "valid"
        return
    MUTANTS[regression.mutant](monkeypatch)
    report = simulate(regression.scenario).report
    assert set(regression.invariants) <= report.broken(), [f.witness for f in report.findings]


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
