"""A simulation scenario as data (SPEC S1): seed, sizes, time span, actor mix, fault switches,
every actor's operations and, once run, the recorded schedule.

A scenario generated from a seed is fully explicit once written to JSON: loading the file replays
the same operations and, when the schedule is present, the same interleaving step for step.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from usageledger.errors import BadInputError

SCHEMA_VERSION = 1

#: Actor kinds (S2). `naive` is a consumer kind that only the test suite provides.
PRODUCER = "producer"
CLEANUP = "cleanup"
OLD_CLEANUP = "old_cleanup"
BACKFILL = "backfill"
CONSUMER = "consumer"
PURGE = "purge"
ACTOR_KINDS = (PRODUCER, CLEANUP, OLD_CLEANUP, BACKFILL, CONSUMER, PURGE)

#: Producer operations (SPEC §3) the simulator drives, by the target resource they act on.
PROCESS_OPS = ("start_process", "stop_process", "scale_process", "destroy_process")
TASK_OPS = ("run_task", "cancel_task", "succeed_task", "fail_task", "destroy_task")
SERVICE_OPS = ("create_service_instance", "update_service_instance", "delete_service_instance")
STAGING_OPS = ("start_staging", "finish_staging")
PRODUCER_OPS = PROCESS_OPS + TASK_OPS + SERVICE_OPS + STAGING_OPS
#: Operations of the other actors. A cleanup's `variant` is `current`, `old` (delete everything
#: old, the pre-fix cleanup) or `crash_between_passes`; a backfill may crash after N batches.
OTHER_OPS = ("cleanup", "backfill", "poll", "restart", "purge_and_reseed")

#: Scheduling strategies (SIMULATOR.md): seeded uniform random, or PCT (priorities with a few
#: change points).
STRATEGIES = ("random", "pct")
#: Service plans every scenario offers; the label is what the truth compares (C8).
PLANS = ("plan-small", "plan-medium", "plan-large")
MEMORY_SIZES = (128, 256, 512, 1024)

DAY = 86_400
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@attrs.frozen
class Sizes:
    """How many resources the producer drives."""

    apps: int = 8
    processes: int = 14
    tasks: int = 16
    service_instances: int = 6
    builds: int = 4
    legacy: int = 3
    """Processes (and, one in three, tasks and service instances) already running before the run,
    whose start events the old delete-everything-old cleanup removed long ago: the backfill
    has to seed them, racing the producer's stops (S2)."""
    stale_baselines: int = 1
    """Processes (other than the legacy ones) that stopped two days before the run while an
    older backfill, one without the repair, seeded them a baseline: the baseline follows
    their STOPPED by id (SPEC §5's race, already happened). The run's backfills must repair
    them (B5) while the producer may start them again."""

    def __attrs_post_init__(self) -> None:
        for field in attrs.fields(Sizes):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise BadInputError(f"size {field.name} must be an integer >= 0, got {value!r}")
        if self.apps < 1 and (self.processes or self.tasks or self.builds):
            raise BadInputError("processes, tasks and builds need at least one app")


@attrs.frozen
class ActorMix:
    """Which actors take part (S2)."""

    producers: int = 2
    cleanup_runs: int = 5
    old_cleanup_runs: int = 1
    backfills: int = 2
    backfill_runs: int = 3
    consumers: tuple[str, ...] = ("reference",)
    late_consumer: bool = True
    """A reference consumer that pauses for longer than the cutoff (falls behind retention)."""
    purge_and_reseed: int = 0
    """Destructive purge-and-reseed runs by an operator (S2), each followed by a backfill
    (B9); off by default."""


@attrs.frozen
class FaultSwitches:
    """Fault kinds enabled for this run (S4); each fires with a probability per visit."""

    kill_connection: bool = True
    crash_between_passes: bool = True
    crash_mid_backfill: bool = True
    consumer_restart: bool = True
    kill_probability: float = 0.004


@attrs.frozen
class Operation:
    """One thing an actor does at a planned simulated time (seconds after the scenario start)."""

    at: int
    op: str
    target: str | None = None
    instances: int | None = None
    memory: int | None = None
    plan: str | None = None
    name: str | None = None
    variant: str | None = None
    crash_after_batches: int | None = None
    batch_size: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in attrs.asdict(self).items() if v is not None}


@attrs.frozen
class ActorSpec:
    """One actor: a name, a kind, a consumer flavour for consumers, and its operations."""

    name: str
    kind: str
    operations: tuple[Operation, ...]
    flavour: str | None = None

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.flavour is not None:
            document["flavour"] = self.flavour
        document["operations"] = [op.to_json() for op in self.operations]
        return document


@attrs.frozen
class ScheduleEntry:
    """One scheduler decision: an actor granted one step (with the fingerprint of the statement
    it was parked at), the clock advanced (`~tick`), or a fault fired (`!kill:<actor>`)."""

    choice: str
    fingerprint: str = ""

    def to_json(self) -> list[str]:
        return [self.choice, self.fingerprint] if self.fingerprint else [self.choice]


TICK = "~tick"
KILL_PREFIX = "!kill:"


@attrs.frozen
class Scenario:
    """Everything a run needs (S1). `schedule` is empty for a fresh run and holds the recorded
    decisions after one; a scenario with a schedule replays it exactly."""

    seed: int
    sizes: Sizes
    span_days: int
    cutoff_age_in_days: int
    mix: ActorMix
    faults: FaultSwitches
    strategy: str
    actors: tuple[ActorSpec, ...]
    consumer_grace_steps: int = 100
    overlap_seconds: int = 6 * 3600
    """How far simulated time may run on while an operation is in flight (see Scheduler)."""
    schedule: tuple[ScheduleEntry, ...] = ()
    note: str = ""

    @property
    def start(self) -> datetime:
        return EPOCH

    def actor(self, name: str) -> ActorSpec:
        for actor in self.actors:
            if actor.name == name:
                return actor
        raise KeyError(name)

    @property
    def operation_count(self) -> int:
        return sum(len(a.operations) for a in self.actors)

    def without_schedule(self) -> Scenario:
        return attrs.evolve(self, schedule=())

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "seed": self.seed,
            "note": self.note,
            "sizes": attrs.asdict(self.sizes),
            "span_days": self.span_days,
            "cutoff_age_in_days": self.cutoff_age_in_days,
            "mix": {**attrs.asdict(self.mix), "consumers": list(self.mix.consumers)},
            "faults": attrs.asdict(self.faults),
            "strategy": self.strategy,
            "consumer_grace_steps": self.consumer_grace_steps,
            "overlap_seconds": self.overlap_seconds,
            "actors": [a.to_json() for a in self.actors],
            "schedule": [e.to_json() for e in self.schedule],
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=1)


# --- loading --------------------------------------------------------------------------------


def _require(document: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in document:
        raise BadInputError(f"scenario: missing field {key!r}")
    value = document[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise BadInputError(f"scenario: field {key!r} has the wrong type ({value!r})")
    return value


def _build(cls: type[Any], values: Mapping[str, Any], what: str) -> Any:
    names = {f.name for f in attrs.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise BadInputError(f"scenario: unknown {what} field(s) {', '.join(unknown)}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise BadInputError(f"scenario: bad {what}: {exc}") from None


def scenario_from_json(document: Any) -> Scenario:
    """A Scenario from its JSON document, validated; BadInputError names the first problem."""
    if not isinstance(document, dict):
        raise BadInputError("scenario: the document must be a JSON object")
    version = _require(document, "schema_version", int)
    if version != SCHEMA_VERSION:
        raise BadInputError(
            f"scenario: schema_version {version} is not supported (this usageledger reads "
            f"{SCHEMA_VERSION})"
        )
    mix_values = dict(_require(document, "mix", dict))
    if "consumers" in mix_values:
        mix_values["consumers"] = tuple(mix_values["consumers"])
    actors: list[ActorSpec] = []
    for raw in _require(document, "actors", list):
        if not isinstance(raw, dict):
            raise BadInputError("scenario: each actor must be an object")
        kind = _require(raw, "kind", str)
        if kind not in ACTOR_KINDS:
            raise BadInputError(f"scenario: unknown actor kind {kind!r}")
        ops = []
        for op in _require(raw, "operations", list):
            operation = _build(Operation, op, "operation")
            if operation.op not in PRODUCER_OPS + OTHER_OPS:
                raise BadInputError(f"scenario: unknown operation {operation.op!r}")
            ops.append(operation)
        actors.append(
            ActorSpec(
                name=_require(raw, "name", str),
                kind=kind,
                operations=tuple(ops),
                flavour=raw.get("flavour"),
            )
        )
    names = [a.name for a in actors]
    if len(set(names)) != len(names):
        raise BadInputError("scenario: actor names must be unique")
    schedule = []
    for entry in document.get("schedule", []):
        if not isinstance(entry, list) or not 1 <= len(entry) <= 2:
            raise BadInputError("scenario: each schedule entry is [choice] or [choice, fp]")
        schedule.append(ScheduleEntry(*[str(x) for x in entry]))
    strategy = _require(document, "strategy", str)
    if strategy not in STRATEGIES:
        raise BadInputError(f"scenario: unknown strategy {strategy!r}")
    scenario = Scenario(
        seed=_require(document, "seed", int),
        # Scenarios written before stale baselines existed had none; they replay as recorded.
        sizes=_build(Sizes, {"stale_baselines": 0} | _require(document, "sizes", dict), "sizes"),
        span_days=_require(document, "span_days", int),
        cutoff_age_in_days=_require(document, "cutoff_age_in_days", int),
        mix=_build(ActorMix, mix_values, "mix"),
        faults=_build(FaultSwitches, _require(document, "faults", dict), "faults"),
        strategy=strategy,
        actors=tuple(actors),
        consumer_grace_steps=int(document.get("consumer_grace_steps", 100)),
        overlap_seconds=int(document.get("overlap_seconds", 6 * 3600)),
        schedule=tuple(schedule),
        note=str(document.get("note", "")),
    )
    if scenario.span_days < 1 or scenario.cutoff_age_in_days < 0:
        raise BadInputError("scenario: span_days must be >= 1 and cutoff_age_in_days >= 0")
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise BadInputError(f"cannot read scenario file {str(path)!r}: {exc.strerror}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInputError(f"scenario file {str(path)!r} is not JSON: {exc}") from None
    if isinstance(document, dict) and isinstance(document.get("scenario"), dict):
        document = document["scenario"]  # a regression file (S7) wraps the scenario it replays
    return scenario_from_json(document)


# --- generation -----------------------------------------------------------------------------


@attrs.frozen
class Layout:
    """Which labelled resources exist before the actors start, and who owns what.

    Labels (`app-1`, `proc-3`, `task-2`, `svc-1`, `build-1`) stand for guids, which are fresh
    UUIDs on every run; the truth, the report and the picture name resources by label.
    """

    apps: tuple[str, ...]
    processes: tuple[tuple[str, str, str], ...]  # (label, app label, type)
    tasks: tuple[tuple[str, str, int], ...]  # (label, app label, memory_in_mb)
    services: tuple[str, ...]
    builds: tuple[tuple[str, str], ...]  # (label, app label)
    legacy_processes: tuple[str, ...] = ()
    legacy_services: tuple[str, ...] = ()
    legacy_tasks: tuple[str, ...] = ()
    stale_processes: tuple[str, ...] = ()


def layout_of(sizes: Sizes) -> Layout:
    apps = tuple(f"app-{i + 1}" for i in range(sizes.apps))
    processes = tuple(
        (f"proc-{i + 1}", apps[i % len(apps)], "web" if i < len(apps) else "worker")
        for i in range(sizes.processes)
    )
    tasks = tuple(
        (f"task-{i + 1}", apps[i % len(apps)], MEMORY_SIZES[i % len(MEMORY_SIZES)])
        for i in range(sizes.tasks)
    )
    services = tuple(f"svc-{i + 1}" for i in range(sizes.service_instances))
    builds = tuple((f"build-{i + 1}", apps[i % len(apps)]) for i in range(sizes.builds))
    legacy_processes = tuple(label for label, _, _ in processes[: sizes.legacy])
    legacy_services = services[: (sizes.legacy + 2) // 3]
    legacy_tasks = tuple(label for label, _, _ in tasks[: (sizes.legacy + 2) // 3])
    others = [label for label, _, _ in processes[sizes.legacy :]]
    stale_processes = tuple(others[len(others) - min(sizes.stale_baselines, len(others)) :])
    return Layout(
        apps,
        processes,
        tasks,
        services,
        builds,
        legacy_processes,
        legacy_services,
        legacy_tasks,
        stale_processes,
    )


def _exp(rng: random.Random, mean: float) -> int:
    return max(1, int(rng.expovariate(1.0 / mean)))


def _process_ops(
    rng: random.Random,
    label: str,
    span: int,
    *,
    legacy: bool = False,
    race_at: int | None = None,
) -> list[Operation]:
    """A long-running process scaled often, sometimes stopped and restarted (S2). A legacy
    process is already running when the scenario starts; with `race_at` it stops within
    minutes of a planned backfill, which may seed a baseline for it meanwhile (B5's race)."""
    ops: list[Operation] = []
    t = rng.randrange(0, max(1, int(span * 0.6)))
    running = True
    if legacy and race_at is not None:
        t = race_at + rng.randrange(0, 600)
        ops.append(Operation(at=t, op="stop_process", target=label))
        running = False
    elif legacy:
        t = rng.randrange(0, max(1, int(span * 0.2)))
    else:
        ops.append(Operation(at=t, op="start_process", target=label))
    while True:
        t += _exp(rng, span / 10)
        if t >= span * 0.97:
            break
        roll = rng.random()
        if running and roll < 0.65:
            ops.append(
                Operation(
                    at=t,
                    op="scale_process",
                    target=label,
                    instances=rng.randint(1, 5),
                    memory=rng.choice(MEMORY_SIZES),
                )
            )
        elif running:
            ops.append(Operation(at=t, op="stop_process", target=label))
            running = False
        else:
            ops.append(Operation(at=t, op="start_process", target=label))
            running = True
    if rng.random() < 0.15:
        ops.append(Operation(at=min(span - 1, t), op="destroy_process", target=label))
    return ops


def _task_ops(
    rng: random.Random, label: str, span: int, *, legacy: bool = False
) -> list[Operation]:
    """A short task: runs, maybe is cancelled, ends; some never run, a few outlive the span.
    A legacy task is already running when the scenario starts (a long batch job)."""
    t = rng.randrange(0, max(1, int(span * 0.95)))
    if legacy:
        end = rng.randrange(1, max(2, int(span * 0.6)))
        ops = []
        if rng.random() < 0.5:
            ops.append(Operation(at=max(0, end - 3600), op="cancel_task", target=label))
        ops.append(Operation(at=end, op=rng.choice(["succeed_task", "fail_task"]), target=label))
        return ops
    if rng.random() < 0.15:
        return [Operation(at=t, op="destroy_task", target=label)]  # destroyed while PENDING
    ops = [Operation(at=t, op="run_task", target=label)]
    if rng.random() < 0.1:
        return ops  # still running when the run ends
    end = t + _exp(rng, 3 * 3600)
    if rng.random() < 0.2:
        ops.append(Operation(at=t + max(1, (end - t) // 2), op="cancel_task", target=label))
        ops.append(Operation(at=end, op="fail_task", target=label))
        return ops
    ending = rng.choices(["succeed_task", "fail_task", "destroy_task"], weights=[5, 3, 2])[0]
    ops.append(Operation(at=end, op=ending, target=label))
    return ops


def _service_ops(
    rng: random.Random, label: str, span: int, *, legacy: bool = False
) -> list[Operation]:
    """A service instance: created, re-planned or renamed now and then, sometimes deleted.
    A legacy instance exists (on the first plan) when the scenario starts."""
    t = rng.randrange(0, max(1, int(span * 0.5)))
    plan = rng.choice(PLANS)
    ops = [Operation(at=t, op="create_service_instance", target=label, plan=plan)]
    if legacy:
        plan = PLANS[0]
        ops = []
    renames = 0
    while True:
        t += _exp(rng, span / 6)
        if t >= span * 0.97:
            break
        if rng.random() < 0.2:
            ops.append(Operation(at=t, op="delete_service_instance", target=label))
            break
        if rng.random() < 0.6:
            plan = rng.choice([p for p in PLANS if p != plan])
            ops.append(Operation(at=t, op="update_service_instance", target=label, plan=plan))
        else:
            renames += 1
            ops.append(
                Operation(
                    at=t, op="update_service_instance", target=label, name=f"{label}-r{renames}"
                )
            )
    return ops


def _build_ops(rng: random.Random, label: str, span: int) -> list[Operation]:
    t = rng.randrange(0, max(1, span - 3600))
    return [
        Operation(at=t, op="start_staging", target=label),
        Operation(at=t + _exp(rng, 300), op="finish_staging", target=label),
    ]


def _spread(rng: random.Random, count: int, low: float, high: float, span: int) -> list[int]:
    """`count` planned times spread over [low, high] of the span, jittered."""
    if count <= 0:
        return []
    width = (high - low) * span / count
    return [int(low * span + width * (i + rng.random())) for i in range(count)]


def generate_scenario(
    seed: int,
    *,
    sizes: Sizes | None = None,
    span_days: int = 100,
    cutoff_age_in_days: int = 31,
    mix: ActorMix | None = None,
    faults: FaultSwitches | None = None,
    strategy: str = "random",
    consumer_grace_steps: int = 100,
    polls: int = 14,
) -> Scenario:
    """A scenario drawn from `seed` in a fixed order: producer lifecycles, then cleanup, backfill
    and consumer plans, then fault sites (SIMULATOR.md, determinism). `polls`: how often, on
    average, each consumer polls over the span (the late consumer a little more)."""
    sizes = sizes or Sizes()
    mix = mix or ActorMix()
    faults = faults or FaultSwitches()
    if strategy not in STRATEGIES:
        raise BadInputError(f"unknown strategy {strategy!r}; use {' or '.join(STRATEGIES)}")
    if span_days < 1:
        raise BadInputError("span_days must be >= 1")
    if mix.producers < 1:
        raise BadInputError("a scenario needs at least one producer")
    rng = random.Random(seed)
    span = span_days * DAY
    layout = layout_of(sizes)

    backfill_times = _spread(rng, mix.backfill_runs, 0.15, 0.97, span)
    producer_ops: list[list[Operation]] = [[] for _ in range(mix.producers)]
    resources: list[tuple[str, list[Operation]]] = []
    for label, _, _ in layout.processes:
        legacy = label in layout.legacy_processes
        race_at = None
        if legacy and backfill_times and mix.backfills and rng.random() < 0.5:
            race_at = rng.choice(backfill_times)
        resources.append((label, _process_ops(rng, label, span, legacy=legacy, race_at=race_at)))
    resources += [
        (label, _task_ops(rng, label, span, legacy=label in layout.legacy_tasks))
        for label, _, _ in layout.tasks
    ]
    resources += [
        (label, _service_ops(rng, label, span, legacy=label in layout.legacy_services))
        for label in layout.services
    ]
    resources += [(label, _build_ops(rng, label, span)) for label, _ in layout.builds]
    # Each resource belongs to one producer, so its operations stay in program order; different
    # producers interleave at statement granularity.
    for index, (_, ops) in enumerate(resources):
        producer_ops[index % mix.producers].extend(ops)

    actors: list[ActorSpec] = [
        ActorSpec(f"producer-{i + 1}", PRODUCER, tuple(sorted(ops, key=lambda o: o.at)))
        for i, ops in enumerate(producer_ops)
    ]

    cleanup_low = min(0.9, (cutoff_age_in_days + 1) / span_days)
    cleanups = []
    for t in _spread(rng, mix.cleanup_runs, cleanup_low, 0.98, span):
        variant = "current"
        if faults.crash_between_passes and rng.random() < 0.4:
            variant = "crash_between_passes"
        cleanups.append(
            Operation(at=t, op="cleanup", variant=variant, batch_size=rng.choice((3, 7, 20)))
        )
    if cleanups:
        actors.append(ActorSpec("cleanup", CLEANUP, tuple(cleanups)))
    if mix.old_cleanup_runs:
        # A rolling deploy: for a while the old cleanup still runs next to the new code.
        window = _spread(rng, mix.old_cleanup_runs, cleanup_low, 0.7, span)
        actors.append(
            ActorSpec(
                "old-cleanup",
                OLD_CLEANUP,
                tuple(Operation(at=t, op="cleanup", variant="old", batch_size=20) for t in window),
            )
        )

    for b in range(mix.backfills):
        ops = []
        for t in backfill_times:  # several backfills plan the same moments: two at once
            crash = None
            if faults.crash_mid_backfill and rng.random() < 0.3:
                crash = rng.randint(1, 3)
            ops.append(
                Operation(
                    at=t + b,
                    op="backfill",
                    crash_after_batches=crash,
                    batch_size=rng.choice((2, 5)),
                )
            )
        actors.append(ActorSpec(f"backfill-{b + 1}", BACKFILL, tuple(ops)))

    for c, flavour in enumerate(mix.consumers):
        ops = []
        t = 0
        while True:
            t += _exp(rng, span / max(1, polls))
            if t >= span:
                break
            ops.append(Operation(at=t, op="poll", batch_size=rng.choice((5, 25))))
            if faults.consumer_restart and rng.random() < 0.1:
                ops.append(Operation(at=t + 1, op="restart"))
        actors.append(ActorSpec(f"consumer-{c + 1}-{flavour}", CONSUMER, tuple(ops), flavour))
    if mix.late_consumer:
        # Reads early, then pauses for longer than the cutoff while cleanups run (C10).
        first = rng.randrange(1, max(2, span // 20))
        resume = first + (cutoff_age_in_days + 15) * DAY
        ops = [Operation(at=first + i * (span // 60), op="poll", batch_size=25) for i in range(3)]
        t = resume
        while t < span:
            ops.append(Operation(at=t, op="poll", batch_size=25))
            t += _exp(rng, span / max(1, polls + 1))
        actors.append(ActorSpec("consumer-late", CONSUMER, tuple(ops), "reference"))

    if mix.purge_and_reseed:
        # Drawn last, so that switching the purge on leaves every other plan of the seed alone.
        purges: list[Operation] = []
        for t in _spread(rng, mix.purge_and_reseed, 0.3, 0.9, span):
            purges.append(Operation(at=t, op="purge_and_reseed"))
            # The operator runs the backfill afterwards (B9), minutes to hours later.
            delay = rng.choice((60, 1800, 4 * 3600))
            purges.append(Operation(at=t + delay, op="backfill", batch_size=rng.choice((2, 5))))
        actors.append(ActorSpec("purge", PURGE, tuple(purges)))

    return Scenario(
        seed=seed,
        sizes=sizes,
        span_days=span_days,
        cutoff_age_in_days=cutoff_age_in_days,
        mix=mix,
        faults=faults,
        strategy=strategy,
        actors=tuple(actors),
        consumer_grace_steps=consumer_grace_steps,
    )


def with_actors(scenario: Scenario, actors: Sequence[ActorSpec]) -> Scenario:
    """The scenario with other actors (shrinking), schedule dropped."""
    return attrs.evolve(scenario, actors=tuple(actors), schedule=())
