"""Organisations, spaces, apps, packages and droplets: the resources the usage events describe
(SPEC §1.3). Creating them writes no usage event."""

from __future__ import annotations

from typing import Any, TypeAlias

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from usageledger.db import new_guid
from usageledger.errors import BadInputError, ResourceNotFoundError
from usageledger.producer.transaction import Bind, one_transaction
from usageledger.schema import apps, droplets, organizations, packages, spaces

#: A row of any resource table.
AnyRow: TypeAlias = sa.Row[*tuple[Any, ...]]

PACKAGE_READY = "READY"
DROPLET_STAGED = "STAGED"


def require_row(conn: Connection, table: sa.Table, guid: str, what: str) -> AnyRow:
    """The row of `table` with this guid, or a ResourceNotFoundError naming `what`."""
    row = conn.execute(sa.select(table).where(table.c.guid == guid)).one_or_none()
    if row is None:
        raise ResourceNotFoundError(f"no {what} with guid {guid!r}")
    return row


def create_organization(bind: Bind, name: str | None) -> str:
    """Create an organisation; returns its guid."""
    with one_transaction(bind) as conn:
        guid = new_guid()
        conn.execute(organizations.insert().values(guid=guid, name=name))
        return guid


def create_space(bind: Bind, org_guid: str, name: str | None) -> str:
    """Create a space in the organisation `org_guid`; returns its guid."""
    with one_transaction(bind) as conn:
        org = require_row(conn, organizations, org_guid, "organization")
        guid = new_guid()
        conn.execute(spaces.insert().values(guid=guid, name=name, organization_id=org.id))
        return guid


def create_app(bind: Bind, space_guid: str, name: str | None) -> str:
    """Create an app (no droplet yet) in the space `space_guid`; returns its guid."""
    with one_transaction(bind) as conn:
        require_row(conn, spaces, space_guid, "space")
        guid = new_guid()
        conn.execute(apps.insert().values(guid=guid, name=name, space_guid=space_guid))
        return guid


def create_package(bind: Bind, app_guid: str, *, state: str = PACKAGE_READY) -> str:
    """Create a package of the app `app_guid` in `state` (READY, FAILED, …); returns its guid."""
    with one_transaction(bind) as conn:
        require_row(conn, apps, app_guid, "app")
        guid = new_guid()
        conn.execute(packages.insert().values(guid=guid, app_guid=app_guid, state=state))
        return guid


def require_package_of_app(conn: Connection, app_guid: str, package_guid: str) -> str:
    """The state of package `package_guid`, which must belong to the app `app_guid`."""
    require_row(conn, apps, app_guid, "app")
    package = require_row(conn, packages, package_guid, "package")
    if package.app_guid != app_guid:
        raise BadInputError(
            f"package {package_guid!r} belongs to app {package.app_guid!r}, not {app_guid!r}"
        )
    return str(package.state)


def insert_droplet(
    conn: Connection,
    app_guid: str,
    package_guid: str,
    *,
    state: str,
    buildpack_guid: str | None,
    buildpack_name: str | None,
    make_current: bool,
) -> str:
    """Insert a droplet row (the package is checked by the caller) and maybe make it current."""
    guid = new_guid()
    conn.execute(
        droplets.insert().values(
            guid=guid,
            app_guid=app_guid,
            package_guid=package_guid,
            state=state,
            buildpack_receipt_buildpack_guid=buildpack_guid,
            buildpack_receipt_buildpack=buildpack_name,
        )
    )
    if make_current:
        conn.execute(apps.update().where(apps.c.guid == app_guid).values(droplet_guid=guid))
    return guid


def create_droplet(
    bind: Bind,
    app_guid: str,
    package_guid: str,
    *,
    state: str = DROPLET_STAGED,
    buildpack_guid: str | None = None,
    buildpack_name: str | None = None,
    make_current: bool = True,
) -> str:
    """Create a droplet of `package_guid`; `make_current` sets it as the app's desired droplet.

    Writes no usage event (a running process's next event shows the new buildpack).
    """
    with one_transaction(bind) as conn:
        require_package_of_app(conn, app_guid, package_guid)
        return insert_droplet(
            conn,
            app_guid,
            package_guid,
            state=state,
            buildpack_guid=buildpack_guid,
            buildpack_name=buildpack_name,
            make_current=make_current,
        )
