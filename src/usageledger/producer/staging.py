"""Staging (SPEC P4): STAGING_STARTED when a build starts, STAGING_STOPPED when it finishes, and
BUILDPACK_SET for staging without a start. The rows have app_guid '' and key on
(parent_app_guid, package_guid); their shape follows Cloud Controller's build events."""

from __future__ import annotations

from sqlalchemy.engine import Connection

from usageledger.clock import DEFAULT_CLOCK, Clock
from usageledger.lifecycles import AppEventState
from usageledger.producer.context import read_app_context
from usageledger.producer.events import write_app_usage_event
from usageledger.producer.resources import insert_droplet, require_package_of_app
from usageledger.producer.transaction import Bind, one_transaction

#: Cloud Controller bills staging at a fixed size: one instance of this many MB.
STAGING_MEMORY_IN_MB = 1024
#: The build state a staging row's previous_state reports while the build runs.
BUILD_STAGING = "STAGING"
DROPLET_STAGED = "STAGED"


def _write_staging_event(
    conn: Connection,
    clock: Clock,
    *,
    state: str,
    previous_state: str | None,
    app_guid: str,
    package_guid: str,
    package_state: str,
    buildpack_guid: str | None,
    buildpack_name: str | None,
) -> None:
    app = read_app_context(conn, app_guid)
    write_app_usage_event(
        conn,
        clock,
        {
            "state": state,
            "previous_state": previous_state,
            "instance_count": 1,
            "previous_instance_count": 1,
            "memory_in_mb_per_instance": STAGING_MEMORY_IN_MB,
            "previous_memory_in_mb_per_instance": STAGING_MEMORY_IN_MB,
            # The package does not change state while it is staged.
            "package_state": package_state,
            "previous_package_state": package_state,
            "app_guid": "",
            "app_name": "",
            "space_guid": app.space_guid,
            "space_name": app.space_name,
            "org_guid": app.org_guid,
            "buildpack_guid": buildpack_guid,
            "buildpack_name": buildpack_name,
            "parent_app_guid": app.guid,
            "parent_app_name": app.name,
            "process_type": None,
            "task_guid": None,
            "task_name": None,
            "package_guid": package_guid,
        },
    )


def start_staging(
    bind: Bind,
    app_guid: str,
    package_guid: str,
    *,
    buildpack_name: str | None = None,
    clock: Clock = DEFAULT_CLOCK,
) -> None:
    """A build of `package_guid` starts: STAGING_STARTED (P4).

    `buildpack_name` is the buildpack asked for, if any (no droplet exists yet, so no guid).
    """
    with one_transaction(bind) as conn:
        package_state = require_package_of_app(conn, app_guid, package_guid)
        _write_staging_event(
            conn,
            clock,
            state=AppEventState.STAGING_STARTED.value,
            previous_state=BUILD_STAGING,
            app_guid=app_guid,
            package_guid=package_guid,
            package_state=package_state,
            buildpack_guid=None,
            buildpack_name=buildpack_name,
        )


def finish_staging(
    bind: Bind,
    app_guid: str,
    package_guid: str,
    *,
    buildpack_guid: str | None = None,
    buildpack_name: str | None = None,
    droplet_state: str = DROPLET_STAGED,
    make_current: bool = True,
    clock: Clock = DEFAULT_CLOCK,
) -> str:
    """The build of `package_guid` ends: creates its droplet in `droplet_state` and writes
    STAGING_STOPPED with the droplet's buildpack (P4). Returns the droplet's guid.

    A STAGED droplet becomes the app's current droplet when `make_current`; a failed one never.
    """
    with one_transaction(bind) as conn:
        package_state = require_package_of_app(conn, app_guid, package_guid)
        droplet_guid = insert_droplet(
            conn,
            app_guid,
            package_guid,
            state=droplet_state,
            buildpack_guid=buildpack_guid,
            buildpack_name=buildpack_name,
            make_current=make_current and droplet_state == DROPLET_STAGED,
        )
        _write_staging_event(
            conn,
            clock,
            state=AppEventState.STAGING_STOPPED.value,
            previous_state=BUILD_STAGING,
            app_guid=app_guid,
            package_guid=package_guid,
            package_state=package_state,
            buildpack_guid=buildpack_guid,
            buildpack_name=buildpack_name,
        )
        return droplet_guid


def set_buildpack(
    bind: Bind,
    app_guid: str,
    package_guid: str,
    *,
    buildpack_guid: str | None = None,
    buildpack_name: str | None = None,
    clock: Clock = DEFAULT_CLOCK,
) -> None:
    """Staging without a start records the buildpack used: BUILDPACK_SET (P4).

    No build state changes, so previous_state is NULL; consumers ignore these rows (C13).
    """
    with one_transaction(bind) as conn:
        package_state = require_package_of_app(conn, app_guid, package_guid)
        _write_staging_event(
            conn,
            clock,
            state=AppEventState.BUILDPACK_SET.value,
            previous_state=None,
            app_guid=app_guid,
            package_guid=package_guid,
            package_state=package_state,
            buildpack_guid=buildpack_guid,
            buildpack_name=buildpack_name,
        )
