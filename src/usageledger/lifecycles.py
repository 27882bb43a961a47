"""The usage-event states and the lifecycle table (SPEC §2), declared once as data.

Retention, backfill, the consumer, the reconstructor and the simulator all read the lifecycles
from here; nothing else in the project spells out which states open or close a run.
"""

from __future__ import annotations

from enum import StrEnum

import attrs


class AppEventState(StrEnum):
    """States written to `app_usage_events`."""

    STARTED = "STARTED"
    STOPPED = "STOPPED"
    WAS_RUNNING = "WAS_RUNNING"
    TASK_STARTED = "TASK_STARTED"
    TASK_STOPPED = "TASK_STOPPED"
    TASK_WAS_RUNNING = "TASK_WAS_RUNNING"
    STAGING_STARTED = "STAGING_STARTED"
    STAGING_STOPPED = "STAGING_STOPPED"
    BUILDPACK_SET = "BUILDPACK_SET"


class ServiceEventState(StrEnum):
    """States written to `service_usage_events`."""

    CREATED = "CREATED"
    UPDATED = "UPDATED"
    DELETED = "DELETED"
    WAS_RUNNING = "WAS_RUNNING"


APP_USAGE_EVENTS = "app_usage_events"
SERVICE_USAGE_EVENTS = "service_usage_events"


@attrs.frozen
class Lifecycle:
    """One kind of resource as it appears in one usage-event table.

    `openings` start or restate a run; `endings` close it; `baseline` is the synthetic opening
    the backfill writes for a resource whose real start is no longer on record.
    """

    kind: str
    table: str
    key_column: str
    openings: tuple[str, ...]
    endings: tuple[str, ...]
    baseline: str

    @property
    def states(self) -> tuple[str, ...]:
        return self.openings + self.endings

    @property
    def ending(self) -> str:
        """The single ending state the backfill repair appends."""
        return self.endings[0]


APP_PROCESS = Lifecycle(
    kind="app",
    table=APP_USAGE_EVENTS,
    key_column="app_guid",
    openings=(AppEventState.STARTED, AppEventState.WAS_RUNNING),
    endings=(AppEventState.STOPPED,),
    baseline=AppEventState.WAS_RUNNING,
)

TASK = Lifecycle(
    kind="task",
    table=APP_USAGE_EVENTS,
    key_column="task_guid",
    openings=(AppEventState.TASK_STARTED, AppEventState.TASK_WAS_RUNNING),
    endings=(AppEventState.TASK_STOPPED,),
    baseline=AppEventState.TASK_WAS_RUNNING,
)

SERVICE_INSTANCE = Lifecycle(
    kind="service",
    table=SERVICE_USAGE_EVENTS,
    key_column="service_instance_guid",
    openings=(ServiceEventState.CREATED, ServiceEventState.UPDATED, ServiceEventState.WAS_RUNNING),
    endings=(ServiceEventState.DELETED,),
    baseline=ServiceEventState.WAS_RUNNING,
)

#: Every lifecycle, in the order the backfill seeds them (apps, tasks, services; SPEC B9).
LIFECYCLES: tuple[Lifecycle, ...] = (APP_PROCESS, TASK, SERVICE_INSTANCE)

#: Which lifecycles live in which usage-event table.
EVENT_TABLES: tuple[str, ...] = (APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS)


def lifecycles_of(table: str) -> tuple[Lifecycle, ...]:
    """The lifecycles recorded in `table` (empty for a table that has none)."""
    return tuple(lc for lc in LIFECYCLES if lc.table == table)


def lifecycle_of_kind(kind: str) -> Lifecycle:
    for lc in LIFECYCLES:
        if lc.kind == kind:
            return lc
    raise KeyError(kind)


def opening_states(table: str) -> frozenset[str]:
    """States that open or restate a run of any lifecycle in `table`."""
    return frozenset(s for lc in lifecycles_of(table) for s in lc.openings)


def known_states(table: str) -> frozenset[str]:
    """Every state the producer or backfill may write to `table`."""
    if table == APP_USAGE_EVENTS:
        return frozenset(s.value for s in AppEventState)
    if table == SERVICE_USAGE_EVENTS:
        return frozenset(s.value for s in ServiceEventState)
    raise KeyError(table)
