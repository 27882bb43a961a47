"""Tasks (SPEC P2): TASK_STARTED when a task starts running, and a TASK_STOPPED that is written
only when the task's start is on record and no stop is.

The evidence query is the first read of the stop's transaction. Under MariaDB/MySQL REPEATABLE
READ the snapshot is taken at the first read, so a read of anything earlier would hide a
TASK_WAS_RUNNING baseline that a backfill committed between that read and the evidence query, and
the stop would be lost.
"""

from __future__ import annotations

import logging
from enum import StrEnum

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from usageledger.clock import DEFAULT_CLOCK, Clock
from usageledger.db import new_guid
from usageledger.errors import BadInputError, InvalidTransitionError, ResourceNotFoundError
from usageledger.lifecycles import TASK, AppEventState
from usageledger.producer.context import read_app_context
from usageledger.producer.events import write_app_usage_event
from usageledger.producer.resources import require_row
from usageledger.producer.transaction import Bind, one_transaction
from usageledger.schema import app_usage_events, apps, tasks

log = logging.getLogger(__name__)

#: Task rows always say STAGED: a task runs an already staged droplet (Cloud Controller).
TASK_PACKAGE_STATE = "STAGED"


class TaskState(StrEnum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    CANCELING = "CANCELING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


#: States in which a task has not ended; leaving one of them is what may write TASK_STOPPED.
NON_TERMINAL_TASK_STATES = frozenset({TaskState.PENDING, TaskState.RUNNING, TaskState.CANCELING})
TERMINAL_TASK_STATES = frozenset({TaskState.SUCCEEDED, TaskState.FAILED})


@attrs.frozen
class TaskStopEvidence:
    """What the P2 gate found on record for one task."""

    stopped: bool  # a TASK_STOPPED exists
    started: bool  # a TASK_STARTED or TASK_WAS_RUNNING exists

    @property
    def allows_stop(self) -> bool:
        return self.started and not self.stopped


def task_stop_evidence(conn: Connection, task_guid: str) -> TaskStopEvidence:
    """The P2 gate: whether a stop and whether start evidence are on record, in ONE query.

    Callers that write a stop run this as the first read of their transaction.
    """
    is_stop = app_usage_events.c.state.in_(TASK.endings)
    is_start = app_usage_events.c.state.in_(TASK.openings)
    row = conn.execute(
        sa.select(
            sa.func.count(sa.case((is_stop, 1))).label("stops"),
            sa.func.count(sa.case((is_start, 1))).label("starts"),
        ).where(
            app_usage_events.c.task_guid == task_guid,
            sa.or_(is_stop, is_start),
        )
    ).one()
    return TaskStopEvidence(stopped=row.stops > 0, started=row.starts > 0)


@attrs.frozen
class TaskRow:
    guid: str
    app_guid: str
    name: str | None
    state: str
    memory_in_mb: int | None


def _lock_task(conn: Connection, task_guid: str) -> TaskRow:
    # FOR UPDATE reads the latest committed state even under REPEATABLE READ, and makes a second
    # concurrent stop wait and then see a terminal task: never two stops (no-op on SQLite).
    row = conn.execute(
        sa.select(tasks.c.guid, tasks.c.app_guid, tasks.c.name, tasks.c.state, tasks.c.memory_in_mb)
        .where(tasks.c.guid == task_guid)
        .with_for_update()
    ).one_or_none()
    if row is None:
        raise ResourceNotFoundError(f"no task with guid {task_guid!r}")
    return TaskRow(**row._asdict())


def _write_task_event(conn: Connection, clock: Clock, task: TaskRow, state: str) -> None:
    """One P2 row, shaped as Cloud Controller's: app_guid '' and the parent app named."""
    app = read_app_context(conn, task.app_guid)
    memory = task.memory_in_mb or 0
    write_app_usage_event(
        conn,
        clock,
        {
            "state": state,
            "previous_state": task.state,
            "instance_count": 1,
            "previous_instance_count": 1,
            "memory_in_mb_per_instance": memory,
            "previous_memory_in_mb_per_instance": memory,
            "package_state": TASK_PACKAGE_STATE,
            "previous_package_state": TASK_PACKAGE_STATE,
            "app_guid": "",
            "app_name": "",
            "space_guid": app.space_guid,
            "space_name": app.space_name,
            "org_guid": app.org_guid,
            "buildpack_guid": None,
            "buildpack_name": None,
            "parent_app_guid": app.guid,
            "parent_app_name": app.name,
            "process_type": None,
            "task_guid": task.guid,
            "task_name": task.name,
            "package_guid": None,
        },
    )


def create_task(
    bind: Bind, app_guid: str, name: str | None, *, memory_in_mb: int | None = 256
) -> str:
    """Create a PENDING task of the app `app_guid`; writes nothing (P2). Returns its guid."""
    if memory_in_mb is not None and memory_in_mb < 0:
        raise BadInputError(f"memory_in_mb must be >= 0, got {memory_in_mb}")
    with one_transaction(bind) as conn:
        require_row(conn, apps, app_guid, "app")
        guid = new_guid()
        conn.execute(
            tasks.insert().values(
                guid=guid,
                app_guid=app_guid,
                name=name,
                state=TaskState.PENDING.value,
                memory_in_mb=memory_in_mb,
            )
        )
        return guid


def _set_task_state(conn: Connection, task_guid: str, state: TaskState) -> None:
    conn.execute(tasks.update().where(tasks.c.guid == task_guid).values(state=state.value))


def run_task(bind: Bind, task_guid: str, *, clock: Clock = DEFAULT_CLOCK) -> None:
    """PENDING → RUNNING, writing TASK_STARTED (P2)."""
    with one_transaction(bind) as conn:
        task = _lock_task(conn, task_guid)
        if task.state != TaskState.PENDING:
            raise InvalidTransitionError(
                f"task {task_guid!r} is {task.state}; only a PENDING task can start running"
            )
        _set_task_state(conn, task_guid, TaskState.RUNNING)
        _write_task_event(conn, clock, task, AppEventState.TASK_STARTED.value)


def cancel_task(bind: Bind, task_guid: str, *, clock: Clock = DEFAULT_CLOCK) -> None:
    """PENDING or RUNNING → CANCELING; writes nothing, the task still runs (P2, B1).

    Cancelling a CANCELING task changes nothing; an ended task cannot be cancelled. `clock` is
    accepted for a uniform signature.
    """
    with one_transaction(bind) as conn:
        task = _lock_task(conn, task_guid)
        if task.state in TERMINAL_TASK_STATES:
            raise InvalidTransitionError(f"task {task_guid!r} has ended ({task.state})")
        if task.state != TaskState.CANCELING:
            _set_task_state(conn, task_guid, TaskState.CANCELING)


def _end_task(bind: Bind, task_guid: str, clock: Clock, end_state: TaskState | None) -> bool:
    """Move a task to `end_state`, or delete it when `end_state` is None; True iff TASK_STOPPED
    was written. The gate query comes first, before even the task row is read (P2)."""
    with one_transaction(bind) as conn:
        evidence = task_stop_evidence(conn, task_guid)
        task = _lock_task(conn, task_guid)
        if end_state is not None and task.state in TERMINAL_TASK_STATES:
            raise InvalidTransitionError(
                f"task {task_guid!r} has already ended ({task.state}); it cannot become "
                f"{end_state.value}"
            )
        ending = task.state in NON_TERMINAL_TASK_STATES
        write_stop = ending and evidence.allows_stop
        if ending and task.state == TaskState.RUNNING and not evidence.started:
            log.warning(
                "task %s stopped while RUNNING but neither TASK_STARTED nor TASK_WAS_RUNNING is "
                "on record, so no TASK_STOPPED was written; its start was pruned without a "
                "baseline: run `usageledger backfill` to seed baselines for the resources still "
                "running. A consumer that read this task's start before it was pruned still "
                "bills it (docs/operations.md, 'When to run it')",
                task_guid,
            )
        if write_stop:
            _write_task_event(conn, clock, task, AppEventState.TASK_STOPPED.value)
        if end_state is None:
            conn.execute(tasks.delete().where(tasks.c.guid == task_guid))
        else:
            _set_task_state(conn, task_guid, end_state)
        return write_stop


def succeed_task(bind: Bind, task_guid: str, *, clock: Clock = DEFAULT_CLOCK) -> bool:
    """→ SUCCEEDED; True iff the gated TASK_STOPPED was written (P2)."""
    return _end_task(bind, task_guid, clock, TaskState.SUCCEEDED)


def fail_task(bind: Bind, task_guid: str, *, clock: Clock = DEFAULT_CLOCK) -> bool:
    """→ FAILED; True iff the gated TASK_STOPPED was written (P2)."""
    return _end_task(bind, task_guid, clock, TaskState.FAILED)


def destroy_task(bind: Bind, task_guid: str, *, clock: Clock = DEFAULT_CLOCK) -> bool:
    """Delete the task; a non-terminal one gets the gated TASK_STOPPED first (P2)."""
    return _end_task(bind, task_guid, clock, None)
