"""Backfill benchmark (SPEC §5, issue 4): batched seeding against the one-statement floor.

For each database server given with --db, creates a scratch database next to it, loads a
platform (by default 100,000 running processes, 20,000 running tasks, 20,000 service instances,
plus stopped ones, their history and a few stale baselines) with multi-row inserts, and measures:

* the floor: each kind's seed as ONE unbatched INSERT…SELECT over the whole resource table
  (committed, best of two; the rows are deleted again before the real run);
* the real run: `backfill(batch_size=N)`: total time, seeding time, repair time, the slowest
  single batch statement, and seeding time / floor (goal: at most 2×);
* a second run right after (B7: adds nothing; it still walks every window).

Usage: python bench/backfill_bench.py --db postgresql+psycopg://user@host/db [--db …] [--json]
Scale down for a smoke run with --processes/--tasks/--instances.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from usageledger import db, migrations
from usageledger.backfill import BatchReport, Phase, backfill
from usageledger.backfill.kinds import KINDS
from usageledger.backfill.seed import seed_statement
from usageledger.backfill.window import window_values
from usageledger.schema import (
    app_usage_events,
    apps,
    droplets,
    metadata,
    organizations,
    packages,
    processes,
    service_brokers,
    service_instances,
    service_plans,
    service_usage_events,
    services,
    spaces,
    tasks,
)

CHUNK = 5_000
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


@attrs.frozen
class Scale:
    processes: int
    tasks: int
    instances: int

    @property
    def apps(self) -> int:
        return max(1, self.processes // 5)


def _guid() -> str:
    return str(uuid.uuid4())


def _chunks(rows: Iterable[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _insert(engine: Engine, table: sa.Table, rows: Iterable[dict[str, Any]]) -> int:
    """Multi-row inserts (the drivers batch an executemany into multi-row VALUES)."""
    count = 0
    for chunk in _chunks(rows):
        with engine.begin() as conn:
            conn.execute(table.insert(), chunk)
        count += len(chunk)
    return count


def _ids(engine: Engine, table: sa.Table) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(table.c.id).order_by(table.c.id)).scalars())


def _app_event(state: str, when: datetime, **columns: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "guid": _guid(),
        "created_at": when,
        "state": state,
        "instance_count": 1,
        "memory_in_mb_per_instance": 256,
        "app_guid": "",
        "app_name": "bench",
        "space_guid": "space",
        "space_name": "space",
        "org_guid": "org",
        "previous_state": None,
        "package_state": "STAGED",
        "previous_package_state": "UNKNOWN",
        "previous_instance_count": 1,
        "previous_memory_in_mb_per_instance": 256,
        "parent_app_guid": None,
        "parent_app_name": None,
        "task_guid": None,
        "task_name": None,
        "process_type": "web",
    }
    row.update(columns)
    return row


def load(engine: Engine, scale: Scale) -> dict[str, int]:
    """The platform: running and stopped resources, their history, some stale baselines."""
    counts: dict[str, int] = {}
    when = EPOCH
    counts["organizations"] = _insert(
        engine, organizations, ({"guid": _guid(), "name": f"org-{i}"} for i in range(20))
    )
    org_ids = _ids(engine, organizations)
    space_rows = [
        {"guid": _guid(), "name": f"space-{i}", "organization_id": org_ids[i % len(org_ids)]}
        for i in range(200)
    ]
    counts["spaces"] = _insert(engine, spaces, space_rows)
    space_ids = _ids(engine, spaces)
    app_rows = [
        {
            "guid": _guid(),
            "name": f"app-{i}",
            "space_guid": space_rows[i % len(space_rows)]["guid"],
            "droplet_guid": _guid(),
        }
        for i in range(scale.apps)
    ]
    counts["apps"] = _insert(engine, apps, app_rows)
    package_rows = [{"guid": _guid(), "app_guid": a["guid"], "state": "READY"} for a in app_rows]
    counts["packages"] = _insert(engine, packages, package_rows)
    counts["droplets"] = _insert(
        engine,
        droplets,
        (
            {
                "guid": a["droplet_guid"],
                "app_guid": a["guid"],
                "package_guid": p["guid"],
                "state": "STAGED",
                "buildpack_receipt_buildpack_guid": "bp",
                "buildpack_receipt_buildpack": "ruby",
            }
            for a, p in zip(app_rows, package_rows, strict=True)
        ),
    )

    # Processes: the running ones, plus one stopped process per five running.
    stopped = scale.processes // 5
    process_rows = [
        {
            "guid": _guid(),
            "app_guid": app_rows[i % len(app_rows)]["guid"],
            "type": "web",
            "state": "STARTED" if i < scale.processes else "STOPPED",
            "instances": 1 + i % 4,
            "memory": 256,
        }
        for i in range(scale.processes + stopped)
    ]
    counts["processes"] = _insert(engine, processes, process_rows)
    task_rows = [
        {
            "guid": _guid(),
            "app_guid": app_rows[i % len(app_rows)]["guid"],
            "name": f"task-{i}",
            "state": ("RUNNING" if i % 10 else "CANCELING") if i < scale.tasks else "SUCCEEDED",
            "memory_in_mb": 128,
        }
        for i in range(2 * scale.tasks)
    ]
    counts["tasks"] = _insert(engine, tasks, task_rows)

    broker = _insert(engine, service_brokers, [{"guid": _guid(), "name": "broker"}])
    offering = _insert(
        engine,
        services,
        [{"guid": _guid(), "label": "db", "service_broker_id": _ids(engine, service_brokers)[0]}],
    )
    _insert(
        engine,
        service_plans,
        [{"guid": _guid(), "name": "small", "service_id": _ids(engine, services)[0]}],
    )
    del broker, offering
    plan_id = _ids(engine, service_plans)[0]
    counts["service_instances"] = _insert(
        engine,
        service_instances,
        (
            {
                "guid": _guid(),
                "name": f"si-{i}",
                "space_id": space_ids[i % len(space_ids)],
                "is_gateway_service": i % 2 == 0,
                "service_plan_id": plan_id if i % 2 == 0 else None,
            }
            for i in range(scale.instances)
        ),
    )

    # History: stopped processes' closed runs; one running process in ten still has its
    # STARTED on record (B2 skips it); ended tasks' runs; deleted instances' runs; and stale
    # baselines of processes that stopped (one in ten stopped ones) for the repair.
    def history() -> Iterator[dict[str, Any]]:
        for i, p in enumerate(process_rows):
            base = {"app_guid": p["guid"], "parent_app_guid": p["app_guid"]}
            if p["state"] == "STOPPED":
                yield _app_event("STARTED", when, **base)
                yield _app_event("STOPPED", when + timedelta(hours=1), **base)
                if i % 10 == 0:
                    yield _app_event("WAS_RUNNING", when + timedelta(hours=2), **base)
            elif i % 10 == 0:
                yield _app_event("STARTED", when, **base)
        for t in task_rows:
            if t["state"] == "SUCCEEDED":
                base = {"task_guid": t["guid"], "task_name": t["name"], "process_type": None}
                yield _app_event("TASK_STARTED", when, **base)
                yield _app_event("TASK_STOPPED", when + timedelta(minutes=5), **base)

    counts["app_usage_events"] = _insert(engine, app_usage_events, history())

    def service_history() -> Iterator[dict[str, Any]]:
        for i in range(scale.instances // 5):
            guid = _guid()
            for state, offset in (("CREATED", 0), ("DELETED", 3)):
                yield {
                    "guid": _guid(),
                    "created_at": when + timedelta(hours=offset),
                    "state": state,
                    "org_guid": "org",
                    "space_guid": "space",
                    "space_name": "space",
                    "service_instance_guid": guid,
                    "service_instance_name": f"gone-{i}",
                    "service_instance_type": "user_provided_service_instance",
                }

    counts["service_usage_events"] = _insert(engine, service_usage_events, service_history())
    return counts


def floor_seconds(engine: Engine) -> dict[str, float]:
    """Each kind's seed as ONE INSERT…SELECT over the whole resource table, committed (a commit
    is part of the real work too), best of two. The rows are deleted again afterwards and the
    tables vacuumed, so the batched run that follows starts from the same table."""
    result: dict[str, float] = {}
    for kind in KINDS:
        events = kind.events
        best = float("inf")
        for _ in range(2):
            with engine.connect() as conn:
                before = conn.execute(sa.select(sa.func.max(events.c.id))).scalar() or 0
                high = conn.execute(sa.select(sa.func.max(kind.source.c.id))).scalar() or 0
                conn.rollback()
            statement = seed_statement(kind, engine)
            started = time.perf_counter()
            with db.transaction(engine, isolation=db.Isolation.READ_COMMITTED) as conn:
                conn.execute(statement, window_values(0, high, datetime.now(UTC)))
            best = min(best, time.perf_counter() - started)
            with engine.begin() as conn:
                conn.execute(events.delete().where(events.c.id > before))
        result[kind.name] = best
    db.analyze_tables(engine, list(metadata.sorted_tables))
    return result


def bench_one(server_url: str, scale: Scale, batch_size: int) -> dict[str, Any]:
    url = db.create_database(server_url, "ul_bench_backfill")
    engine = db.make_engine(url, create=True)
    try:
        migrations.upgrade(engine, skip_was_running_backfill=True)
        started = time.perf_counter()
        counts = load(engine, scale)
        db.analyze_tables(engine, list(metadata.sorted_tables))
        load_seconds = time.perf_counter() - started
        floors = floor_seconds(engine)

        reports: list[BatchReport] = []
        result = backfill(engine, batch_size=batch_size, on_batch=reports.append)
        seed_seconds = sum(r.seconds for r in reports if r.phase is Phase.SEED)
        repair_seconds = sum(r.seconds for r in reports if r.phase is Phase.REPAIR)
        slowest = max(reports, key=lambda r: r.seconds)

        again_reports: list[BatchReport] = []
        again = backfill(engine, batch_size=batch_size, on_batch=again_reports.append)
        floor_total = sum(floors.values())
        return {
            "backend": db.backend_of(engine).value,
            "batch_size": batch_size,
            "rows_loaded": counts,
            "load_seconds": round(load_seconds, 2),
            "result": result.to_json(),
            "total_seconds": round(result.elapsed_seconds, 3),
            "seed_seconds": round(seed_seconds, 3),
            "repair_seconds": round(repair_seconds, 3),
            "seed_seconds_by_kind": {
                kind.name: round(
                    sum(r.seconds for r in reports if (r.kind, r.phase) == (kind.name, Phase.SEED)),
                    3,
                )
                for kind in KINDS
            },
            "floor_seconds": {k: round(v, 3) for k, v in floors.items()},
            "floor_total_seconds": round(floor_total, 3),
            "seed_to_floor_ratio": round(seed_seconds / floor_total, 2) if floor_total else None,
            "slowest_batch": {
                "kind": slowest.kind,
                "phase": slowest.phase.value,
                "seconds": round(slowest.seconds, 4),
                "inserted": slowest.inserted,
            },
            "batches": len(reports),
            "second_run_seconds": round(again.elapsed_seconds, 3),
            "second_run_rows_added": again.rows_added,
            "second_run_slowest_batch_seconds": round(
                max((r.seconds for r in again_reports), default=0.0), 4
            ),
        }
    finally:
        engine.dispose()
        db.drop_database(url)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--db", action="append", required=True, metavar="URL")
    parser.add_argument("--processes", type=int, default=100_000)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--instances", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=1_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    scale = Scale(args.processes, args.tasks, args.instances)
    results = []
    for url in args.db:
        figures = bench_one(url, scale, args.batch_size)
        results.append(figures)
        if not args.json:
            slowest = figures["slowest_batch"]
            print(
                f"{figures['backend']:<10} total {figures['total_seconds']:>7.2f}s  "
                f"seed {figures['seed_seconds']:>7.2f}s  "
                f"floor {figures['floor_total_seconds']:>7.2f}s  "
                f"ratio {figures['seed_to_floor_ratio']}x  "
                f"repair {figures['repair_seconds']:.2f}s  "
                f"slowest batch {slowest['seconds']:.3f}s ({slowest['kind']} {slowest['phase']})  "
                f"second run {figures['second_run_seconds']:.2f}s "
                f"(+{figures['second_run_rows_added']} rows)",
                flush=True,
            )
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
