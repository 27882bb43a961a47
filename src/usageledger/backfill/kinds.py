"""What a running resource is, and what its baseline row looks like, per kind (SPEC B1, B4).

Each `ResourceKind` holds the one definition of "running" for its kind, shared by the seed (which
looks for running resources) and the repair (which looks for baselines whose resource is no
longer running), and the one column mapping from resource tables to a baseline row.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import attrs
import sqlalchemy as sa

# The producer writes its rows with these same expressions (P1, P3); sharing them keeps B4's
# "shaped like the producer's rows" true by construction.
from usageledger.db import key_equals
from usageledger.event_columns import (
    managed_only,
    package_state_expression,
    service_instance_type_expression,
)
from usageledger.lifecycles import APP_PROCESS, SERVICE_INSTANCE, TASK, Lifecycle
from usageledger.schema import (
    EVENT_TABLES,
    apps,
    droplets,
    organizations,
    processes,
    service_brokers,
    service_instances,
    service_plans,
    services,
    spaces,
    tasks,
)

#: Process states that bill (B1).
RUNNING_PROCESS_STATES = ("STARTED",)
#: Task states that bill: a canceling task still runs and no event marks entering CANCELING (B1).
RUNNING_TASK_STATES = ("RUNNING", "CANCELING")

#: Builds the baseline's columns (labelled with event-table column names) from `source` and the
#: tables it joins, for every row of `source`: the seed adds the window, `running` and the B2
#: guard. Takes the SQL expressions for a fresh guid and for the seed time.
BaselineMapping = Callable[
    [sa.ColumnElement[str], sa.ColumnElement[datetime]], sa.Select[tuple[object, ...]]
]


@attrs.frozen
class ResourceKind:
    """One kind of resource: its lifecycle, the resource table the seed walks, and when it runs."""

    lifecycle: Lifecycle
    source: sa.Table
    #: Over `source` columns: true for a row that bills right now. Seed and repair both use it.
    running: sa.ColumnElement[bool]
    baseline: BaselineMapping

    @property
    def name(self) -> str:
        return self.lifecycle.kind

    @property
    def events(self) -> sa.Table:
        """The usage-event table this kind's baselines and endings go to."""
        return EVENT_TABLES[self.lifecycle.table]

    def runs_in_snapshot(self, guid: sa.ColumnElement[str]) -> sa.Exists:
        """The resource with this `guid` exists and runs, as the statement's snapshot sees it."""
        return sa.exists().where(key_equals(self.source.c.guid, guid), self.running)

    def runs_once_locked(self, guid: sa.ColumnElement[str]) -> sa.ColumnElement[bool]:
        """The same question asked again with a share lock on the resource row (B5's re-check).

        The lock waits for a producer transaction that holds the row — a restart in flight,
        whose STARTED may already have an id below the ending the repair is about to write —
        and reads its committed outcome, so the repair never closes a run that has just begun
        again. SQLite has no row locks and needs none: it runs one writer at a time.
        """
        source = self.source
        latest = (
            sa.select(sa.case((self.running, 1), else_=0))
            .where(key_equals(source.c.guid, guid))
            .with_for_update(read=True, key_share=True)
            .scalar_subquery()
        )
        return sa.func.coalesce(latest, 0) == 1


def _zero(value: sa.ColumnElement[int] | sa.Column[int]) -> sa.ColumnElement[int]:
    return sa.func.coalesce(value, 0)


def _blank(value: sa.ColumnElement[str] | sa.Column[str]) -> sa.ColumnElement[str]:
    return sa.func.coalesce(value, "")


def _app_baseline(
    guid: sa.ColumnElement[str], now: sa.ColumnElement[datetime]
) -> sa.Select[tuple[object, ...]]:
    """A WAS_RUNNING row per STARTED process, shaped like the producer's STARTED rows (B4)."""
    p, a, s, o = processes, apps, spaces, organizations
    current_droplet = droplets.alias("app_droplet")
    instances = _zero(p.c.instances)
    memory = _zero(p.c.memory)
    app_name = _blank(a.c.name)
    return sa.select(
        guid.label("guid"),
        now.label("created_at"),
        instances.label("instance_count"),
        memory.label("memory_in_mb_per_instance"),
        sa.literal(str(APP_PROCESS.baseline), sa.String(255)).label("state"),
        p.c.guid.label("app_guid"),
        app_name.label("app_name"),
        s.c.guid.label("space_guid"),
        _blank(s.c.name).label("space_name"),
        o.c.guid.label("org_guid"),
        current_droplet.c.buildpack_receipt_buildpack_guid.label("buildpack_guid"),
        current_droplet.c.buildpack_receipt_buildpack.label("buildpack_name"),
        package_state_expression(a.c.guid).label("package_state"),
        app_name.label("parent_app_name"),
        a.c.guid.label("parent_app_guid"),
        p.c.type.label("process_type"),
        sa.null().label("previous_state"),
        sa.literal("UNKNOWN").label("previous_package_state"),
        memory.label("previous_memory_in_mb_per_instance"),
        instances.label("previous_instance_count"),
    ).select_from(
        p.join(a, a.c.guid == p.c.app_guid)
        .join(s, s.c.guid == a.c.space_guid)
        .join(o, o.c.id == s.c.organization_id)
        .outerjoin(current_droplet, current_droplet.c.guid == a.c.droplet_guid)
    )


def _task_baseline(
    guid: sa.ColumnElement[str], now: sa.ColumnElement[datetime]
) -> sa.Select[tuple[object, ...]]:
    """A TASK_WAS_RUNNING row per RUNNING or CANCELING task, in P2's task row shape (B4)."""
    t, a, s, o = tasks, apps, spaces, organizations
    memory = _zero(t.c.memory_in_mb)
    return sa.select(
        guid.label("guid"),
        now.label("created_at"),
        sa.literal(1).label("instance_count"),
        memory.label("memory_in_mb_per_instance"),
        sa.literal(str(TASK.baseline), sa.String(255)).label("state"),
        sa.literal("").label("app_guid"),
        sa.literal("").label("app_name"),
        s.c.guid.label("space_guid"),
        _blank(s.c.name).label("space_name"),
        o.c.guid.label("org_guid"),
        sa.literal("STAGED").label("package_state"),
        _blank(a.c.name).label("parent_app_name"),
        a.c.guid.label("parent_app_guid"),
        t.c.guid.label("task_guid"),
        _blank(t.c.name).label("task_name"),
        sa.null().label("previous_state"),
        sa.literal("STAGED").label("previous_package_state"),
        memory.label("previous_memory_in_mb_per_instance"),
        sa.literal(1).label("previous_instance_count"),
    ).select_from(
        t.join(a, a.c.guid == t.c.app_guid)
        .join(s, s.c.guid == a.c.space_guid)
        .join(o, o.c.id == s.c.organization_id)
    )


def _service_baseline(
    guid: sa.ColumnElement[str], now: sa.ColumnElement[datetime]
) -> sa.Select[tuple[object, ...]]:
    """A WAS_RUNNING row per service instance; plan, offering and broker only when managed."""
    si, s, o = service_instances, spaces, organizations
    plan, offering, broker = service_plans, services, service_brokers
    managed = si.c.is_gateway_service
    return sa.select(
        guid.label("guid"),
        now.label("created_at"),
        sa.literal(str(SERVICE_INSTANCE.baseline), sa.String(255)).label("state"),
        o.c.guid.label("org_guid"),
        s.c.guid.label("space_guid"),
        _blank(s.c.name).label("space_name"),
        si.c.guid.label("service_instance_guid"),
        _blank(si.c.name).label("service_instance_name"),
        service_instance_type_expression(managed).label("service_instance_type"),
        managed_only(managed, plan.c.guid).label("service_plan_guid"),
        managed_only(managed, plan.c.name).label("service_plan_name"),
        managed_only(managed, offering.c.guid).label("service_guid"),
        managed_only(managed, offering.c.label).label("service_label"),
        managed_only(managed, broker.c.name).label("service_broker_name"),
        managed_only(managed, broker.c.guid).label("service_broker_guid"),
    ).select_from(
        si.join(s, s.c.id == si.c.space_id)
        .join(o, o.c.id == s.c.organization_id)
        .outerjoin(plan, plan.c.id == si.c.service_plan_id)
        .outerjoin(offering, offering.c.id == plan.c.service_id)
        .outerjoin(broker, broker.c.id == offering.c.service_broker_id)
    )


APP_KIND = ResourceKind(
    lifecycle=APP_PROCESS,
    source=processes,
    running=processes.c.state.in_(RUNNING_PROCESS_STATES),
    baseline=_app_baseline,
)
TASK_KIND = ResourceKind(
    lifecycle=TASK,
    source=tasks,
    running=tasks.c.state.in_(RUNNING_TASK_STATES),
    baseline=_task_baseline,
)
SERVICE_KIND = ResourceKind(
    lifecycle=SERVICE_INSTANCE,
    source=service_instances,
    # Every existing service instance bills (B1); its row disappears when it is deleted.
    running=sa.true(),
    baseline=_service_baseline,
)

#: In the order the backfill runs them (B9: apps, tasks, services).
KINDS: tuple[ResourceKind, ...] = (APP_KIND, TASK_KIND, SERVICE_KIND)


def kind_named(name: str) -> ResourceKind:
    for kind in KINDS:
        if kind.name == name:
            return kind
    raise KeyError(name)
