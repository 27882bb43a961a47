"""Write tests/regressions/*.json by shrinking mutant failures (S7). Run by hand:

    python -m tests.simulator.regenerate_regressions [SQLITE_URL]

Each file records the mutant, the signature it failed with and the shrunk scenario; the suite
(test_regressions.py) replays it on every backend and checks the mutant is still caught."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest

from tests.simulator import specs
from tests.simulator.mutants import MUTANTS
from usageledger.simulator.run import run_scenario, scratch_database
from usageledger.simulator.scenario import FaultSwitches, Scenario, Sizes, generate_scenario
from usageledger.simulator.shrink import Signature, regression_document, shrink, write_regression

FOLDER = Path(__file__).resolve().parent.parent / "regressions"

SEEDED: list[tuple[str, Scenario, str]] = [
    (
        "seed_without_guard",
        generate_scenario(21, sizes=Sizes(apps=3, processes=4, tasks=3, legacy=2), span_days=60),
        "a backfill without the B2 guard seeds a second baseline (I7)",
    ),
    (
        "reversed_deletion_order",
        generate_scenario(
            22,
            sizes=Sizes(apps=3, processes=5, tasks=4, service_instances=2, legacy=0),
            span_days=90,
            faults=FaultSwitches(kill_connection=False, crash_between_passes=True),
        ),
        "pass 2 before pass 1, then a crash between them, orphans an opening (I6)",
    ),
    (
        "ungated_task_stop",
        specs.legacy_tasks(),
        "TASK_STOPPED written for a task destroyed while PENDING (I9)",
    ),
]


def main(server: str) -> None:
    for mutant, scenario, why in SEEDED:
        patch = pytest.MonkeyPatch()
        MUTANTS[mutant](patch)
        try:
            with tempfile.TemporaryDirectory() as work:

                def check(candidate: Scenario, work: str = work) -> Signature:
                    with scratch_database(server) as url:
                        result = run_scenario(candidate, url, workdir=Path(work))
                    return Signature.of(result.report)

                result = shrink(scenario, check, max_runs=60)
        finally:
            patch.undo()
        document = regression_document(
            result,
            backend="sqlite",
            mutant=mutant,
            why=why,
            backends=("sqlite", "postgresql", "mariadb"),
        )
        path = write_regression(document, FOLDER / f"{mutant}.json")
        before = scenario.operation_count
        print(
            f"{path.name}: {before} -> {result.scenario.operation_count} operations, "
            f"{result.runs} runs, fails {result.signature.invariants}"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "sqlite:///regressions-work.db")
