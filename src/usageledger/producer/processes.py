"""App processes (SPEC P1): an event when a process flips between STOPPED and STARTED, or when a
STARTED process changes instances or memory; nothing for a stopped process's changes."""

from __future__ import annotations

from enum import StrEnum

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from usageledger.clock import DEFAULT_CLOCK, Clock
from usageledger.db import new_guid
from usageledger.errors import BadInputError, ResourceNotFoundError
from usageledger.producer.context import read_app_context
from usageledger.producer.events import write_app_usage_event
from usageledger.producer.resources import require_row
from usageledger.producer.transaction import Bind, one_transaction
from usageledger.schema import apps, processes

#: Cloud Controller does not track a previous package state for processes.
PREVIOUS_PACKAGE_STATE_UNKNOWN = "UNKNOWN"


class ProcessState(StrEnum):
    STARTED = "STARTED"
    STOPPED = "STOPPED"


@attrs.frozen
class ProcessRow:
    guid: str
    app_guid: str
    type: str | None
    state: str
    instances: int | None
    memory: int | None


def _lock_process(conn: Connection, process_guid: str) -> ProcessRow:
    # The platform locks the process row for a state change; a no-op on SQLite, whose writing
    # transactions are serialised by BEGIN IMMEDIATE.
    row = conn.execute(
        sa.select(
            processes.c.guid,
            processes.c.app_guid,
            processes.c.type,
            processes.c.state,
            processes.c.instances,
            processes.c.memory,
        )
        .where(processes.c.guid == process_guid)
        .with_for_update()
    ).one_or_none()
    if row is None:
        raise ResourceNotFoundError(f"no process with guid {process_guid!r}")
    return ProcessRow(**row._asdict())


def write_process_event(
    conn: Connection,
    clock: Clock,
    *,
    state: str,
    before: ProcessRow,
    after: ProcessRow,
    restate_package_state: bool = False,
) -> None:
    """One P1 row: sizes from `after`, previous_* from `before`.

    previous_package_state is UNKNOWN, as Cloud Controller writes it; `restate_package_state`
    repeats the current package state there instead (an operator's reseed restating a run).
    """
    app = read_app_context(conn, after.app_guid)
    write_app_usage_event(
        conn,
        clock,
        {
            "state": state,
            "previous_state": before.state,
            # Legacy rows may hold NULL sizes; the event columns are NOT NULL (as B4 does).
            "instance_count": after.instances or 0,
            "previous_instance_count": before.instances,
            "memory_in_mb_per_instance": after.memory or 0,
            "previous_memory_in_mb_per_instance": before.memory,
            "package_state": app.package_state,
            "previous_package_state": (
                app.package_state if restate_package_state else PREVIOUS_PACKAGE_STATE_UNKNOWN
            ),
            "app_guid": after.guid,
            "app_name": app.name or "",
            "space_guid": app.space_guid,
            "space_name": app.space_name,
            "org_guid": app.org_guid,
            "buildpack_guid": app.buildpack_guid,
            "buildpack_name": app.buildpack_name,
            "parent_app_guid": app.guid,
            "parent_app_name": app.name,
            "process_type": after.type,
            "task_guid": None,
            "task_name": None,
            "package_guid": None,
        },
    )


def _check_size(name: str, value: int | None) -> None:
    if value is not None and value < 0:
        raise BadInputError(f"{name} must be >= 0, got {value}")


def create_process(
    bind: Bind,
    app_guid: str,
    *,
    type: str = "web",
    instances: int | None = 1,
    memory: int | None = 256,
) -> str:
    """Create a STOPPED process of the app `app_guid`; writes nothing (P1). Returns its guid."""
    _check_size("instances", instances)
    _check_size("memory", memory)
    with one_transaction(bind) as conn:
        require_row(conn, apps, app_guid, "app")
        guid = new_guid()
        conn.execute(
            processes.insert().values(
                guid=guid,
                app_guid=app_guid,
                type=type,
                state=ProcessState.STOPPED.value,
                instances=instances,
                memory=memory,
            )
        )
        return guid


def _set_state(bind: Bind, process_guid: str, new_state: ProcessState, clock: Clock) -> None:
    with one_transaction(bind) as conn:
        before = _lock_process(conn, process_guid)
        if before.state == new_state:
            return  # no flip, no event (P1)
        conn.execute(
            processes.update().where(processes.c.guid == process_guid).values(state=new_state.value)
        )
        after = attrs.evolve(before, state=new_state.value)
        write_process_event(conn, clock, state=new_state.value, before=before, after=after)


def start_process(bind: Bind, process_guid: str, *, clock: Clock = DEFAULT_CLOCK) -> None:
    """STOPPED → STARTED writes STARTED; starting a started process changes nothing (P1)."""
    _set_state(bind, process_guid, ProcessState.STARTED, clock)


def stop_process(bind: Bind, process_guid: str, *, clock: Clock = DEFAULT_CLOCK) -> None:
    """STARTED → STOPPED writes STOPPED; stopping a stopped process changes nothing (P1)."""
    _set_state(bind, process_guid, ProcessState.STOPPED, clock)


def scale_process(
    bind: Bind,
    process_guid: str,
    *,
    instances: int | None = None,
    memory: int | None = None,
    clock: Clock = DEFAULT_CLOCK,
) -> None:
    """Change instances and/or memory (None: unchanged). A STARTED process whose size changes
    writes another STARTED row with the previous size; a STOPPED one writes nothing (P1)."""
    _check_size("instances", instances)
    _check_size("memory", memory)
    with one_transaction(bind) as conn:
        before = _lock_process(conn, process_guid)
        after = attrs.evolve(
            before,
            instances=before.instances if instances is None else instances,
            memory=before.memory if memory is None else memory,
        )
        if after == before:
            return
        conn.execute(
            processes.update()
            .where(processes.c.guid == process_guid)
            .values(instances=after.instances, memory=after.memory)
        )
        if before.state == ProcessState.STARTED:
            write_process_event(
                conn, clock, state=ProcessState.STARTED.value, before=before, after=after
            )


def destroy_process(bind: Bind, process_guid: str, *, clock: Clock = DEFAULT_CLOCK) -> None:
    """Delete the process; a STARTED one writes STOPPED first, a stopped one nothing (P1)."""
    with one_transaction(bind) as conn:
        before = _lock_process(conn, process_guid)
        if before.state == ProcessState.STARTED:
            write_process_event(
                conn, clock, state=ProcessState.STOPPED.value, before=before, after=before
            )
        conn.execute(processes.delete().where(processes.c.guid == process_guid))
