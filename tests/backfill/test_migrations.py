"""The seed migrations (SPEC B6, B8, B9): they seed apps, tasks and services in that order,
wait for the run lock, can be skipped and are still recorded, and downgrade to a no-op."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import URL, Engine

from tests.backfill.platform import (
    app_rows,
    forget_history,
    make_app,
    managed_instance,
    running_task,
    service_rows,
    snapshot,
    spy_on_lock_wait,
    started_process,
)
from usageledger import db, migrations
from usageledger.backfill import BACKFILL_LOCK, backfill
from usageledger.backfill import migration as seed_migration

BEFORE_SEEDS = "0002_lifecycle_indexes"


@pytest.fixture
def pre_seed_engine(empty_db_url: URL) -> Iterator[Engine]:
    """A database at the revision before the seed migrations, with running resources of every
    kind whose starts are no longer on record."""
    engine = db.make_engine(empty_db_url, create=True)
    migrations.upgrade(engine, BEFORE_SEEDS)
    app = make_app(engine)
    started_process(engine, app)
    started_process(engine, app)
    running_task(engine, app)
    managed_instance(engine, app)
    forget_history(engine)
    yield engine
    engine.dispose()


def test_b9_seed_migrations_seed_apps_then_tasks_then_services(
    pre_seed_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B9: upgrading runs the backfill: app baselines first, then task baselines, then services.
    The order is the order in which the migrations ask `seed_in_migration` for their kind (the
    service table's ids cannot be compared with the app table's)."""
    seeded_kinds: list[str] = []
    real_seed = seed_migration.seed_in_migration

    def seed_in_migration(kind: str) -> None:
        seeded_kinds.append(kind)
        real_seed(kind)

    # Alembic executes each revision file afresh per command, so the files import the spy.
    monkeypatch.setattr(seed_migration, "seed_in_migration", seed_in_migration)

    migrations.upgrade(pre_seed_engine)

    assert seeded_kinds == ["app", "task", "service"]

    assert migrations.current(pre_seed_engine).up_to_date
    apps = app_rows(pre_seed_engine, "WAS_RUNNING")
    tasks = app_rows(pre_seed_engine, "TASK_WAS_RUNNING")
    assert (len(apps), len(tasks), len(service_rows(pre_seed_engine, "WAS_RUNNING"))) == (2, 1, 1)
    assert max(r["id"] for r in apps) < min(r["id"] for r in tasks)
    assert backfill(pre_seed_engine).rows_added == 0


@pytest.mark.parametrize("how", ["parameter", "environment"])
def test_b9_skipped_seed_migrations_are_recorded_and_backfill_seeds_later(
    pre_seed_engine: Engine, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B9: with the skip flag (or $USAGELEDGER_SKIP_WAS_RUNNING_BACKFILL=1) the migrations are
    applied without seeding; `backfill` seeds afterwards."""
    if how == "environment":
        monkeypatch.setenv(migrations.ENV_SKIP_WAS_RUNNING_BACKFILL, "1")
        migrations.upgrade(pre_seed_engine)
    else:
        migrations.upgrade(pre_seed_engine, skip_was_running_backfill=True)

    assert migrations.current(pre_seed_engine).up_to_date
    assert snapshot(pre_seed_engine) == {}
    result = backfill(pre_seed_engine)
    assert (result.app.seeded, result.task.seeded, result.service.seeded) == (2, 1, 1)


def test_b6_downgrading_a_seed_migration_keeps_the_baselines(pre_seed_engine: Engine) -> None:
    """B6: consumers may have read the baselines; the downgrade leaves every row in place."""
    migrations.upgrade(pre_seed_engine)
    seeded = snapshot(pre_seed_engine)
    assert len(seeded) == 4

    migrations.downgrade(pre_seed_engine, BEFORE_SEEDS)

    assert migrations.current(pre_seed_engine).current == BEFORE_SEEDS
    assert snapshot(pre_seed_engine) == seeded
    migrations.upgrade(pre_seed_engine)  # seeding again finds every run on record (B7)
    assert snapshot(pre_seed_engine) == seeded


def test_b8_seed_migration_waits_for_a_running_backfill(
    pre_seed_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B8: a migration waits for the lock instead of failing, then finds the work done: it asks
    for the backfill lock, does not get it and writes nothing while another run holds it, and
    seeds once that run releases it."""
    lock = db.run_lock(pre_seed_engine, BACKFILL_LOCK, wait=False)
    waits = spy_on_lock_wait(monkeypatch, BACKFILL_LOCK)
    errors: list[BaseException] = []

    def upgrade() -> None:
        try:
            migrations.upgrade(pre_seed_engine)
        except BaseException as exc:
            errors.append(exc)

    migration = threading.Thread(target=upgrade)
    migration.start()
    try:
        waits.assert_waiting()
        assert migration.is_alive() and errors == []
        assert snapshot(pre_seed_engine) == {}
    finally:
        lock.release()
        migration.join(60)  # even after a failure: no upgrade may outlive the test
    assert not migration.is_alive() and errors == []
    assert waits.returned.is_set()
    assert migrations.current(pre_seed_engine).up_to_date
    assert len(snapshot(pre_seed_engine)) == 4
