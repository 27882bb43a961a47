"""A small platform for backfill tests: resources made through the producer, event rows read
back in id order, the old cleanup's "delete every event" that leaves running resources
without a start on record, and a spy that watches a run wait for the backfill lock."""

from __future__ import annotations

import threading
from typing import Any

import attrs
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from usageledger import db, producer
from usageledger.schema import app_usage_events, processes, service_usage_events

Row = dict[str, Any]


@attrs.frozen
class App:
    org_guid: str
    space_guid: str
    guid: str
    package_guid: str
    droplet_guid: str


def make_app(engine: Engine, name: str | None = "shop", *, space_name: str | None = "prod") -> App:
    org = producer.create_organization(engine, "acme")
    space = producer.create_space(engine, org, space_name)
    app = producer.create_app(engine, space, name)
    package = producer.create_package(engine, app, state="READY")
    droplet = producer.create_droplet(
        engine, app, package, state="STAGED", buildpack_guid="bp-1", buildpack_name="ruby"
    )
    return App(org, space, app, package, droplet)


def started_process(
    engine: Engine, app: App, *, instances: int | None = 2, memory: int | None = 512
) -> str:
    process = producer.create_process(
        engine, app.guid, type="web", instances=instances, memory=memory
    )
    producer.start_process(engine, process)
    return process


def running_task(engine: Engine, app: App, name: str | None = "migrate", memory: int = 128) -> str:
    task = producer.create_task(engine, app.guid, name, memory_in_mb=memory)
    producer.run_task(engine, task)
    return task


def managed_instance(engine: Engine, app: App, name: str = "db") -> str:
    broker = producer.create_service_broker(engine, "broker")
    offering = producer.create_service(engine, broker, "postgres")
    plan = producer.create_service_plan(engine, offering, "small")
    return producer.create_service_instance(engine, app.space_guid, name, plan_guid=plan)


def forget_history(engine: Engine) -> None:
    """Delete every usage event, as the old cleanup did once they were old (SPEC §0)."""
    with engine.begin() as conn:
        conn.execute(app_usage_events.delete())
        conn.execute(service_usage_events.delete())


def rows(engine: Engine, table: sa.Table, *where: sa.ColumnElement[bool]) -> list[Row]:
    with engine.connect() as conn:
        result = conn.execute(sa.select(table).where(*where).order_by(table.c.id))
        return [dict(row._mapping) for row in result]


def app_rows(engine: Engine, *states: str) -> list[Row]:
    where = [app_usage_events.c.state.in_(states)] if states else []
    return rows(engine, app_usage_events, *where)


def service_rows(engine: Engine, *states: str) -> list[Row]:
    where = [service_usage_events.c.state.in_(states)] if states else []
    return rows(engine, service_usage_events, *where)


def snapshot(engine: Engine) -> dict[tuple[str, int], Row]:
    """Every event row of both tables, by (table, id)."""
    return {
        (table.name, row["id"]): row
        for table in (app_usage_events, service_usage_events)
        for row in rows(engine, table)
    }


def assert_only_appended(
    before: dict[tuple[str, int], Row], after: dict[tuple[str, int], Row]
) -> None:
    """B6: every row that existed is still there, unchanged; new rows have higher ids."""
    for key, row in before.items():
        assert after.get(key) == row, f"row {key} was deleted or updated"
    for table in (app_usage_events.name, service_usage_events.name):
        old_ids = [i for (t, i) in before if t == table]
        new_ids = [i for (t, i) in after if t == table and (t, i) not in before]
        if old_ids and new_ids:
            assert min(new_ids) > max(old_ids)


def insert_event(engine: Engine, table: sa.Table, row: Row) -> int:
    """Append `row` (without its id) as a new event; returns the new id."""
    values = {k: v for k, v in row.items() if k != "id"}
    with engine.begin() as conn:
        result = conn.execute(table.insert().values(**values))
        assert result.inserted_primary_key is not None
        return int(result.inserted_primary_key[0])


def stop_below_baseline(engine: Engine, process: str) -> Row:
    """The outcome of a seed batch that raced a stop (B5): the process is stopped and its
    STOPPED has an id below its baseline. The seed now waits for a stop in flight, so tests
    build this outcome directly (an older release, or a stop committed around the batch's
    lock on a backend that reads otherwise, could leave it)."""
    [baseline] = [r for r in app_rows(engine, "WAS_RUNNING") if r["app_guid"] == process]
    stop = {**baseline, "guid": db.new_guid(), "state": "STOPPED", "previous_state": "STARTED"}
    with engine.begin() as conn:
        # forget_history left the ids below the first baseline free.
        stop["id"] = conn.execute(sa.select(sa.func.min(app_usage_events.c.id))).scalar_one() - 1
        assert stop["id"] > 0
        conn.execute(app_usage_events.insert().values(**stop))
        conn.execute(processes.update().where(processes.c.guid == process).values(state="STOPPED"))
    return baseline


@attrs.define
class LockWait:
    """What a spy on `db.run_lock` saw of one waiting request for a lock (SPEC B8)."""

    entered: threading.Event = attrs.Factory(threading.Event)
    returned: threading.Event = attrs.Factory(threading.Event)

    def assert_waiting(self) -> None:
        """The waiter asked for the lock and has not got it (call while another run holds it).

        Entry is awaited, not timed. A waiter that got the lock anyway would set `returned`
        within the grace period; one that really waits never does, however slow the machine.
        """
        assert self.entered.wait(30), "the run never asked for the lock"
        assert not self.returned.wait(0.5), "the run got the lock while another run held it"


def spy_on_lock_wait(monkeypatch: pytest.MonkeyPatch, name: str) -> LockWait:
    """Watch `db.run_lock(…, name, wait=True)`: set `entered` when it is called and `returned`
    when it returns or raises (the backfill takes its lock through `db.run_lock`)."""
    seen = LockWait()
    real = db.run_lock

    def run_lock(engine: Engine, lock_name: str, *, wait: bool) -> db.RunLock:
        if lock_name != name or not wait:
            return real(engine, lock_name, wait=wait)
        seen.entered.set()
        try:
            return real(engine, lock_name, wait=wait)
        finally:
            seen.returned.set()

    monkeypatch.setattr(db, "run_lock", run_lock)
    return seen
