"""The scheduler itself (SPEC S1, S3, S9): a step that waits on a lock keeps its outcome, a
commit is observed only once it completed, fingerprints ignore per-run database names, and the
SQLite writer-lock count is the same for the same seed."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from tests.simulator.conftest import Simulate
from usageledger import db
from usageledger.clock import SimulatedClock
from usageledger.schema import organizations
from usageledger.simulator.run import simulation_engine
from usageledger.simulator.scenario import ScheduleEntry, Sizes, generate_scenario
from usageledger.simulator.scheduler import FREE_RUN, ActorRuntime, Scheduler, fingerprint

START = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def sim_engine(db_url: URL) -> Iterator[Engine]:
    engine = simulation_engine(db_url)
    yield engine
    engine.dispose()


def _bump(name: str) -> Callable[[ActorRuntime], None]:
    """An actor that renames the one organization in one transaction (a row lock)."""

    def program(rt: ActorRuntime) -> None:
        rt.await_op(START, f"bump {name}")
        with db.transaction(rt.engine) as conn:
            conn.execute(
                organizations.update()
                .where(organizations.c.guid == "org-1")
                .values(name=f"renamed by {name}")
            )

    return program


def test_s3_a_step_that_waited_on_a_lock_keeps_its_outcome(
    sim_engine: Engine, backend: db.Backend
) -> None:
    """S3: `holder` updates a row and stays parked before its commit; `waiter`'s UPDATE of the
    same row blocks. When the holder commits, the waiter's step is released: the history has
    invoke, blocked, unblocked and ok (with its row) for that step, and `on_commit` ran once per
    completed commit, the waiter's only after it completed."""
    if backend is db.Backend.SQLITE:
        pytest.skip("SQLite has no lock tables: its single writer is modelled before BEGIN")
    with db.transaction(sim_engine) as conn:
        conn.execute(organizations.insert().values(guid="org-1", name="org"))
    committed: list[tuple[str, int]] = []
    scheduler = Scheduler(
        control=sim_engine,
        clock=SimulatedClock(START),
        rng=random.Random(1),
        replay=(
            ScheduleEntry("holder", "through:UPDATE"),
            ScheduleEntry("waiter", "through:UPDATE"),
            ScheduleEntry(FREE_RUN),
        ),
        on_commit=lambda actor, step: committed.append((actor.name, step)),
    )
    for name in ("holder", "waiter"):
        scheduler.add(name, "producer", sim_engine.execution_options())
    try:
        scheduler.start({"holder": _bump("holder"), "waiter": _bump("waiter")})
        scheduler.run()
    finally:
        scheduler.abandon()
    updates = [h for h in scheduler.history if h.actor == "waiter" and h.what.startswith("UPDATE")]
    assert [h.phase for h in updates] == ["invoke", "blocked", "unblocked", "ok"], updates
    assert len({h.step for h in updates}) == 1
    assert updates[-1].rows == 1
    commits = [h for h in scheduler.history if h.kind == "commit" and h.phase == "ok"]
    assert [h.actor for h in commits] == ["holder", "waiter"]
    assert [name for name, _ in committed] == ["holder", "waiter"]
    assert scheduler.stats.blocked >= 1
    with sim_engine.connect() as conn:
        assert conn.execute(sa.select(organizations.c.name)).scalar() == "renamed by waiter"


def test_s1_fingerprint_ignores_the_run_database_name() -> None:
    """S1: MariaDB's has_table names the database (`DESCRIBE db.table`); a replay runs in a
    scratch database of another name, so the name must not reach the fingerprint."""
    one = fingerprint("sql", "DESCRIBE `usageledger_sim_93fccf05f5`.`usage_event_retention`")
    two = fingerprint("sql", "DESCRIBE `usageledger_sim_0a1b2c3d4e`.`usage_event_retention`")
    assert one == two == fingerprint("sql", "DESCRIBE `usage_event_retention`")
    named = fingerprint("sql", 'SELECT 1 FROM "shop"."t" WHERE s = \'shop\'', ("shop",))
    assert named == fingerprint("sql", 'SELECT 1 FROM "t" WHERE s = ~db')
    assert fingerprint("sql", "DESCRIBE `a`") != fingerprint("sql", "DESCRIBE `b`")


def test_s9_same_seed_same_sqlite_writer_waits(simulate: Simulate, backend: db.Backend) -> None:
    """S9: on SQLite the blocked-lock count (waits for the single writer) is the same for the
    same seed: one wait per parked step, not per Python object id (ids are reused)."""
    if backend is not db.Backend.SQLITE:
        pytest.skip("on a server, whether a short lock wait is caught depends on timing")
    scenario = generate_scenario(
        3,
        sizes=Sizes(apps=2, processes=4, tasks=3, service_instances=2, builds=1, legacy=2),
        span_days=60,
    )
    first, second = simulate(scenario), simulate(scenario)
    assert first.stats.sqlite_writer_waits > 0
    assert second.stats.sqlite_writer_waits == first.stats.sqlite_writer_waits
    assert second.coverage == first.coverage
