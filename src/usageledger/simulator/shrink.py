"""Shrinking (SPEC S7): reduce a failing scenario to a small one that fails the same way, and
write it as a regression file the test suite replays.

Delta debugging in passes over the scenario as data: drop whole actors, then halves, quarters …
of each actor's operations, then single operations, then switch faults off (rewriting the
operations that carry them). Every candidate runs afresh on a fresh database, replaying the
recorded schedule without the removed steps (seeded where that no longer replays), and is kept
only if it fails with the same signature: the same broken invariants and the same kinds of
resources in the invalid findings.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from usageledger.errors import UsageLedgerError
from usageledger.simulator.checker import CheckReport
from usageledger.simulator.scenario import (
    KILL_PREFIX,
    OTHER_OPS,
    PRODUCER,
    PRODUCER_OPS,
    TICK,
    FaultSwitches,
    Operation,
    Scenario,
    ScheduleEntry,
    scenario_from_json,
)
from usageledger.simulator.scheduler import DIRECTIVES, FREE_RUN, fingerprint

log = logging.getLogger(__name__)

REGRESSION_SCHEMA_VERSION = 1
#: Where the regression suite picks regression files up (tests/simulator/test_regressions.py).
REGRESSION_FOLDER = "tests/regressions/"


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


class ShrinkError(UsageLedgerError):
    """The failing scenario cannot be shrunk: its failure does not reproduce on a fresh
    database. The command says so in one `error:` line (SPEC §9)."""


#: The fingerprints of an actor's step that begins an operation (its `op` park): they cut an
#: actor's recorded schedule entries into one group per operation.
_OP_FINGERPRINTS = frozenset(fingerprint("op", name) for name in (*PRODUCER_OPS, *OTHER_OPS))


def _owner(entry: ScheduleEntry) -> str | None:
    """The actor a schedule entry belongs to (None for a clock tick or the free-run marker)."""
    if entry.choice in (TICK, FREE_RUN):
        return None
    if entry.choice.startswith(KILL_PREFIX):
        return entry.choice[len(KILL_PREFIX) :]
    return entry.choice


def _is_directive(entry: ScheduleEntry) -> bool:
    return entry.fingerprint.startswith(DIRECTIVES)


def trim_schedule(
    schedule: tuple[ScheduleEntry, ...],
    gone: frozenset[str] = frozenset(),
    dropped_ops: Mapping[str, frozenset[int]] | None = None,
    *,
    cut: Mapping[str, int] | None = None,
) -> tuple[ScheduleEntry, ...]:
    """A candidate's schedule (SIMULATOR.md, replay with skips): the entries of removed actors
    (`gone`) and of removed operations (actor → operation indexes) go, so that the rest still
    replays step for step, and a clock tick whose steps all went goes with them. With `cut`
    (actor → operation index) the replay stops at that operation's first step. Past its end the
    seeded strategy takes over (`*`). Hand-written directives stay unless their actor went."""
    if not schedule:
        return ()
    dropped_ops = dropped_ops or {}
    cut = cut or {}
    kept: list[ScheduleEntry] = []
    op_index: dict[str, int] = {}
    tick: ScheduleEntry | None = None  # a tick not yet written: it waits for a kept step
    dropped = False  # a step since that tick went
    for entry in schedule:
        if entry.choice == FREE_RUN:
            break
        if entry.choice == TICK:
            if tick is not None and not dropped:
                kept.append(tick)
            tick, dropped = entry, False
            continue
        owner = _owner(entry)
        assert owner is not None
        directive = _is_directive(entry)
        if not directive and entry.fingerprint in _OP_FINGERPRINTS:
            op_index[owner] = op_index.get(owner, -1) + 1
        index = op_index.get(owner, 0)
        if owner in cut and index >= cut[owner] and not directive:
            break
        if owner in gone or (not directive and index in dropped_ops.get(owner, frozenset())):
            dropped = True
            continue
        if tick is not None:
            kept.append(tick)
            tick = None
        kept.append(entry)
    else:
        if tick is not None and not dropped:
            kept.append(tick)
    return (*kept, ScheduleEntry(FREE_RUN))


def _without_actor(scenario: Scenario, name: str) -> Scenario:
    actors = tuple(a for a in scenario.actors if a.name != name)
    schedule = trim_schedule(scenario.schedule, frozenset({name}))
    return attrs.evolve(scenario, actors=actors, schedule=schedule)


def _without_ops(
    scenario: Scenario, name: str, gone: frozenset[int], kept: tuple[Operation, ...]
) -> Scenario:
    actors = tuple(
        attrs.evolve(a, operations=kept) if a.name == name else a for a in scenario.actors
    )
    schedule = trim_schedule(scenario.schedule, dropped_ops={name: gone})
    return attrs.evolve(scenario, actors=actors, schedule=schedule)


def fault_off(scenario: Scenario, switch: str) -> Scenario | None:
    """The scenario with one fault kind switched off, or None when that changes nothing. The
    crash switches only steer scenario generation, so the operations that carry the fault are
    rewritten: a crashing cleanup becomes the current one, a crashing backfill runs to its end
    (the replay stops before the first rewritten operation, whose statements differ). Kills
    are drawn per step: the switch goes off and the recorded kills leave the schedule."""
    faults: FaultSwitches = attrs.evolve(scenario.faults, **{switch: False})
    if switch == "kill_connection":
        schedule = tuple(e for e in scenario.schedule if not e.choice.startswith(KILL_PREFIX))
        if not scenario.faults.kill_connection and len(schedule) == len(scenario.schedule):
            return None
        return attrs.evolve(scenario, faults=faults, schedule=schedule)
    actors = list(scenario.actors)
    cut: dict[str, int] = {}
    for i, actor in enumerate(actors):
        ops = list(actor.operations)
        for j, op in enumerate(ops):
            if switch == "crash_between_passes" and op.variant == "crash_between_passes":
                ops[j] = attrs.evolve(op, variant="current")
            elif switch == "crash_mid_backfill" and op.crash_after_batches is not None:
                ops[j] = attrs.evolve(op, crash_after_batches=None)
            else:
                continue
            cut.setdefault(actor.name, j)
        actors[i] = attrs.evolve(actor, operations=tuple(ops))
    if not cut and not getattr(scenario.faults, switch):
        return None
    schedule = trim_schedule(scenario.schedule, cut=cut)
    return attrs.evolve(scenario, actors=tuple(actors), faults=faults, schedule=schedule)


def shrink(scenario: Scenario, check: Check, *, max_runs: int = 80) -> ShrinkResult:
    """The smallest scenario found that fails like `scenario`, keeping its recorded schedule
    (trimmed with every removal) so that failures that need an interleaving shrink too. A
    candidate whose trimmed schedule no longer replays is tried seeded. Raises ShrinkError when
    the failure does not reproduce at all."""
    runs = 0

    def attempt(candidate: Scenario) -> Signature | None:
        nonlocal runs
        runs += 1
        try:
            return check(candidate)
        except Exception as exc:  # a candidate that cannot run (a replay divergence) is not kept
            log.info("shrink: candidate failed to run: %s", exc)
            return None

    best = scenario
    target = attempt(scenario)
    if (target is None or not target.fails) and scenario.schedule:
        best = scenario.without_schedule()
        target = attempt(best)
    if target is None or not target.fails:
        raise ShrinkError(
            "the failure did not reproduce on a fresh database (neither replaying its recorded "
            "schedule nor seeded), so it cannot be shrunk; keep the run's scenario.json as the "
            "reproducer"
        )

    def same(candidate: Scenario) -> Scenario | None:
        """The candidate, or the candidate run seeded when its trimmed schedule no longer
        replays or no longer fails, if it fails like the target."""
        if runs >= max_runs:
            return None
        if attempt(candidate) == target:
            return candidate
        if candidate.schedule and runs < max_runs:
            seeded = candidate.without_schedule()
            if attempt(seeded) == target:
                return seeded
        return None

    # Pass 1: drop whole actors (never the last producer).
    changed = True
    while changed and runs < max_runs:
        changed = False
        for actor in list(best.actors):
            rest = [a for a in best.actors if a is not actor]
            if actor.kind == PRODUCER and not any(a.kind == PRODUCER for a in rest):
                continue
            found = same(_without_actor(best, actor.name))
            if found is not None:
                best, changed = found, True
                break
    # Pass 2: drop chunks of operations, halving the chunk size (ddmin per actor).
    for index in range(len(best.actors)):
        chunk = max(1, len(best.actors[index].operations) // 2)
        while chunk >= 1 and runs < max_runs:
            actor = best.actors[index]
            ops = list(actor.operations)
            removed = False
            for start in range(0, len(ops), chunk):
                kept = ops[:start] + ops[start + chunk :]
                if not kept:
                    continue
                gone = frozenset(range(start, min(start + chunk, len(ops))))
                found = same(_without_ops(best, actor.name, gone, tuple(kept)))
                if found is not None:
                    best, removed = found, True
                    break
            if not removed:
                chunk //= 2
    # Pass 3: faults off, one kind at a time, the operations that carry them rewritten.
    for switch in ("kill_connection", "crash_between_passes", "crash_mid_backfill"):
        if runs >= max_runs:
            break
        candidate = fault_off(best, switch)
        if candidate is not None:
            found = same(candidate)
            if found is not None:
                best = found
    return ShrinkResult(best, target, runs)


def regression_document(
    result: ShrinkResult,
    *,
    backend: str,
    mutant: str | None = None,
    why: str = "",
    backends: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """The regression file: replayed by the suite (from tests/regressions/) on every backend
    in `backends`, by default only the one it was found on (a recorded schedule replays on
    that backend's statements)."""
    return {
        "schema_version": REGRESSION_SCHEMA_VERSION,
        "why": why,
        "found_on": backend,
        "install": f"copy this file into {REGRESSION_FOLDER} for the regression suite (S7)",
        "backends": list(backends if backends is not None else (backend,)),
        "mutant": mutant,
        "expect": {
            "invariants": list(result.signature.invariants),
            "kinds": list(result.signature.kinds),
        },
        "scenario": result.scenario.to_json(),
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
