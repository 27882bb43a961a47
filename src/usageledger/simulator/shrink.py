"""Shrinking (SPEC S7): reduce a failing scenario to a small one that fails the same way, and
write it as a regression file the test suite replays.

Delta debugging in passes over the scenario as data: drop whole actors, then halves, quarters …
of each actor's operations, then single operations, then switch faults off. Every candidate runs
afresh (seeded, without the recorded schedule) and is kept only if it fails with the same
signature: the same broken invariants and the same kinds of resources in the invalid findings.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from usageledger.simulator.checker import CheckReport
from usageledger.simulator.scenario import (
    PRODUCER,
    ActorSpec,
    FaultSwitches,
    Scenario,
    scenario_from_json,
)

log = logging.getLogger(__name__)

REGRESSION_SCHEMA_VERSION = 1


@attrs.frozen
class Signature:
    """How a run fails: which invariants broke, for which kinds of resource."""

    invariants: tuple[str, ...]
    kinds: tuple[str, ...]

    @classmethod
    def of(cls, report: CheckReport) -> Signature:
        invalid = report.invalid_findings()
        return cls(
            invariants=tuple(sorted({f.invariant for f in invalid})),
            kinds=tuple(sorted({f.kind for f in invalid if f.kind is not None})),
        )

    @property
    def fails(self) -> bool:
        return bool(self.invariants)


Check = Callable[[Scenario], Signature]
"""Runs a candidate scenario on a fresh database and says how it failed."""


@attrs.frozen
class ShrinkResult:
    scenario: Scenario
    signature: Signature
    runs: int


def _with_actors(scenario: Scenario, actors: list[ActorSpec]) -> Scenario:
    return attrs.evolve(scenario, actors=tuple(actors), schedule=())


def shrink(scenario: Scenario, check: Check, *, max_runs: int = 80) -> ShrinkResult:
    """The smallest scenario found that fails like `scenario` (which must fail)."""
    target = check(scenario.without_schedule())
    runs = 1
    if not target.fails:
        raise ValueError("the scenario does not fail without its recorded schedule")
    best = scenario.without_schedule()

    def same(candidate: Scenario) -> bool:
        nonlocal runs
        if runs >= max_runs:
            return False
        runs += 1
        try:
            signature = check(candidate)
        except Exception as exc:  # a candidate that cannot run is simply not kept
            log.info("shrink: candidate failed to run: %s", exc)
            return False
        return signature == target

    # Pass 1: drop whole actors (never the last producer).
    changed = True
    while changed and runs < max_runs:
        changed = False
        for actor in list(best.actors):
            rest = [a for a in best.actors if a is not actor]
            if actor.kind == PRODUCER and not any(a.kind == PRODUCER for a in rest):
                continue
            candidate = _with_actors(best, rest)
            if same(candidate):
                best, changed = candidate, True
                break
    # Pass 2: drop chunks of operations, halving the chunk size (ddmin per actor).
    for index in range(len(best.actors)):
        chunk = max(1, len(best.actors[index].operations) // 2)
        while chunk >= 1 and runs < max_runs:
            ops = list(best.actors[index].operations)
            removed = False
            for start in range(0, len(ops), chunk):
                kept = ops[:start] + ops[start + chunk :]
                if not kept:
                    continue
                actors = list(best.actors)
                actors[index] = attrs.evolve(actors[index], operations=tuple(kept))
                candidate = _with_actors(best, actors)
                if same(candidate):
                    best, removed = candidate, True
                    break
            if not removed:
                chunk //= 2
    # Pass 3: faults off, one switch at a time.
    for switch in ("kill_connection", "crash_between_passes", "crash_mid_backfill"):
        if runs >= max_runs or not getattr(best.faults, switch):
            continue
        faults: FaultSwitches = attrs.evolve(best.faults, **{switch: False})
        candidate = attrs.evolve(best, faults=faults, schedule=())
        if same(candidate):
            best = candidate
    return ShrinkResult(best, target, runs)


def regression_document(
    result: ShrinkResult,
    *,
    backend: str,
    mutant: str | None = None,
    why: str = "",
    backends: tuple[str, ...] = ("sqlite", "postgresql", "mariadb"),
) -> dict[str, Any]:
    """The regression file: replayed by the suite on every backend in `backends`."""
    return {
        "schema_version": REGRESSION_SCHEMA_VERSION,
        "why": why,
        "found_on": backend,
        "backends": list(backends),
        "mutant": mutant,
        "expect": {
            "invariants": list(result.signature.invariants),
            "kinds": list(result.signature.kinds),
        },
        "scenario": result.scenario.without_schedule().to_json(),
    }


def write_regression(document: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path


@attrs.frozen
class Regression:
    """A regression file: the scenario, the signature it failed with, and, when it came from a
    known-wrong variant, the name of that mutant (the suite checks it is still caught)."""

    scenario: Scenario
    invariants: tuple[str, ...]
    kinds: tuple[str, ...]
    mutant: str | None
    why: str
    backends: tuple[str, ...]


def load_regression(path: Path) -> Regression:
    document = json.loads(path.read_text())
    expect = document.get("expect", {})
    return Regression(
        scenario=scenario_from_json(document["scenario"]),
        invariants=tuple(expect.get("invariants", ())),
        kinds=tuple(expect.get("kinds", ())),
        mutant=document.get("mutant"),
        why=str(document.get("why", "")),
        backends=tuple(document.get("backends", ("sqlite", "postgresql", "mariadb"))),
    )
