"""SPEC P1/B4: the package state an app's events carry, derived by one SQL expression."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from usageledger import producer
from usageledger.schema import apps, droplets, processes

from .recorded import app_events


def _build_apps(engine: Engine) -> dict[str, tuple[str, str]]:
    """One app per case of the B4 rule; returns {case: (app guid, expected package state)}."""
    org = producer.create_organization(engine, "org")
    space = producer.create_space(engine, org, "space")
    cases: dict[str, tuple[str, str]] = {}

    def app(case: str, expected: str) -> str:
        guid = producer.create_app(engine, space, case)
        cases[case] = (guid, expected)
        return guid

    app("no package", "PENDING")
    a = app("package ready, no droplet", "PENDING")
    producer.create_package(engine, a)
    a = app("newest package failed", "FAILED")
    producer.create_package(engine, a, state="FAILED")
    a = app("current droplet is the newest and staged", "STAGED")
    producer.create_droplet(engine, a, producer.create_package(engine, a))
    a = app("newest droplet staged but not current", "PENDING")
    producer.create_droplet(engine, a, producer.create_package(engine, a), make_current=False)
    a = app("newest droplet failed although an older one is current", "FAILED")
    p = producer.create_package(engine, a)
    producer.create_droplet(engine, a, p)
    producer.create_droplet(engine, a, p, state="FAILED", make_current=False)
    a = app("current droplet is of an older package", "PENDING")
    producer.create_droplet(engine, a, producer.create_package(engine, a))
    producer.create_package(engine, a)
    a = app("newer package failed after a staged current droplet", "FAILED")
    producer.create_droplet(engine, a, producer.create_package(engine, a))
    producer.create_package(engine, a, state="FAILED")
    a = app("failed package whose newest droplet is staged and current", "STAGED")
    producer.create_droplet(engine, a, producer.create_package(engine, a, state="FAILED"))
    a = app("older droplet failed, newest staged and current", "STAGED")
    p = producer.create_package(engine, a)
    producer.create_droplet(engine, a, p, state="FAILED", make_current=False)
    producer.create_droplet(engine, a, p)
    a = app("current droplet is newest but still staging", "PENDING")
    producer.create_droplet(engine, a, producer.create_package(engine, a), state="STAGING")
    return cases


def test_b4_package_state_follows_the_rule_for_every_case(engine: Engine) -> None:
    """B4/P1: FAILED if the newest droplet of the newest package failed; else STAGED if the
    current droplet is STAGED and that newest droplet; else FAILED if the newest package failed;
    else PENDING — the same in a per-app call, in a set-based query, and in the events."""
    cases = _build_apps(engine)
    expected = {case: state for case, (_, state) in cases.items()}
    with engine.connect() as conn:
        one_by_one = {case: producer.package_state(conn, guid) for case, (guid, _) in cases.items()}
        # Set-based, as the backfill uses it: correlated to the caller's own apps and droplets
        # (the desired-droplet join must not capture the expression's droplets).
        desired = droplets.alias("desired")
        by_guid = {
            row.guid: row.state
            for row in conn.execute(
                sa.select(
                    apps.c.guid, producer.package_state_expression(apps.c.guid).label("state")
                )
                .select_from(apps.outerjoin(desired, desired.c.guid == apps.c.droplet_guid))
                .where(desired.c.id.is_(None) | desired.c.id.is_not(None))
            )
        }
        by_droplets = {
            row.guid: row.state
            for row in conn.execute(
                sa.select(
                    apps.c.guid, producer.package_state_expression(apps.c.guid).label("state")
                ).select_from(apps.outerjoin(droplets, droplets.c.guid == apps.c.droplet_guid))
            )
        }
    assert one_by_one == expected
    assert {case: by_guid[guid] for case, (guid, _) in cases.items()} == expected
    assert {case: by_droplets[guid] for case, (guid, _) in cases.items()} == expected

    for guid, _ in cases.values():
        producer.start_process(engine, producer.create_process(engine, guid))
    written = {e["parent_app_guid"]: e["package_state"] for e in app_events(engine)}
    assert {case: written[guid] for case, (guid, _) in cases.items()} == expected


def test_b4_package_state_expression_correlates_to_processes_at_any_depth(
    engine: Engine,
) -> None:
    """B4: the expression correlates to a query over processes, also from inside a subquery."""
    cases = _build_apps(engine)
    for guid, _ in cases.values():
        producer.create_process(engine, guid)
    expected = {g: s for g, s in cases.values()}
    nested = (
        sa.select(producer.package_state_expression(processes.c.app_guid))
        .where(apps.c.guid == processes.c.app_guid)
        .scalar_subquery()
    )
    with engine.connect() as conn:
        direct = conn.execute(
            sa.select(
                processes.c.app_guid,
                producer.package_state_expression(processes.c.app_guid).label("state"),
            )
        ).all()
        deeper = conn.execute(sa.select(processes.c.app_guid, nested.label("state"))).all()
    assert {r.app_guid: r.state for r in direct} == expected
    assert {r.app_guid: r.state for r in deeper} == expected
