"""The actors' programs (SPEC S2, S4): each runs the project's real functions — the producer,
cleanup, backfill and a consumer — on its own Engine, parking at the scheduler's gate before
every database interaction. What they did is recorded in the shared `RunRecord`."""

from __future__ import annotations

import importlib
import logging
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from usageledger import db, producer, retention
from usageledger.backfill import BACKFILL_LOCK, backfill_batches
from usageledger.clock import Clock, SimulatedClock
from usageledger.errors import UsageLedgerError
from usageledger.lifecycles import APP_USAGE_EVENTS, EVENT_TABLES
from usageledger.producer.processes import ProcessRow, write_process_event
from usageledger.schema import EVENT_TABLES as EVENT_TABLE_OBJECTS
from usageledger.schema import processes
from usageledger.simulator.checker import (
    CleanupObservation,
    CursorMove,
    LockHold,
    RowInfo,
    TaskEnding,
)
from usageledger.simulator.consumers import ConsumerProgram, StepClock
from usageledger.simulator.scenario import (
    PROCESS_OPS,
    SERVICE_OPS,
    TASK_OPS,
    ActorSpec,
    Operation,
    Scenario,
)
from usageledger.simulator.scheduler import (
    ActorRuntime,
    HistoryEntry,
    Scheduler,
    SimulatedCrash,
)
from usageledger.simulator.truth import CommittedOp

log = logging.getLogger(__name__)

#: The retention module itself (the package re-exports a function of the same name); looked up
#: at call time so that a test's patch of a pass (S8) applies to the simulator too.
cleanup_module = importlib.import_module(retention.prune_superseded_openings.__module__)


class RecordingClock:
    """The simulated clock as one operation sees it: remembers the last time it handed out,
    which is the created_at of the operation's event (the platform's own timestamp, P5)."""

    def __init__(self, clock: SimulatedClock) -> None:
        self.clock = clock
        self.last: datetime | None = None

    def now(self, conn: object = None) -> datetime:
        self.last = self.clock.now()
        return self.last


@attrs.define
class RunRecord:
    """Everything the actors and the observer record during a run."""

    scenario: Scenario
    clock: SimulatedClock
    consumer_clock: StepClock
    scheduler: Scheduler
    control: Engine
    snapshot: Callable[[], tuple[RowInfo, ...]]
    seen: Callable[[], tuple[RowInfo, ...]] = tuple
    """Every row the observer has seen become visible so far (with its step)."""
    guids: dict[str, str] = attrs.Factory(dict)
    plans: dict[str, str] = attrs.Factory(dict)
    apps: dict[str, str] = attrs.Factory(dict)
    builds: dict[str, tuple[str, str]] = attrs.Factory(dict)
    space_guid: str = ""
    committed: list[CommittedOp] = attrs.Factory(list)
    task_endings: list[TaskEnding] = attrs.Factory(list)
    lock_holds: list[LockHold] = attrs.Factory(list)
    open_holds: dict[str, int] = attrs.Factory(dict)
    hold_sessions: dict[str, int] = attrs.Factory(dict)
    """Per backfill holding the lock, the server session the lock lives on (0 on SQLite)."""
    cleanups: list[CleanupObservation] = attrs.Factory(list)
    moves: dict[str, list[CursorMove]] = attrs.Factory(dict)
    coverage: Counter[str] = attrs.Factory(Counter)
    task_states: dict[str, str] = attrs.Factory(dict)
    pruned: int = 0
    delete_attempts: dict[str, set[tuple[str, int]]] = attrs.Factory(dict)
    """Per cleanup actor, the (table, id) pairs its DELETE statements named in this op."""

    def note(self, actor: str, phase: str, what: str, detail: str = "", **fields: Any) -> None:
        """An operation's outcome (or an info note) in the history."""
        self.scheduler.note(actor, phase, "op", what, detail=detail, **fields)

    @property
    def history(self) -> list[HistoryEntry]:
        return self.scheduler.history

    def start_of(self, op: Operation) -> datetime:
        return self.scenario.start + timedelta(seconds=op.at)

    def release_hold(self, actor: str, step: int) -> None:
        self.hold_sessions.pop(actor, None)
        acquired = self.open_holds.pop(actor, None)
        if acquired is not None:
            self.lock_holds.append(LockHold(actor, acquired, step))


def watch_deletes(record: RunRecord, name: str, engine: Engine) -> None:
    """Note the ids each DELETE of this engine names (cleanup deletes by explicit id lists, R8),
    so that I6 blames a cleanup only for its own deletions."""

    @event.listens_for(engine, "before_cursor_execute")
    def _note(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        words = statement.split()
        if len(words) < 3 or words[0].upper() != "DELETE":
            return
        table = words[2].strip('"`')
        values = parameters.values() if isinstance(parameters, dict) else parameters or ()
        flat: list[object] = []
        for value in values:  # PostgreSQL gets the ids as one array parameter
            flat.extend(value if isinstance(value, list | tuple) else [value])
        attempts = record.delete_attempts.setdefault(name, set())
        attempts.update((table, v) for v in flat if isinstance(v, int))


def _failed(record: RunRecord, rt: ActorRuntime, what: str, exc: BaseException) -> None:
    if isinstance(exc, SimulatedCrash):
        rt.crashed()
        record.note(rt.name, "fail", what, "crashed (fault)")
    else:
        record.note(rt.name, "fail", what, db.one_line(exc) if isinstance(exc, Exception) else "")


# --- the producer ---------------------------------------------------------------------------


def _kind_of_op(op: str) -> str:
    if op in PROCESS_OPS:
        return "app"
    if op in TASK_OPS:
        return "task"
    if op in SERVICE_OPS:
        return "service"
    return "staging"


def _call_producer(record: RunRecord, e: Engine, op: Operation, clock: Clock) -> Any:
    label = op.target or ""
    name = op.op
    if name == "create_service_instance":
        chosen_plan = record.plans.get(op.plan) if op.plan else None
        created = producer.create_service_instance(
            e, record.space_guid, label, plan_guid=chosen_plan, clock=clock
        )
        record.guids[label] = created
        return True
    if name in ("start_staging", "finish_staging"):
        app_guid, package_guid = record.builds[label]
        if name == "start_staging":
            producer.start_staging(e, app_guid, package_guid, clock=clock)
        else:
            producer.finish_staging(e, app_guid, package_guid, clock=clock)
        return True
    guid = record.guids.get(label)
    if guid is None:
        raise LookupError(f"{label} does not exist (its creation did not commit)")
    if name == "start_process":
        producer.start_process(e, guid, clock=clock)
    elif name == "stop_process":
        producer.stop_process(e, guid, clock=clock)
    elif name == "scale_process":
        producer.scale_process(e, guid, instances=op.instances, memory=op.memory, clock=clock)
    elif name == "destroy_process":
        producer.destroy_process(e, guid, clock=clock)
    elif name == "run_task":
        producer.run_task(e, guid, clock=clock)
    elif name == "cancel_task":
        producer.cancel_task(e, guid, clock=clock)
    elif name == "succeed_task":
        return producer.succeed_task(e, guid, clock=clock)
    elif name == "fail_task":
        return producer.fail_task(e, guid, clock=clock)
    elif name == "destroy_task":
        return producer.destroy_task(e, guid, clock=clock)
    elif name == "update_service_instance":
        plan = record.plans.get(op.plan) if op.plan else None
        return producer.update_service_instance(e, guid, name=op.name, plan_guid=plan, clock=clock)
    elif name == "delete_service_instance":
        producer.delete_service_instance(e, guid, clock=clock)
    else:
        raise ValueError(f"unknown producer operation {name}")
    return True


def producer_program(record: RunRecord, spec: ActorSpec) -> Callable[[ActorRuntime], None]:
    def program(rt: ActorRuntime) -> None:
        started = rt.plan([record.start_of(o) for o in spec.operations])
        for index, op in enumerate(spec.operations):
            if rt.abandoned:
                return
            what = f"{op.op} {op.target}"
            rt.await_op(record.start_of(op), what)
            started(index)
            start_step = rt.scheduler.step
            clock = RecordingClock(record.clock)
            before = record.task_states.get(op.target or "", "PENDING")
            try:
                result = _call_producer(record, rt.engine, op, clock)
            except (SimulatedCrash, UsageLedgerError, SQLAlchemyError, LookupError) as exc:
                _failed(record, rt, what, exc)
                continue
            at = clock.last or record.clock.now()
            label = op.target or ""
            kind = _kind_of_op(op.op)
            committed = CommittedOp(
                step=rt.scheduler.step,
                actor=rt.name,
                kind=kind,
                guid=record.guids.get(label, label),
                label=label,
                op=op.op,
                at=at,
                instances=op.instances,
                memory=op.memory,
                plan_guid=record.plans.get(op.plan) if op.plan else None,
                wrote_event=clock.last is not None,
            )
            record.committed.append(committed)
            record.note(rt.name, "ok", what, at.isoformat())
            if kind == "task":
                if op.op == "run_task":
                    record.task_states[label] = "RUNNING"
                elif op.op == "cancel_task":
                    record.task_states[label] = "CANCELING"
                else:
                    record.task_states[label] = "ENDED"
                    record.task_endings.append(
                        TaskEnding(
                            op=committed,
                            start_step=start_step,
                            wrote_stop=bool(result),
                            was_running=before in ("RUNNING", "CANCELING"),
                        )
                    )

    return program


# --- cleanup ----------------------------------------------------------------------------------


def cleanup_program(record: RunRecord, spec: ActorSpec) -> Callable[[ActorRuntime], None]:
    days = record.scenario.cutoff_age_in_days

    def program(rt: ActorRuntime) -> None:
        started = rt.plan([record.start_of(o) for o in spec.operations])
        for index, op in enumerate(spec.operations):
            if rt.abandoned:
                return
            variant = op.variant or "current"
            what = f"cleanup ({variant})"
            rt.await_op(record.start_of(op), what)
            started(index)
            start_step = rt.scheduler.step
            cutoff = record.clock.now() - timedelta(days=days)
            record.delete_attempts[rt.name] = set()
            before = record.snapshot()
            crashed = False
            batch_size = op.batch_size or 1000
            try:
                if variant == "crash_between_passes":
                    # R7: pass 1 of the app table, then the process dies before pass 2. The passes
                    # are looked up on the module so that a test's patch (S8) applies here too.
                    plan = cleanup_module.plan_cleanup(rt.engine, APP_USAGE_EVENTS, cutoff=cutoff)
                    done = cleanup_module.prune_superseded_openings(
                        rt.engine, plan, batch_size=batch_size
                    )
                    record.pruned += done.total
                    crashed = True
                    record.coverage["crash_between_passes"] += 1
                else:
                    results = cleanup_module.cleanup_tables(
                        rt.engine,
                        list(EVENT_TABLES),
                        cutoff_age_in_days=days,
                        keep_running_records=variant != "old",
                        batch_size=batch_size,
                        clock=record.clock,
                    )
                    record.pruned += sum(r.deleted for r in results)
                    if variant == "old":
                        record.coverage["old_cleanup"] += 1
                record.note(rt.name, "ok", what)
            except (SimulatedCrash, UsageLedgerError, SQLAlchemyError) as exc:
                _failed(record, rt, what, exc)
                crashed = True
            record.cleanups.append(
                CleanupObservation(
                    actor=rt.name,
                    variant="old" if variant == "old" else variant,
                    start_step=start_step,
                    end_step=rt.scheduler.step,
                    cutoff=cutoff,
                    before=before,
                    after=record.snapshot(),
                    crashed=crashed,
                    attempted=frozenset(record.delete_attempts.pop(rt.name, set())),
                )
            )

    return program


# --- backfill ---------------------------------------------------------------------------------


class _CrashHere(Exception):
    pass


def run_backfill(record: RunRecord, rt: ActorRuntime, op: Operation) -> None:
    """One backfill operation: what `backfill()` does, with the lock taken here so that the
    run's lock hold is on record (I8) and a crash can hit between batches (S4)."""
    what = "backfill" + (
        f" (crash after {op.crash_after_batches} batches)" if op.crash_after_batches else ""
    )
    lock: db.RunLock | None = None
    try:
        lock = db.try_run_lock(rt.engine, BACKFILL_LOCK)
        if lock is None:
            record.coverage["two_backfills_at_once"] += 1
            record.note(rt.name, "info", what, "lock held by another backfill")
            return
        record.open_holds[rt.name] = rt.scheduler.step
        holder = lock.connection
        record.hold_sessions[rt.name] = (
            db.dbapi_session_id(holder.connection.dbapi_connection) if holder is not None else 0
        )
        added = batches = 0
        for report in backfill_batches(
            rt.engine, lock, batch_size=op.batch_size or 1000, clock=record.clock
        ):
            batches += 1
            added += report.inserted
            if report.phase == "repair" and report.inserted:
                record.coverage["repair_fired"] += report.inserted
            if op.crash_after_batches and batches >= op.crash_after_batches:
                record.coverage["crash_mid_backfill"] += 1
                raise _CrashHere()
        record.note(rt.name, "ok", what, f"{added} rows in {batches} batches")
    except _CrashHere:
        record.note(rt.name, "fail", what, "crashed mid-backfill (fault)")
    except (SimulatedCrash, UsageLedgerError, SQLAlchemyError) as exc:
        _failed(record, rt, what, exc)
    finally:
        if lock is not None:
            if lock.connection is not None:
                # The server frees the lock at the unlock statement; the connection's close
                # comes a step later, and another backfill may rightly take the lock in
                # between, so the hold ends at the unlock (I8).
                def unlocked(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
                    if db.is_run_unlock(statement):
                        record.release_hold(rt.name, rt.scheduler.step)

                sa.event.listen(lock.connection, "after_cursor_execute", unlocked)
            try:
                lock.release()
            except SimulatedCrash:
                rt.crashed()
            record.release_hold(rt.name, rt.scheduler.step)


def backfill_program(record: RunRecord, spec: ActorSpec) -> Callable[[ActorRuntime], None]:
    def program(rt: ActorRuntime) -> None:
        started = rt.plan([record.start_of(o) for o in spec.operations])
        for index, op in enumerate(spec.operations):
            if rt.abandoned:
                return
            rt.await_op(record.start_of(op), "backfill")
            started(index)
            run_backfill(record, rt, op)

    return program


# --- the destructive purge-and-reseed (S2) ----------------------------------------------------


def purge_and_reseed(engine: Engine, clock: Clock) -> int:
    """What operators ran on the platform: empty both usage-event tables, then write one
    STARTED per started process, its previous_* equal to the current values (the shape of a
    restatement), in one transaction. Tasks and service instances get nothing: the backfill
    must seed their baselines afterwards (B9). Rows are deleted rather than TRUNCATEd so that
    ids are never reused (SPEC §1.1; TRUNCATE restarts AUTO_INCREMENT on MariaDB).
    Returns the number of STARTED rows written."""
    written = 0
    with db.transaction(engine) as conn:
        for table in EVENT_TABLE_OBJECTS.values():
            conn.execute(table.delete())
        started = conn.execute(
            sa.select(
                processes.c.guid,
                processes.c.app_guid,
                processes.c.type,
                processes.c.state,
                processes.c.instances,
                processes.c.memory,
            )
            .where(processes.c.state == "STARTED")
            .order_by(processes.c.id)
        ).all()
        for row in started:
            process = ProcessRow(**row._asdict())
            write_process_event(
                conn,
                clock,
                state="STARTED",
                before=process,
                after=process,
                restate_package_state=True,
            )
            written += 1
    return written


def purge_program(record: RunRecord, spec: ActorSpec) -> Callable[[ActorRuntime], None]:
    """The operator: a purge-and-reseed, then (as B9 asks) a backfill. Between the two the
    platform runs on: a task ending meanwhile has no start evidence and writes no stop (P2)."""

    def program(rt: ActorRuntime) -> None:
        started = rt.plan([record.start_of(o) for o in spec.operations])
        for index, op in enumerate(spec.operations):
            if rt.abandoned:
                return
            rt.await_op(record.start_of(op), op.op)
            started(index)
            if op.op == "backfill":
                run_backfill(record, rt, op)
                continue
            start_step = rt.scheduler.step
            before = record.snapshot()
            crashed = False
            try:
                written = purge_and_reseed(rt.engine, record.clock)
                record.coverage["purge_and_reseed"] += 1
                record.note(rt.name, "ok", "purge_and_reseed", f"{written} STARTED reseeded")
            except (SimulatedCrash, UsageLedgerError, SQLAlchemyError) as exc:
                _failed(record, rt, "purge_and_reseed", exc)
                crashed = True
            end_step = rt.scheduler.step
            # Rows that committed after the snapshot but before the DELETE are purged too.
            known = {(r.table, r.id) for r in before}
            before += tuple(
                r
                for r in record.seen()
                if start_step < r.visible_step <= end_step and (r.table, r.id) not in known
            )
            record.cleanups.append(
                CleanupObservation(
                    actor=rt.name,
                    variant="purge",
                    start_step=start_step,
                    end_step=end_step,
                    cutoff=record.clock.now(),
                    before=before,
                    after=record.snapshot(),
                    crashed=crashed,
                )
            )

    return program


# --- consumers --------------------------------------------------------------------------------


def consumer_program(
    record: RunRecord, spec: ActorSpec, consumer: ConsumerProgram
) -> Callable[[ActorRuntime], None]:
    moves = record.moves.setdefault(spec.name, [])

    cursor: dict[str, int] = {}

    def program(rt: ActorRuntime) -> None:
        started = rt.plan([record.start_of(o) for o in spec.operations])
        for index, op in enumerate(spec.operations):
            if rt.abandoned:
                return
            rt.await_op(record.start_of(op), op.op)
            started(index)
            if op.op == "restart":
                consumer.restart()
                record.coverage["consumer_restart"] += 1
                record.note(rt.name, "info", "restart")
                continue
            try:
                outcome = consumer.poll(rt.engine, record.consumer_clock, op.batch_size or 100)
            except (SimulatedCrash, UsageLedgerError, SQLAlchemyError) as exc:
                _failed(record, rt, "poll", exc)
                continue
            before = tuple(sorted(cursor.items()))
            for table, position in outcome.positions:
                moves.append(CursorMove(spec.name, table, rt.last_step, position))
                cursor[table] = position
            record.coverage["consumer_waited_at_gap"] += outcome.waited_at_gap
            record.coverage["consumer_behind_retention"] += outcome.fell_behind
            record.note(
                rt.name,
                "ok",
                "poll",
                f"{outcome.events_applied} events applied"
                + (f", waited at a gap {outcome.waited_at_gap}x" if outcome.waited_at_gap else "")
                + (", fell behind retention" if outcome.fell_behind else ""),
                cursor_before=before,
                cursor_after=tuple(sorted(cursor.items())),
            )

    return program
