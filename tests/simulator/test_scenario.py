"""S1: a scenario is data — generated from a seed, written as JSON, read back exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from usageledger.errors import BadInputError
from usageledger.simulator.scenario import (
    Sizes,
    generate_scenario,
    load_scenario,
    scenario_from_json,
)


def test_s1_same_seed_same_scenario() -> None:
    """S1: generation draws from one seeded random in a fixed order."""
    assert generate_scenario(5) == generate_scenario(5)
    assert generate_scenario(5) != generate_scenario(6)


def test_s1_json_round_trip(tmp_path: Path) -> None:
    """S1: the JSON document reads back to the same scenario."""
    scenario = generate_scenario(3, sizes=Sizes(apps=2, processes=3, tasks=2))
    path = tmp_path / "s.json"
    path.write_text(scenario.dumps())
    assert load_scenario(path) == scenario
    assert json.loads(path.read_text())["schema_version"] == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema_version": 99}, "schema_version 99"),
        ({"strategy": "chaos"}, "unknown strategy"),
        ({"sizes": {"apps": -1}}, "size apps"),
        ({"mix": {"producers": 1, "wrong": 2}}, "unknown mix field"),
    ],
)
def test_s1_bad_scenario_is_bad_input(change: dict[str, object], message: str) -> None:
    """S1: a malformed scenario file is a one-line BadInputError naming the problem."""
    document = generate_scenario(1).to_json()
    document.update(change)
    with pytest.raises(BadInputError, match=message):
        scenario_from_json(document)


def test_s1_unreadable_scenario_file(tmp_path: Path) -> None:
    """S1: a missing or non-JSON file is bad input, not a traceback."""
    with pytest.raises(BadInputError, match="cannot read"):
        load_scenario(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(BadInputError, match="not JSON"):
        load_scenario(tmp_path / "bad.json")


def test_s2_generated_scenario_has_every_actor_kind() -> None:
    """S2: producers, cleanup (current and old), backfills, consumers including a late one."""
    scenario = generate_scenario(1)
    kinds = {a.kind for a in scenario.actors}
    assert kinds == {"producer", "cleanup", "old_cleanup", "backfill", "consumer"}
    assert any(a.name == "consumer-late" for a in scenario.actors)
    ops = {o.op for a in scenario.actors for o in a.operations}
    assert {"scale_process", "cancel_task", "update_service_instance", "start_staging"} <= ops
