"""Hand-written scenarios and race specs for the simulator tests (SIMULATOR.md): a few actors,
operations at chosen moments and, for races, a schedule prefix that forces the interleaving
(`until:` / `through:` a statement, `op` to the end of an operation, `*` then seeded random)."""

from __future__ import annotations

from usageledger.simulator.scenario import (
    BACKFILL,
    CLEANUP,
    CONSUMER,
    DAY,
    OLD_CLEANUP,
    PRODUCER,
    PURGE,
    ActorMix,
    ActorSpec,
    FaultSwitches,
    Operation,
    Scenario,
    ScheduleEntry,
    Sizes,
)

NO_FAULTS = FaultSwitches(
    kill_connection=False,
    crash_between_passes=False,
    crash_mid_backfill=False,
    consumer_restart=False,
    kill_probability=0.0,
)


# Hand-written specs say which resources exist: none has a stale baseline unless it asks
# (Sizes(stale_baselines=…)), so that a spec's ids and bills are the ones its text describes.


def scenario(
    actors: list[ActorSpec],
    *,
    sizes: Sizes,
    schedule: list[list[str]] | None = None,
    span_days: int = 100,
    seed: int = 7,
    note: str = "",
    grace_steps: int = 100,
) -> Scenario:
    return Scenario(
        seed=seed,
        sizes=sizes,
        span_days=span_days,
        cutoff_age_in_days=31,
        mix=ActorMix(),
        faults=NO_FAULTS,
        strategy="random",
        actors=tuple(actors),
        schedule=tuple(ScheduleEntry(*entry) for entry in schedule or []),
        note=note,
        consumer_grace_steps=grace_steps,
    )


def op(day: float, name: str, target: str | None = None, **fields: object) -> Operation:
    return Operation(at=int(day * DAY), op=name, target=target, **fields)  # type: ignore[arg-type]


def consumer(name: str, days: list[float], flavour: str = "reference") -> ActorSpec:
    return ActorSpec(name, CONSUMER, tuple(op(d, "poll", batch_size=50) for d in days), flavour)


def backfill_vs_stop() -> Scenario:
    """A legacy process (its start pruned long ago) stops while a backfill seeds: the stop's
    STOPPED has its id and the process row is locked when the seed batch comes to it. The
    batch waits for the stop to commit and seeds no baseline (SPEC §5's race cannot happen for
    processes: the seed share-locks what it reads). The consumer bills nothing."""
    return scenario(
        [
            ActorSpec("producer-1", PRODUCER, (op(10, "stop_process", "proc-1"),)),
            ActorSpec(
                "backfill-1", BACKFILL, (op(10, "backfill", batch_size=10), op(13, "backfill"))
            ),
            consumer("consumer-1", [10, 10, 11, 12, 14]),
        ],
        sizes=Sizes(
            stale_baselines=0, apps=1, processes=1, tasks=0, service_instances=0, builds=0, legacy=1
        ),
        schedule=[
            ["~tick"],
            ["producer-1", "through:INSERT INTO app_usage_events"],
            # The seed batch blocks on the stop's row lock; the scheduler runs the others.
            ["backfill-1", "until:AS baseline"],
            ["producer-1", "op"],
            ["consumer-1", "op"],
            ["consumer-1", "op"],
            ["*"],
        ],
        note="backfill INSERT…SELECT racing a stop",
        grace_steps=3,
    )


def backfill_vs_task_end() -> Scenario:
    """A legacy task (its start pruned) succeeds while a backfill seeds. Its stop transaction
    runs the P2 gate first (no evidence yet), then the seed batch, which has not met the task's
    row lock yet, commits a TASK_WAS_RUNNING; the task then ends without a TASK_STOPPED (the
    gate saw none). The consumer reads the open baseline; the repair appends the ending
    (SPEC §5's race, as it remains with a seed that locks what it reads)."""
    return scenario(
        [
            ActorSpec("producer-1", PRODUCER, (op(10, "succeed_task", "task-1"),)),
            ActorSpec(
                "backfill-1", BACKFILL, (op(10, "backfill", batch_size=10), op(13, "backfill"))
            ),
            consumer("consumer-1", [10, 10, 11, 12, 14]),
        ],
        sizes=Sizes(
            stale_baselines=0, apps=1, processes=0, tasks=1, service_instances=0, builds=0, legacy=1
        ),
        schedule=[
            ["~tick"],
            ["producer-1", "through:AS stops"],  # the P2 gate, the stop's first read
            # The seed commits the task's baseline; the task's repair is next.
            ["backfill-1", "until:tasks.guid = baseline.task_guid"],
            ["producer-1", "op"],
            ["consumer-1", "op"],
            ["consumer-1", "op"],
            ["*"],
        ],
        note="backfill seed between a task stop's gate and its row lock",
        grace_steps=3,
    )


def id_gap(consumer_flavour: str = "reference") -> Scenario:
    """Two producers: A inserts and holds, B inserts and commits, the consumer polls, A commits
    (C2). A consumer that moves its cursor past A's id never reads A's event."""
    return scenario(
        [
            ActorSpec("producer-1", PRODUCER, (op(5, "start_process", "proc-1"),)),
            ActorSpec("producer-2", PRODUCER, (op(5, "start_process", "proc-2"),)),
            consumer("consumer-1", [5, 6, 7], consumer_flavour),
        ],
        sizes=Sizes(
            stale_baselines=0, apps=1, processes=2, tasks=0, service_instances=0, builds=0, legacy=0
        ),
        schedule=[
            ["~tick"],
            ["producer-1", "through:INSERT INTO app_usage_events"],
            ["producer-2", "op"],
            ["consumer-1", "op"],
            ["producer-1", "op"],
            ["*"],
        ],
        note="ids committed out of order under a polling consumer",
    )


def rolling_deploy() -> Scenario:
    """The old cleanup still runs during a rolling deploy: it deletes a running app's start;
    a later backfill restores a baseline (SPEC §0)."""
    return scenario(
        [
            ActorSpec(
                "producer-1",
                PRODUCER,
                (
                    op(1, "start_process", "proc-1"),
                    op(2, "start_process", "proc-2"),
                    op(3, "stop_process", "proc-2"),
                    op(60, "stop_process", "proc-1"),
                ),
            ),
            consumer("consumer-1", [1.5, 50, 70]),
            ActorSpec("old-cleanup", OLD_CLEANUP, (op(40, "cleanup", variant="old"),)),
            ActorSpec("backfill-1", BACKFILL, (op(45, "backfill"),)),
            consumer("consumer-2", [55, 70]),
        ],
        sizes=Sizes(
            stale_baselines=0, apps=1, processes=2, tasks=0, service_instances=0, builds=0, legacy=0
        ),
        note="the old cleanup during a rolling deploy",
    )


def old_cleanup_deletes_a_task_start() -> Scenario:
    """The old cleanup deletes the TASK_STARTED of two running tasks that a consumer has read
    (SPEC §0). A backfill restores task-2's baseline before it ends, so its end writes its stop;
    task-1 ends before any backfill, with no start evidence left, so the platform writes no
    TASK_STOPPED (P2) and the consumer's bill stays open: the old cleanup's damage."""
    return scenario(
        [
            ActorSpec(
                "producer-1",
                PRODUCER,
                (
                    op(1, "run_task", "task-1"),
                    op(1.1, "run_task", "task-2"),
                    op(39, "run_task", "task-3"),  # the newest row, which R2 keeps
                    op(42, "succeed_task", "task-1"),
                    op(50, "succeed_task", "task-2"),
                ),
            ),
            consumer("consumer-1", [2, 60]),
            ActorSpec("old-cleanup", OLD_CLEANUP, (op(40, "cleanup", variant="old"),)),
            ActorSpec("backfill-1", BACKFILL, (op(45, "backfill"),)),
        ],
        sizes=Sizes(
            stale_baselines=0, apps=1, processes=0, tasks=3, service_instances=0, builds=0, legacy=0
        ),
        note="the old cleanup deletes running tasks' starts",
    )


def crash_between_passes() -> Scenario:
    """Runs that end long before the cutoff, then a cleanup that dies between its passes."""
    return scenario(
        [
            ActorSpec(
                "producer-1",
                PRODUCER,
                (
                    op(1, "start_process", "proc-1"),
                    op(2, "stop_process", "proc-1"),
                    op(3, "run_task", "task-1"),
                    op(4, "succeed_task", "task-1"),
                    op(5, "create_service_instance", "svc-1", plan="plan-small"),
                    op(6, "delete_service_instance", "svc-1"),
                    op(7, "start_process", "proc-2"),
                ),
            ),
            ActorSpec(
                "cleanup",
                CLEANUP,
                (op(50, "cleanup", variant="crash_between_passes", batch_size=2),),
            ),
            consumer("consumer-1", [60]),
        ],
        sizes=Sizes(
            stale_baselines=0, apps=1, processes=2, tasks=1, service_instances=1, builds=0, legacy=0
        ),
        note="cleanup crash between passes",
    )


def baseline_for_open_resource() -> Scenario:
    """A consumer reads a start; the old cleanup prunes it; the backfill seeds a baseline for
    a resource the consumer holds OPEN (C5: it must open nothing new); then it stops."""
    return scenario(
        [
            ActorSpec(
                "producer-1",
                PRODUCER,
                (
                    op(1, "start_process", "proc-1"),
                    op(39, "start_process", "proc-2"),
                    op(60, "stop_process", "proc-1"),
                ),
            ),
            consumer("consumer-1", [2, 50, 70]),
            ActorSpec("old-cleanup", OLD_CLEANUP, (op(40, "cleanup", variant="old"),)),
            ActorSpec("backfill-1", BACKFILL, (op(45, "backfill"),)),
        ],
        sizes=Sizes(
            stale_baselines=0, apps=1, processes=2, tasks=0, service_instances=0, builds=0, legacy=0
        ),
        note="a baseline for an OPEN resource",
    )


def legacy_tasks() -> Scenario:
    """Tasks running before the run without a start on record (one cancelling), a backfill,
    a task destroyed while PENDING, and the ends."""
    return scenario(
        [
            ActorSpec(
                "producer-1",
                PRODUCER,
                (
                    op(12, "cancel_task", "task-1"),
                    op(20, "fail_task", "task-1"),
                    op(20.5, "succeed_task", "task-2"),
                    op(21, "destroy_task", "task-3"),
                ),
            ),
            ActorSpec("backfill-1", BACKFILL, (op(10, "backfill"), op(14, "backfill"))),
            consumer("consumer-1", [11, 16, 25]),
        ],
        sizes=Sizes(
            stale_baselines=0, apps=1, processes=0, tasks=3, service_instances=0, builds=0, legacy=6
        ),
        schedule=[["~tick"], ["backfill-1", "op"], ["*"]],
        note="legacy tasks, a cancel, a destroy while PENDING",
    )


def created_at_out_of_id_order(consumer_flavour: str = "reference") -> Scenario:
    """A stop stamps its event's created_at, then waits; time passes; an operator's purge and
    reseed (plain SQL, no row locks) writes a STARTED for the process from its snapshot (lower
    id, later created_at); the stop commits after it. Its ending has the higher id and the
    earlier created_at: only pairing by id gets it right (SPEC §0). (The backfill's seed used
    to make this race; it now waits for the stop's row lock.)"""
    return scenario(
        [
            ActorSpec("producer-1", PRODUCER, (op(10, "stop_process", "proc-1"),)),
            ActorSpec("purge", PURGE, (op(10.05, "purge_and_reseed"),)),
            consumer("consumer-1", [11, 12], consumer_flavour),
        ],
        sizes=Sizes(
            stale_baselines=0, apps=1, processes=1, tasks=0, service_instances=0, builds=0, legacy=1
        ),
        schedule=[
            ["~tick"],
            ["producer-1", "until:INSERT INTO app_usage_events"],
            ["~tick"],
            ["purge", "op"],
            ["producer-1", "op"],
            ["*"],
        ],
        note="created_at out of id order for one resource",
        grace_steps=3,
    )


def running_at_the_end() -> Scenario:
    """A process that starts and keeps running, and a backfill while it runs (B2, B7)."""
    return scenario(
        [
            ActorSpec("producer-1", PRODUCER, (op(1, "start_process", "proc-1"),)),
            ActorSpec("backfill-1", BACKFILL, (op(5, "backfill"),)),
            consumer("consumer-1", [2, 6]),
        ],
        sizes=Sizes(
            stale_baselines=0, apps=1, processes=1, tasks=0, service_instances=0, builds=0, legacy=0
        ),
        note="a running process and a backfill",
    )


def purge_and_reseed() -> Scenario:
    """An operator purges both event tables and reseeds one STARTED per started process, then
    runs the backfill hours later (B9). task-1 ends in between: with its start gone it writes
    no TASK_STOPPED (P2), so only the consumer's C10 gap close stops its bill. task-2 and svc-1
    run on: the backfill restores their baselines, and task-2's end writes its stop."""
    return scenario(
        [
            ActorSpec(
                "producer-1",
                PRODUCER,
                (
                    op(1, "start_process", "proc-1"),
                    op(1.1, "run_task", "task-1"),
                    op(1.2, "run_task", "task-2"),
                    op(1.3, "create_service_instance", "svc-1", plan="plan-small"),
                    op(10.1, "succeed_task", "task-1"),
                    op(20, "succeed_task", "task-2"),
                    op(30, "stop_process", "proc-1"),
                ),
            ),
            ActorSpec(
                "purge",
                PURGE,
                (op(10, "purge_and_reseed"), op(10.5, "backfill", batch_size=2)),
            ),
            consumer("consumer-1", [2, 10.3, 11, 25, 40]),
            consumer("consumer-2", [12, 40]),
        ],
        sizes=Sizes(
            stale_baselines=0, apps=1, processes=1, tasks=2, service_instances=1, builds=0, legacy=0
        ),
        note="a destructive purge-and-reseed, then a backfill",
    )


def purge_reseeds_a_stopping_process() -> Scenario:
    """A stop takes its event's id while an operator's purge runs: the purge has emptied the
    tables, reads the process (no row lock) as STARTED, and reseeds a STARTED above the stop's
    STOPPED, which its DELETE could not see. The stop commits; on record the process runs
    again, and the backfill after the purge (B9) repairs baselines only (B5)."""
    return scenario(
        [
            ActorSpec("producer-1", PRODUCER, (op(10, "stop_process", "proc-1"),)),
            ActorSpec(
                "purge", PURGE, (op(10, "purge_and_reseed"), op(10.5, "backfill", batch_size=2))
            ),
            consumer("consumer-1", [11]),
        ],
        sizes=Sizes(
            stale_baselines=0, apps=1, processes=1, tasks=0, service_instances=0, builds=0, legacy=1
        ),
        schedule=[
            ["~tick"],
            ["purge", "through:DELETE FROM service_usage_events"],
            # PostgreSQL: the INSERT runs; MariaDB: it has its id and waits on the DELETE's lock.
            ["producer-1", "through:INSERT INTO app_usage_events"],
            ["purge", "op"],
            ["producer-1", "op"],
            ["*"],
        ],
        note="a purge-and-reseed races a process stop",
    )


def repair_vs_restart() -> Scenario:
    """proc-1 stopped before the run, and an older backfill left it a baseline after its
    STOPPED (a stale baseline). The producer starts it again while a backfill repairs: the
    start's STARTED has its id and the process row is locked when the repair comes to the
    baseline. The repair waits for the lock, reads the process running and appends no ending;
    an ending there would close a run that has just begun (B5)."""
    return scenario(
        [
            ActorSpec("producer-1", PRODUCER, (op(10, "start_process", "proc-1"),)),
            ActorSpec("backfill-1", BACKFILL, (op(10, "backfill", batch_size=10),)),
            consumer("consumer-1", [5, 11]),
        ],
        sizes=Sizes(
            apps=1,
            processes=1,
            tasks=0,
            service_instances=0,
            builds=0,
            legacy=0,
            stale_baselines=1,
        ),
        schedule=[
            ["~tick"],
            ["consumer-1", "op"],
            ["~tick"],
            # The seed finds nothing running; the backfill stops before its repair statement.
            ["backfill-1", "until:later_event"],
            ["producer-1", "through:INSERT INTO app_usage_events"],
            # The repair's locking read of proc-1 waits for the start's row lock.
            ["backfill-1", "op"],
            ["producer-1", "op"],
            ["*"],
        ],
        note="the repair racing a restart of a process with a stale baseline",
    )


def _two_backfills(schedule: list[list[str]], note: str) -> Scenario:
    """Two backfills due at the same moment over two legacy processes, in `schedule`'s order."""
    return scenario(
        [
            ActorSpec("backfill-1", BACKFILL, (op(10, "backfill", batch_size=1),)),
            ActorSpec("backfill-2", BACKFILL, (op(10, "backfill", batch_size=1),)),
            consumer("consumer-1", [11]),
        ],
        sizes=Sizes(
            stale_baselines=0, apps=1, processes=2, tasks=0, service_instances=0, builds=0, legacy=2
        ),
        schedule=schedule,
        note=note,
    )


def two_backfills() -> Scenario:
    """Two backfills due at the same moment: the first takes the lock and stops before its
    first insert, the second runs its whole operation meanwhile (B8: it must find the lock
    held)."""
    return _two_backfills(
        [["~tick"], ["backfill-1", "until:INSERT INTO"], ["backfill-2", "op"], ["*"]],
        "two backfills at once",
    )


def backfill_takes_the_lock_as_it_is_freed(postgresql: bool) -> Scenario:
    """Two backfills due at the same moment: the second tries the lock right after the first's
    unlock statement, before the first closes its connection. The lock is free by then (B8:
    one holder at a time), so the second runs; I8 must not count the first's close."""
    unlock, take = (
        ("SELECT pg_advisory_unlock", "SELECT pg_try_advisory_lock")
        if postgresql
        else ("SELECT RELEASE_LOCK", "SELECT GET_LOCK")
    )
    return _two_backfills(
        [["~tick"], ["backfill-1", f"through:{unlock}"], ["backfill-2", f"through:{take}"], ["*"]],
        "a backfill takes the lock between the holder's unlock and its close",
    )


def scaled_process(consumer_flavour: str = "reference") -> Scenario:
    """A process started, then scaled from 1 to 3 instances, read by one consumer (C8, I5)."""
    return scenario(
        [
            ActorSpec(
                "producer-1",
                PRODUCER,
                (
                    op(1, "start_process", "proc-1"),
                    op(2, "scale_process", "proc-1", instances=3, memory=512),
                ),
            ),
            consumer("consumer-1", [3, 4], consumer_flavour),
        ],
        sizes=Sizes(
            stale_baselines=0, apps=1, processes=1, tasks=0, service_instances=0, builds=0, legacy=0
        ),
        note="a process scaled while running",
    )
