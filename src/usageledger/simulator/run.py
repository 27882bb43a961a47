"""One simulation run (SPEC §8): set up the platform, start the actors under the scheduler,
observe every commit, finish with a quiescent backfill and a drain of every consumer, then
build the truth and check every invariant.

`run_scenario` needs a database with the schema at head; it empties it first (ids restarted),
so give it a scratch database — `scratch_database` makes one beside a server URL.
"""

from __future__ import annotations

import bisect
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError

from usageledger import db, migrations, producer
from usageledger.backfill import backfill
from usageledger.clock import SimulatedClock
from usageledger.errors import BadInputError, DatabaseUnavailableError, StuckRunError
from usageledger.lifecycles import (
    APP_USAGE_EVENTS,
    LIFECYCLES,
    SERVICE_USAGE_EVENTS,
)
from usageledger.lifecycles import EVENT_TABLES as lifecycle_tables
from usageledger.retention import cleanup_tables
from usageledger.schema import EVENT_TABLES, metadata, processes
from usageledger.simulator.actors import (
    RunRecord,
    backfill_program,
    cleanup_program,
    consumer_program,
    producer_program,
    purge_program,
    watch_deletes,
)
from usageledger.simulator.checker import (
    CheckInput,
    CheckReport,
    CleanupObservation,
    ConsumerView,
    CursorMove,
    RowInfo,
    check,
)
from usageledger.simulator.consumers import (
    ConsumerFactory,
    ConsumerProgram,
    StepClock,
    reference_factory,
)
from usageledger.simulator.scenario import (
    BACKFILL,
    CLEANUP,
    CONSUMER,
    OLD_CLEANUP,
    PLANS,
    PRODUCER,
    PURGE,
    Scenario,
    ScheduleEntry,
    layout_of,
)
from usageledger.simulator.scheduler import HistoryEntry, Scheduler, SchedulerStats
from usageledger.simulator.truth import CommittedOp, InitialSize, Truth, build_truth

log = logging.getLogger(__name__)

#: Coverage counters a verification run reports (S9); zero means "never exercised".
COVERAGE_KEYS = (
    "baseline_after_stop",
    "out_of_order_commit",
    "late_row_below_cursor",
    "consumer_waited_at_gap",
    "blocked_lock",
    "repair_fired",
    "crash_between_passes",
    "crash_mid_backfill",
    "kill_connection",
    "consumer_behind_retention",
    "consumer_restart",
    "two_backfills_at_once",
    "old_cleanup",
    "purge_and_reseed",
)

#: SIMULATOR.md's table: which races each backend can show.
BACKEND_CAPABILITIES: dict[str, tuple[str, ...]] = {
    "sqlite": (
        "backfill racing a stop between batches",
        "two backfills adding the same ending between batches",
        "cleanup deleting an ending before its opening (separate transactions)",
        "consumer rules, idempotence, repair fixpoint, lock freed on a killed session",
    ),
    "postgresql": (
        "backfill INSERT…SELECT racing a stop, ending at a lower id",
        "the same race between batches",
        "ids committed out of order under a polling consumer",
        "two backfills adding the same missing ending",
        "cleanup deleting an ending before its opening",
        "consumer rules, idempotence, repair fixpoint, lock freed on a killed session",
    ),
    "mariadb": (
        "backfill INSERT…SELECT racing a stop (READ COMMITTED batches)",
        "the same race between batches",
        "ids committed out of order under a polling consumer",
        "two backfills adding the same missing ending",
        "cleanup deleting an ending before its opening",
        "consumer rules, idempotence, repair fixpoint, lock freed on a killed session",
    ),
}
BACKEND_CANNOT: dict[str, tuple[str, ...]] = {
    "sqlite": (
        "ids committed out of order (one writer at a time)",
        "a statement racing another inside one INSERT…SELECT",
    ),
    "postgresql": (),
    "mariadb": ("the stop under REPEATABLE READ next-key locks (it waits: recorded as blocked)",),
}


@attrs.frozen
class RunResult:
    """A finished run: the scenario with its recorded schedule, the check, and the evidence."""

    scenario: Scenario
    backend: str
    report: CheckReport
    truth: Truth
    consumers: tuple[ConsumerView, ...]
    observed: tuple[RowInfo, ...]
    final_rows: tuple[RowInfo, ...]
    coverage: Mapping[str, int]
    stats: SchedulerStats
    history: tuple[HistoryEntry, ...]
    counts: Mapping[str, int]
    elapsed_seconds: float
    start: datetime
    cleanups: tuple[CleanupObservation, ...] = ()
    plan_names: Mapping[str, str] = attrs.field(factory=dict)
    """Service plan guid → the plan's name in the scenario (for the picture)."""

    @property
    def valid(self) -> bool:
        return self.report.verdict.value == "valid"


# --- rows -------------------------------------------------------------------------------------


def _row_info(table: str, row: Any, step: int) -> RowInfo:
    kind: str | None = None
    key: str | None = None
    for lc in LIFECYCLES:
        if lc.table == table and row.state in lc.states:
            kind = lc.kind
            value = getattr(row, lc.key_column)
            key = str(value) if value is not None else None
            break
    created = row.created_at
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return RowInfo(
        table=table,
        id=int(row.id),
        state=str(row.state),
        kind=kind,
        key=key,
        created_at=created,
        previous_state=row.previous_state if table == APP_USAGE_EVENTS else None,
        visible_step=step,
    )


def _columns(table: sa.Table) -> list[sa.ColumnElement[Any]]:
    names = ["id", "state", "created_at"]
    if table.name == APP_USAGE_EVENTS:
        names += ["previous_state", "app_guid", "task_guid"]
    else:
        names += ["service_instance_guid"]
    return [table.c[n] for n in names]


def read_rows(engine: Engine, step: int = 0) -> tuple[RowInfo, ...]:
    """Every row of both event tables, as the checker sees rows."""
    rows: list[RowInfo] = []
    with db.transaction(engine, read_only=True) as conn:
        for name, table in EVENT_TABLES.items():
            for row in conn.execute(sa.select(*_columns(table)).order_by(table.c.id)):
                rows.append(_row_info(name, row, step))
    return tuple(rows)


class Observer:
    """Sees every row become visible: after each commit it reads the ids above the highest seen
    and the holes below it that may still be in flight (ids are allocated before commit, C2)."""

    MAX_HOLES = 2000

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.rows: dict[tuple[str, int], RowInfo] = {}
        self.highest: dict[str, int] = {name: 0 for name in EVENT_TABLES}
        self.holes: dict[str, set[int]] = {name: set() for name in EVENT_TABLES}
        self.out_of_order = 0

    def observe(self, step: int) -> None:
        with self.engine.connect() as conn:
            for name, table in EVENT_TABLES.items():
                condition = table.c.id > self.highest[name]
                holes = sorted(self.holes[name])[-self.MAX_HOLES :]
                if holes:
                    condition = sa.or_(condition, table.c.id.in_(holes))
                found = conn.execute(
                    sa.select(*_columns(table)).where(condition).order_by(table.c.id)
                ).all()
                for row in found:
                    info = _row_info(name, row, step)
                    if info.id < self.highest[name]:
                        self.out_of_order += 1
                    self.rows[(name, info.id)] = info
                    self.holes[name].discard(info.id)
                if found:
                    top = max(int(r.id) for r in found)
                    if top > self.highest[name]:
                        self.holes[name].update(
                            i
                            for i in range(self.highest[name] + 1, top)
                            if (name, i) not in self.rows
                        )
                        self.highest[name] = top
            conn.rollback()

    def observed(self) -> tuple[RowInfo, ...]:
        return tuple(self.rows[k] for k in sorted(self.rows))


# --- databases ----------------------------------------------------------------------------------


@contextmanager
def scratch_database(server_url: str | URL, *, keep: bool = False) -> Iterator[URL]:
    """A fresh database with the schema at head beside `server_url` (never that database
    itself: a run empties its tables), dropped afterwards unless `keep`."""
    name = f"usageledger_sim_{uuid.uuid4().hex[:10]}"
    try:
        url = db.create_database(server_url, name)
    except SQLAlchemyError as exc:
        raise DatabaseUnavailableError(
            f"cannot create a scratch database on {db.display_url(server_url)}: {db.one_line(exc)}"
        ) from None
    try:
        engine = db.make_engine(url, create=True)
        try:
            db.check_connection(engine)  # a server usageledger does not run on: one line
            migrations.upgrade(engine)
        finally:
            engine.dispose()
        yield url
    finally:
        if not keep:
            with suppress(Exception):
                db.drop_database(url)


def _fresh_tables(engine: Engine) -> None:
    db.truncate_tables(engine, list(metadata.sorted_tables))


# --- setup --------------------------------------------------------------------------------------


def _setup_platform(record: RunRecord, engine: Engine) -> dict[str, tuple[str, str, InitialSize]]:
    """The resources that exist before the actors start; nothing here writes an event."""
    layout = layout_of(record.scenario.sizes)
    org = producer.create_organization(engine, "sim-org")
    record.space_guid = producer.create_space(engine, org, "sim-space")
    broker = producer.create_service_broker(engine, "sim-broker")
    offering = producer.create_service(engine, broker, "sim-db")
    for plan in PLANS:
        record.plans[plan] = producer.create_service_plan(engine, offering, plan)
    for app in layout.apps:
        guid = producer.create_app(engine, record.space_guid, app)
        package = producer.create_package(engine, guid)
        producer.create_droplet(engine, guid, package)
        record.apps[app] = guid
    initial: dict[str, tuple[str, str, InitialSize]] = {}
    for label, app, process_type in layout.processes:
        guid = producer.create_process(
            engine, record.apps[app], type=process_type, instances=1, memory=256
        )
        record.guids[label] = guid
        initial[guid] = ("app", label, InitialSize(1, 256))
    for label, app, memory in layout.tasks:
        guid = producer.create_task(engine, record.apps[app], label, memory_in_mb=memory)
        record.guids[label] = guid
        initial[guid] = ("task", label, InitialSize(1, memory))
    for label, app in layout.builds:
        app_guid = record.apps[app]
        record.builds[label] = (app_guid, producer.create_package(engine, app_guid))
    _setup_legacy(record, engine, layout)
    return initial


def _setup_legacy(record: RunRecord, engine: Engine, layout: Any) -> None:
    """Resources that ran long before the scenario starts and whose start events the old
    delete-everything-old cleanup removed: nothing on record says they run (SPEC §0). And
    stale baselines: processes that started then, and stopped two days before the run while
    an older backfill (one without the repair) seeded them a baseline (SPEC §5's race)."""
    scenario = record.scenario
    if not (
        layout.legacy_processes
        or layout.legacy_services
        or layout.legacy_tasks
        or layout.stale_processes
    ):
        return
    moment = scenario.start - timedelta(days=scenario.cutoff_age_in_days + 10)
    legacy_clock = SimulatedClock(moment)
    if layout.stale_processes:
        _setup_stale_baselines(record, engine, layout.stale_processes, moment)
    for label in layout.legacy_processes:
        guid = record.guids[label]
        producer.start_process(engine, guid, clock=legacy_clock)
        record.committed.append(
            CommittedOp(0, "setup", "app", guid, label, "start_process", moment, wrote_event=True)
        )
    for label in layout.legacy_tasks:
        guid = record.guids[label]
        producer.run_task(engine, guid, clock=legacy_clock)
        record.task_states[label] = "RUNNING"
        record.committed.append(
            CommittedOp(0, "setup", "task", guid, label, "run_task", moment, wrote_event=True)
        )
    for label in layout.legacy_services:
        plan = record.plans[PLANS[0]]
        guid = producer.create_service_instance(
            engine, record.space_guid, label, plan_guid=plan, clock=legacy_clock
        )
        record.guids[label] = guid
        record.committed.append(
            CommittedOp(
                0,
                "setup",
                "service",
                guid,
                label,
                "create_service_instance",
                moment,
                plan_guid=plan,
                wrote_event=True,
            )
        )
    cleanup_tables(
        engine,
        list(lifecycle_tables),
        cutoff_age_in_days=scenario.cutoff_age_in_days,
        keep_running_records=False,
        keep_at_least_one_record=False,
        clock=SimulatedClock(scenario.start),
    )


def _setup_stale_baselines(
    record: RunRecord, engine: Engine, labels: tuple[str, ...], started: datetime
) -> None:
    """Each process starts at `started` (the old cleanup prunes that start later) and stops
    two days before the run. The older backfill read it as still running while its stop
    committed; the setup re-enacts that read by showing the seed the process as STARTED, so
    the baseline is the seed's own (B4) and follows the STOPPED by id. Nothing else runs yet,
    so the seed writes no other baseline."""
    stopped = record.scenario.start - timedelta(days=2)
    guids = [record.guids[label] for label in labels]
    for label, guid in zip(labels, guids, strict=True):
        producer.start_process(engine, guid, clock=SimulatedClock(started))
        producer.stop_process(engine, guid, clock=SimulatedClock(stopped))
        for op, at in (("start_process", started), ("stop_process", stopped)):
            record.committed.append(
                CommittedOp(0, "setup", "app", guid, label, op, at, wrote_event=True)
            )
    stale_read = processes.update().where(processes.c.guid.in_(guids))
    with db.transaction(engine) as conn:
        conn.execute(stale_read.values(state="STARTED"))
    backfill(engine, kinds=("app",), clock=SimulatedClock(stopped + timedelta(seconds=30)))
    with db.transaction(engine) as conn:
        conn.execute(stale_read.values(state="STOPPED"))


# --- the run ------------------------------------------------------------------------------------


def simulation_engine(url: str | URL) -> Engine:
    """The engine a run works through: no pre-ping (a killed session surfaces as the error it
    is, and every step saves a trip), a 2 s SQLite busy timeout (see the scheduler), a pool
    large enough for every actor. Each actor gets its own view of it (`execution_options()`,
    carrying the actor's gate) that shares its pool, dialect and compiled-statement cache; pass
    one to several `run_scenario` calls to reuse them across runs."""
    engine = db.make_engine(url, pool_pre_ping=False, pool_size=20, max_overflow=20)
    db.set_sqlite_busy_timeout(engine, 2000)
    with engine.connect():
        pass  # the first connect initialises the dialect before any gate is installed
    return engine


def run_scenario(
    scenario: Scenario,
    url: str | URL,
    *,
    workdir: Path,
    consumer_factories: Mapping[str, ConsumerFactory] | None = None,
    progress: Callable[[int], None] | None = None,
    ledger_template: Path | None = None,
    engine: Engine | None = None,
) -> RunResult:
    """Run `scenario` against the database at `url` (schema at head; its tables are emptied).
    For many short runs: `ledger_template`, an empty migrated consumer ledger to copy, and
    `engine`, a `simulation_engine(url)` to reuse (the caller disposes it)."""
    started = time.perf_counter()
    factories: dict[str, ConsumerFactory] = {
        "reference": reference_factory(
            timedelta(seconds=scenario.consumer_grace_steps), ledger_template
        )
    }
    factories.update(consumer_factories or {})
    for actor in scenario.actors:
        if actor.kind == CONSUMER and (actor.flavour or "reference") not in factories:
            raise BadInputError(
                f"scenario actor {actor.name} is a {actor.flavour!r} consumer, which this run "
                "does not provide (wrong consumers live in the test suite only)"
            )
    workdir.mkdir(parents=True, exist_ok=True)
    own_engine = engine is None
    control = engine if engine is not None else simulation_engine(url)
    backend = db.backend_of(control)
    _fresh_tables(control)
    clock = SimulatedClock(scenario.start)
    rng = random.Random(scenario.seed)
    # Swarm-style draw order: the scenario owns the seed's first draws, the schedule the rest.
    rng.random()
    scheduler = Scheduler(
        control=control,
        clock=clock,
        rng=rng,
        strategy=scenario.strategy,
        replay=scenario.schedule,
        kill_probability=scenario.faults.kill_probability
        if scenario.faults.kill_connection
        else 0.0,
    )
    observer = Observer(control)
    consumer_clock = StepClock(scenario.start, lambda: scheduler.step)
    record = RunRecord(
        scenario=scenario,
        clock=clock,
        consumer_clock=consumer_clock,
        scheduler=scheduler,
        control=control,
        snapshot=lambda: read_rows(control),
        seen=observer.observed,
    )

    def on_commit(actor: Any, step: int) -> None:
        if actor.kind in (PRODUCER, BACKFILL, PURGE):
            observer.observe(step)
        if progress is not None:
            progress(step)

    def on_kill(victim: Any, step: int) -> None:
        # A backfill's transactions run on the session that holds its lock
        # (db.locked_transaction), so killing one kills the lock's session, and the server
        # frees the lock with it: the hold ends here, not when run_backfill gets to release
        # it, or a second backfill taking the lock meanwhile would count as two at once (I8).
        session = record.hold_sessions.get(victim.name)
        if session and session == victim.session_id:
            record.release_hold(victim.name, step)
        record.coverage["kill_connection"] += 1

    scheduler.on_commit = on_commit
    scheduler.on_kill = on_kill

    def discard_killed(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        # A killed session's connection may have gone back to the shared pool unnoticed.
        try:
            session = db.dbapi_session_id(dbapi_connection)
        except Exception as exc:  # a connection too broken to say who it is
            raise DisconnectionError(str(exc)) from exc
        if session in scheduler.killed_sessions:
            scheduler.killed_sessions.discard(session)
            raise DisconnectionError(f"session {session} was killed by the simulator")

    event.listen(control, "checkout", discard_killed)
    initial = _setup_platform(record, control)
    observer.observe(0)  # rows the setup left (stale baselines) were there before any actor

    consumers: dict[str, ConsumerProgram] = {}
    programs = {}
    unknown = ""
    try:
        for spec in scenario.actors:
            actor_engine = control.execution_options()
            runtime = scheduler.add(spec.name, spec.kind, actor_engine)
            if spec.kind == PRODUCER:
                programs[spec.name] = producer_program(record, spec)
            elif spec.kind in (CLEANUP, OLD_CLEANUP):
                watch_deletes(record, spec.name, actor_engine)
                programs[spec.name] = cleanup_program(record, spec)
            elif spec.kind == BACKFILL:
                programs[spec.name] = backfill_program(record, spec)
            elif spec.kind == PURGE:
                programs[spec.name] = purge_program(record, spec)
            else:
                consumer = factories[spec.flavour or "reference"](spec.name, workdir)
                consumers[spec.name] = consumer
                programs[spec.name] = consumer_program(record, spec, consumer)
            del runtime
        scheduler.start(programs)
        try:
            scheduler.run()
        except StuckRunError as exc:
            unknown = str(exc)
            log.warning("run stuck: %s", exc)
        finally:
            scheduler.abandon()
        for holder in sorted(record.open_holds):  # an abandoned run's holds end here
            record.release_hold(holder, scheduler.step)

        # The quiescent end: every actor is done. A final backfill is the repair that I3 and I7
        # refer to; a second one must add nothing (B7). Then every consumer drains.
        final_step = scheduler.step + 1
        added = []
        for _ in range(2):
            result = backfill(control, batch_size=500, clock=clock, wait_for_lock=True)
            added.append(result.rows_added)
            record.coverage["repair_fired"] += (
                sum(result.kind(k).repaired for k in ("app", "task", "service"))
                if len(added) == 1
                else 0
            )
            observer.observe(final_step)
        views = []
        for spec in scenario.actors:
            if spec.kind != CONSUMER:
                continue
            consumer = consumers[spec.name]
            drained = consumer.drain(
                control, consumer_clock, timedelta(seconds=scenario.consumer_grace_steps)
            )
            moves = record.moves.setdefault(spec.name, [])
            with db.transaction(control, read_only=True) as conn:
                for name, table in EVENT_TABLES.items():
                    top = conn.execute(sa.select(sa.func.max(table.c.id))).scalar() or 0
                    moves.append(CursorMove(spec.name, name, final_step + 1, int(top)))
            views.append(
                ConsumerView(
                    name=spec.name,
                    flavour=spec.flavour or "reference",
                    ledger=consumer.ledger(),
                    drained=drained,
                    moves=tuple(moves),
                )
            )
        final_rows = read_rows(control, final_step)
        truth = build_truth(initial, record.committed, clock.now())
        observed = observer.observed()
        data = CheckInput(
            truth=truth,
            consumers=tuple(views),
            observed=observed,
            cleanups=tuple(record.cleanups),
            final_rows=final_rows,
            final_backfills_added=tuple(added),
            lock_holds=tuple(record.lock_holds),
            task_endings=tuple(record.task_endings),
            start=scenario.start,
            outcome_unknown=unknown,
        )
        report = check(data)
        coverage = _coverage(record, observer, truth, scheduler)
        counts = _counts(record, observed, final_rows, views)
    finally:
        for consumer in consumers.values():
            with suppress(Exception):
                consumer.close()
        event.remove(control, "checkout", discard_killed)
        if own_engine:
            control.dispose()
    return RunResult(
        scenario=attrs.evolve(scenario, schedule=tuple(scheduler.schedule))
        if not scenario.schedule
        else scenario,
        backend=backend.value,
        report=report,
        truth=truth,
        consumers=tuple(views),
        observed=observed,
        final_rows=final_rows,
        coverage=coverage,
        stats=scheduler.stats,
        history=tuple(record.history),
        counts=counts,
        elapsed_seconds=time.perf_counter() - started,
        start=scenario.start,
        cleanups=tuple(record.cleanups),
        plan_names={guid: name for name, guid in record.plans.items()},
    )


def _coverage(
    record: RunRecord, observer: Observer, truth: Truth, scheduler: Scheduler
) -> dict[str, int]:
    counts = {key: int(record.coverage.get(key, 0)) for key in COVERAGE_KEYS}
    counts["blocked_lock"] = scheduler.stats.blocked + scheduler.stats.sqlite_writer_waits
    counts["out_of_order_commit"] = observer.out_of_order
    baseline_states = {(lc.table, lc.baseline) for lc in LIFECYCLES}
    after_stop = 0
    for row in observer.rows.values():
        # A baseline (previous_state NULL) for a resource that was not running when seeded.
        if (
            row.key is not None
            and row.previous_state is None
            and (row.table, row.state) in baseline_states
            and not truth.running_at(row.key, row.created_at)
        ):
            after_stop += 1
    counts["baseline_after_stop"] = after_stop
    counts["late_row_below_cursor"] = late_rows_below_cursor(
        observer.rows.values(), [m for moves in record.moves.values() for m in moves]
    )
    return counts


def late_rows_below_cursor(rows: Iterable[RowInfo], moves: Iterable[CursorMove]) -> int:
    """S9: how many rows became visible below what a consumer had already seen — at or below
    its cursor (the race a naive cursor loses, I10), or inside a gap it was waiting at (at one
    of its polls the id after its cursor was not visible yet but a higher id was, and the row
    was not visible either). A correct consumer survives the second kind, so this counts the
    race happening, not a consumer failing under it."""
    rows = list(rows)
    visible_at: dict[tuple[str, int], int] = {(r.table, r.id): r.visible_step for r in rows}
    steps: dict[str, list[int]] = {}
    highest: dict[str, list[int]] = {}
    for r in sorted(rows, key=lambda r: (r.table, r.visible_step)):
        steps.setdefault(r.table, []).append(r.visible_step)
        tops = highest.setdefault(r.table, [])
        tops.append(max(r.id, tops[-1]) if tops else r.id)
    # Per poll and table: the highest id it stood below (the top visible id when it waited at
    # a gap, else its cursor).
    reach: dict[str, list[tuple[int, int]]] = {}
    for m in moves:
        count = bisect.bisect_right(steps.get(m.table, []), m.step)
        top = highest[m.table][count - 1] if count else 0
        after = visible_at.get((m.table, m.position + 1))
        waiting = top > m.position and (after is None or after > m.step)
        reach.setdefault(m.table, []).append((m.step, top if waiting else m.position))
    return sum(
        1
        for r in rows
        if any(step < r.visible_step and r.id <= high for step, high in reach.get(r.table, ()))
    )


def _counts(
    record: RunRecord,
    observed: tuple[RowInfo, ...],
    final_rows: tuple[RowInfo, ...],
    views: list[ConsumerView],
) -> dict[str, int]:
    baseline_states = {(lc.table, lc.baseline) for lc in LIFECYCLES}
    ending_states = {(lc.table, s) for lc in LIFECYCLES for s in lc.endings}
    repair_from = {lc.baseline for lc in LIFECYCLES}
    counts = {
        "events_written": len(observed),
        "app_usage_events": sum(1 for r in observed if r.table == APP_USAGE_EVENTS),
        "service_usage_events": sum(1 for r in observed if r.table == SERVICE_USAGE_EVENTS),
        "events_pruned": len(observed) - len(final_rows),
        "baselines": sum(1 for r in observed if (r.table, r.state) in baseline_states),
        "repairs": sum(
            1
            for r in observed
            if (r.table, r.state) in ending_states and r.previous_state in repair_from
        ),
        "producer_ops_committed": len(record.committed),
        "cleanups": len(record.cleanups),
        "backfill_lock_holds": len(record.lock_holds),
    }
    for view in views:
        counts[f"segments_billed[{view.name}]"] = len(view.ledger.segments)
    return counts


def replay_schedule(scenario: Scenario) -> tuple[ScheduleEntry, ...]:
    return scenario.schedule
