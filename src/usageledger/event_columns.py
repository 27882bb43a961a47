"""How usage-event columns are derived from the resource tables, as SQL expressions.

The producer (SPEC P1, P3) and the backfill's baselines (B4) both build their rows with these,
so a live event and a seeded baseline can never disagree about, say, a package state.
"""

from __future__ import annotations

import sqlalchemy as sa

from usageledger.schema import apps, droplets, packages

MANAGED_SERVICE_INSTANCE = "managed_service_instance"
USER_PROVIDED_SERVICE_INSTANCE = "user_provided_service_instance"

PACKAGE_STAGED = "STAGED"
PACKAGE_FAILED = "FAILED"
PACKAGE_PENDING = "PENDING"
DROPLET_STAGED = "STAGED"
DROPLET_FAILED = "FAILED"


def package_state_expression(app_guid: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
    """A scalar SQL expression for the package state of the app whose guid is `app_guid`.

    `FAILED` if the newest droplet of the app's newest package failed; else `STAGED` if the
    app's current droplet is STAGED and is that newest droplet; else `FAILED` if the newest
    package failed; else `PENDING` (SPEC B4, as Cloud Controller derives it). "Newest" means the
    highest id. `app_guid` is usually a column of the enclosing query, at any depth: every
    subquery correlates explicitly to everything but its own anonymous aliases, so it never
    captures the caller's own `apps`, `packages` or `droplets`.
    """

    # The newest package left-joined to its droplets, newest first: the first row holds the
    # newest package and its newest droplet (NULL when it has none). One correlation level
    # only, and explicit, so the expression works at any depth of the caller's query.
    def newest(of_droplet: bool, column: str) -> sa.ScalarSelect[str]:
        package = packages.alias()
        droplet = droplets.alias()
        value = (droplet if of_droplet else package).c[column]
        return (
            sa.select(value)
            .select_from(package.outerjoin(droplet, droplet.c.package_guid == package.c.guid))
            .where(package.c.app_guid == app_guid)
            .order_by(package.c.id.desc(), droplet.c.id.desc())
            .limit(1)
            .correlate_except(package, droplet)
            .scalar_subquery()
        )

    newest_package_state = newest(False, "state")
    newest_droplet_state = newest(True, "state")
    newest_droplet_guid = newest(True, "guid")
    app = apps.alias()
    current_droplet_guid = (
        sa.select(app.c.droplet_guid)
        .where(app.c.guid == app_guid)
        .limit(1)
        .correlate_except(app)
        .scalar_subquery()
    )
    return sa.case(
        (newest_droplet_state == DROPLET_FAILED, sa.literal(PACKAGE_FAILED, sa.String(255))),
        (
            sa.and_(
                newest_droplet_state == DROPLET_STAGED,
                newest_droplet_guid == current_droplet_guid,
            ),
            sa.literal(PACKAGE_STAGED, sa.String(255)),
        ),
        (newest_package_state == PACKAGE_FAILED, sa.literal(PACKAGE_FAILED, sa.String(255))),
        else_=sa.literal(PACKAGE_PENDING, sa.String(255)),
    )


def service_instance_type_expression(
    is_gateway_service: sa.ColumnElement[bool],
) -> sa.ColumnElement[str]:
    """`managed_service_instance` when `is_gateway_service` is true, else user-provided (P3)."""
    return sa.case(
        (is_gateway_service == sa.true(), sa.literal(MANAGED_SERVICE_INSTANCE, sa.String(255))),
        else_=sa.literal(USER_PROVIDED_SERVICE_INSTANCE, sa.String(255)),
    )


def managed_only(
    is_gateway_service: sa.ColumnElement[bool], column: sa.ColumnElement[str]
) -> sa.ColumnElement[str | None]:
    """`column` for a managed instance, NULL for a user-provided one (P3)."""
    return sa.case((is_gateway_service == sa.true(), column), else_=sa.null())
