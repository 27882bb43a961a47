"""Simulator fixtures: run a scenario on this test's database, with the test-only consumers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from tests.simulator.wrong_consumers import WRONG_CONSUMERS
from usageledger.simulator.consumers import ledger_template
from usageledger.simulator.run import RunResult, run_scenario, simulation_engine
from usageledger.simulator.scenario import Scenario

Simulate = Callable[[Scenario], RunResult]


@pytest.fixture
def simulate(db_url: URL, tmp_path: Path) -> Iterator[Simulate]:
    """Run a scenario on this test's database (emptied first), naive consumers available.
    Runs of one test share an engine (its compiled statements) and a migrated empty ledger."""
    counter = iter(range(100_000))
    template = ledger_template(tmp_path / "template")
    engine = simulation_engine(db_url)

    def run(scenario: Scenario) -> RunResult:
        return run_scenario(
            scenario,
            db_url,
            workdir=tmp_path / f"run{next(counter)}",
            consumer_factories=WRONG_CONSUMERS,
            ledger_template=template,
            engine=engine,
        )

    yield run
    engine.dispose()
