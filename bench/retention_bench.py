"""Retention benchmark: the keep-running cleanup against its floor and the peer shape (SPEC R11).

    python bench/retention_bench.py --backend URL --rows N [--batch-size 1000] [--repeat 1]

`--backend` names a database server (PostgreSQL, MariaDB) or a SQLite URL; the benchmark creates
its own database beside it (`ul_bench_retention`, or a file in a temporary folder for SQLite),
fills `app_usage_events` with N realistic rows (and `service_usage_events` with N/10), and
measures on identical copies of the table:

- cleanup: `usageledger.retention.cleanup`, as shipped;
- floor:   deleting exactly the ids the cleanup deleted, in the very batches it deleted them
           (pass 1's, then pass 2's), each batch its own transaction (no decision work at all);
           also, for reference, the same ids sorted into one sequence ("sorted floor"), which
           ignores the order of R7;
- peer:    the "filtered LIMIT re-evaluated per batch" shape: the same R5 filter written as
           correlated lookups, re-run from the start for every batch (time-boxed; the rest is
           extrapolated linearly, which understates its cost);

with `--repeat N`, the cleanup and both floors N times each (median and range; the peer once);
with `--reclaim`, the disk space of the app table before and after a cleanup and after giving
the space back (VACUUM, VACUUM FULL, OPTIMIZE TABLE), while a producer inserts;

then prints the query plans on the backend and the row count over 90 simulated days of daily
cleanups with a constant running set. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import URL, Connection, Engine

from usageledger import db, migrations
from usageledger.clock import SimulatedClock
from usageledger.lifecycles import (
    APP_PROCESS,
    APP_USAGE_EVENTS,
    SERVICE_USAGE_EVENTS,
    Lifecycle,
    lifecycles_of,
    opening_states,
)
from usageledger.retention import cleanup, plan_cleanup
from usageledger.retention import run as retention_run
from usageledger.retention.decision import (
    delete_ids_statement,
    lifecycle_rows_query,
    newest_old_id_query,
    old_rows_page_query,
)
from usageledger.schema import EVENT_TABLES, app_usage_events, service_usage_events

NOW = datetime(2026, 6, 1, tzinfo=UTC)
CUTOFF_DAYS = 31
SPAN_DAYS = 93.0  # a uniform rate over three cutoffs: about 2/3 of the rows are old
INSERT_CHUNK = 5000
INDEX_NAMES = re.compile(r"\b(\w*(?:_index|_pkey)|PRIMARY)\b")
CHOSEN_KEY = re.compile(r"\bkey=(\w+)")
POSSIBLE_KEYS = re.compile(r"possible_keys=\S+ ")

err = Console(stderr=True, highlight=False)
out = Console(highlight=False, width=200)


# --- the generator --------------------------------------------------------------------------


def _app_row(state: str, at: datetime, key: str, task: bool, staging: bool) -> dict[str, object]:
    return {
        "guid": str(uuid.uuid4()),
        "created_at": at,
        "instance_count": 2,
        "memory_in_mb_per_instance": 512,
        "state": state,
        "app_guid": "" if task or staging else key,
        "app_name": "" if task or staging else "web",
        "space_guid": "space",
        "space_name": "dev",
        "org_guid": "org",
        "process_type": None if task or staging else "web",
        "task_guid": key if task else None,
        "task_name": "migrate" if task else None,
        "parent_app_guid": "app",
        "parent_app_name": "app",
        "package_guid": key if staging else None,
        "package_state": "STAGED",
        "previous_state": None,
        "previous_package_state": "UNKNOWN",
    }


def _service_row(state: str, at: datetime, key: str) -> dict[str, object]:
    return {
        "guid": str(uuid.uuid4()),
        "created_at": at,
        "state": state,
        "org_guid": "org",
        "space_guid": "space",
        "space_name": "dev",
        "service_instance_guid": key,
        "service_instance_name": "db",
        "service_instance_type": "managed_service_instance",
        "service_plan_guid": "plan",
    }


Event = tuple[float, str, str]  # (days before NOW, state, key)


def _process_events(rng: random.Random, budget: int, span: float) -> list[Event]:
    """Long-running processes scaled often; lifetimes end before NOW for ~90% of them."""
    events: list[Event] = []
    n = 0
    while len(events) < budget:
        n += 1
        key = f"process-{n}"
        start = rng.uniform(0, span)
        lifetime = rng.expovariate(1 / 9.0)
        events.append((span - start, "STARTED", key))
        t = start
        while True:
            t += rng.expovariate(2.0)  # about two scale events a day
            if t >= start + lifetime or t >= span:
                break
            events.append((span - t, "STARTED", key))
        if start + lifetime < span:
            events.append((span - (start + lifetime), "STOPPED", key))
    return events


def _pair_events(rng: random.Random, budget: int, span: float, kind: str) -> list[Event]:
    """Short tasks (a few minutes, some still running) or staging (plus BUILDPACK_SET noise)."""
    events: list[Event] = []
    n = 0
    while len(events) < budget:
        n += 1
        start = rng.uniform(0, span)
        end = start + rng.expovariate(1 / 0.01)
        if kind == "task":
            key = f"task-{n}"
            events.append((span - start, "TASK_STARTED", key))
            if end < span:
                events.append((span - end, "TASK_STOPPED", key))
        else:
            key = f"package-{n}"
            if rng.random() < 0.2:
                events.append((span - start, "BUILDPACK_SET", key))
                continue
            events.append((span - start, "STAGING_STARTED", key))
            if end < span:
                events.append((span - end, "STAGING_STOPPED", key))
    return events


def _service_events(rng: random.Random, budget: int, span: float) -> list[Event]:
    events: list[Event] = []
    n = 0
    while len(events) < budget:
        n += 1
        key = f"instance-{n}"
        start = rng.uniform(0, span)
        lifetime = rng.expovariate(1 / 9.0)
        events.append((span - start, "CREATED", key))
        t = start
        while True:
            t += rng.expovariate(0.5)
            if t >= start + lifetime or t >= span:
                break
            events.append((span - t, "UPDATED", key))
        if start + lifetime < span:
            events.append((span - (start + lifetime), "DELETED", key))
    return events


def generate(rows: int, seed: int, span: float = SPAN_DAYS) -> tuple[list[Event], list[Event]]:
    """(app events, service events) in id order: time order with a second of jitter."""
    rng = random.Random(seed)
    app = (
        _process_events(rng, int(rows * 0.6), span)
        + _pair_events(rng, int(rows * 0.25), span, "task")
        + _pair_events(rng, int(rows * 0.15), span, "staging")
    )
    app.sort(key=lambda e: -e[0])
    service = _service_events(rng, max(rows // 10, 1), span)
    service.sort(key=lambda e: -e[0])
    return app, service


def _rows(
    table: str, events: list[Event], now: datetime, rng: random.Random
) -> Iterator[dict[str, object]]:
    for days, state, key in events:
        # created_at and id disagree by up to a second, as concurrent transactions make them.
        at = now - timedelta(days=days, seconds=rng.uniform(-1.0, 1.0))
        if table == SERVICE_USAGE_EVENTS:
            yield _service_row(state, at, key)
        else:
            yield _app_row(state, at, key, state.startswith("TASK"), state in STAGING_STATES)


STAGING_STATES = frozenset({"STAGING_STARTED", "STAGING_STOPPED", "BUILDPACK_SET"})


def insert_events(
    engine: Engine, table: str, events: list[Event], now: datetime, seed: int
) -> None:
    t = EVENT_TABLES[table]
    rng = random.Random(seed)
    chunk: list[dict[str, object]] = []
    with engine.connect() as conn:
        for row in _rows(table, events, now, rng):
            chunk.append(row)
            if len(chunk) == INSERT_CHUNK:
                with conn.begin():
                    conn.execute(t.insert(), chunk)
                chunk = []
        if chunk:
            with conn.begin():
                conn.execute(t.insert(), chunk)


# --- copies of the table --------------------------------------------------------------------


def backup_table(source: sa.Table) -> sa.Table:
    """A plain copy of `source` (same columns, no indexes) to restore it from between runs."""
    meta = sa.MetaData()
    columns = [
        sa.Column(c.name, c.type, primary_key=c.primary_key, autoincrement=False)
        for c in source.columns
    ]
    return sa.Table(f"bench_copy_{source.name}", meta, *columns)


def restore(engine: Engine, table: sa.Table, copy: sa.Table) -> None:
    db.truncate_tables(engine, [table])
    names = [c.name for c in table.columns]
    with engine.begin() as conn:
        conn.execute(table.insert().from_select(names, sa.select(*[copy.c[n] for n in names])))
    db.analyze_tables(engine, [table])


def save(engine: Engine, table: sa.Table, copy: sa.Table) -> None:
    copy.drop(engine, checkfirst=True)
    copy.create(engine)
    names = [c.name for c in table.columns]
    with engine.begin() as conn:
        conn.execute(copy.insert().from_select(names, sa.select(*[table.c[n] for n in names])))


def all_ids(engine: Engine, table: sa.Table) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(table.c.id)).scalars())


def count(engine: Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


# --- the three shapes -----------------------------------------------------------------------


def spread(values: list[float], fmt: str) -> str:
    """One figure, or with several rounds the median and the range: `median (min–max)`."""
    if not values:
        return "–"
    median = fmt.format(statistics.median(values))
    if len(values) == 1:
        return median
    return f"{median} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def run_cleanup(
    engine: Engine, table: sa.Table, batch_size: int
) -> tuple[float, int, list[list[int]]]:
    """(seconds, rows deleted, the id list of every delete batch in order) of the shipped
    cleanup. The batches are noted by wrapping its batch function: one list copy per batch."""
    batches: list[list[int]] = []
    delete_batch = retention_run._delete_batch

    def noting(
        conn: Connection, table: sa.Table, groups: Mapping[str, list[int]]
    ) -> dict[str, int]:
        batches.append([row_id for ids in groups.values() for row_id in ids])
        return delete_batch(conn, table, groups)

    retention_run._delete_batch = noting
    try:
        started = time.perf_counter()
        result = cleanup(
            engine,
            table,
            cutoff_age_in_days=CUTOFF_DAYS,
            batch_size=batch_size,
            clock=SimulatedClock(NOW),
        )
        elapsed = time.perf_counter() - started
    finally:
        retention_run._delete_batch = delete_batch
    return elapsed, result.deleted, batches


def run_decision(engine: Engine, table: sa.Table) -> float:
    """Seconds of the decision alone (one read-only walk, nothing deleted)."""
    started = time.perf_counter()
    plan_cleanup(engine, table, cutoff=NOW - timedelta(days=CUTOFF_DAYS))
    return time.perf_counter() - started


def run_floor(engine: Engine, table: sa.Table, batches: list[list[int]]) -> float:
    """Delete the given id batches in order, each its own transaction, deciding nothing."""
    started = time.perf_counter()
    # The cleanup's own connection set-up (READ COMMITTED, db.bulk_deletes): the floor differs
    # in deciding nothing, not in how its deletes commit.
    with retention_run._run_connection(engine, deletes=True) as conn:
        for ids in batches:
            with conn.begin():
                conn.execute(delete_ids_statement(conn, table, ids))
    return time.perf_counter() - started


def sorted_batches(ids: list[int], batch_size: int) -> list[list[int]]:
    """All ids in one ascending sequence, cut into batches (ignores the order of R7)."""
    ordered = sorted(ids)
    return [ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size)]


def peer_prunable_query(
    t: sa.Table, lc: Lifecycle, cutoff: datetime, newest_id: int, limit: int
) -> sa.Select[int]:
    """R5/R6 as correlated lookups on the lifecycle index, with a plain LIMIT and no cursor."""
    r = t.alias("r")

    def latest(states: tuple[str, ...], *, old: bool, before: bool) -> sa.ScalarSelect[int]:
        a = t.alias()
        q = sa.select(sa.func.max(a.c.id)).where(
            a.c[lc.key_column] == r.c[lc.key_column], a.c.state.in_(states)
        )
        if old:
            q = q.where(a.c.created_at < cutoff)
        q = q.where(a.c.id < r.c.id) if before else q.where(a.c.id > r.c.id)
        return q.scalar_subquery()

    later_old_ending = latest(lc.endings, old=True, before=False)
    earlier_old_opening = latest(lc.openings, old=True, before=True)
    earlier_ending = latest(lc.endings, old=False, before=True)
    later_old_opening = latest(lc.openings, old=True, before=False)
    return (
        sa.select(r.c.id)
        .where(r.c.state.in_(lc.openings), r.c.created_at < cutoff, r.c.id < newest_id)
        .where(
            sa.or_(
                later_old_ending.is_not(None),
                sa.and_(
                    earlier_old_opening > sa.func.coalesce(earlier_ending, 0),
                    later_old_opening.is_not(None),
                ),
            )
        )
        .limit(limit)
    )


def peer_non_openings_query(
    t: sa.Table, cutoff: datetime, newest_id: int, limit: int
) -> sa.Select[int]:
    return (
        sa.select(t.c.id)
        .where(
            t.c.created_at < cutoff,
            t.c.state.not_in(sorted(opening_states(t.name))),
            t.c.id < newest_id,
        )
        .limit(limit)
    )


def run_peer(
    engine: Engine, table: sa.Table, batch_size: int, timebox: float, expected: int
) -> tuple[float, int, bool]:
    """(seconds or extrapolated seconds, rows deleted, finished)."""
    cutoff = NOW - timedelta(days=CUTOFF_DAYS)
    with engine.connect() as conn:
        newest_id = int(conn.execute(sa.select(sa.func.max(table.c.id))).scalar_one())
    queries = [
        lambda lc=lc: peer_prunable_query(table, lc, cutoff, newest_id, batch_size)
        for lc in lifecycles_of(table.name)
    ] + [lambda: peer_non_openings_query(table, cutoff, newest_id, batch_size)]
    deleted = 0
    started = time.perf_counter()
    # The cleanup's own connection set-up, as the floor's.
    with retention_run._run_connection(engine, deletes=True) as conn:
        for make in queries:
            while True:
                with conn.begin():
                    ids = list(conn.execute(make()).scalars())
                    if not ids:
                        break
                    deleted += conn.execute(delete_ids_statement(conn, table, ids)).rowcount
                elapsed = time.perf_counter() - started
                if elapsed > timebox:
                    rate = elapsed / max(deleted, 1)
                    return rate * expected, deleted, False
    return time.perf_counter() - started, deleted, True


# --- plans ----------------------------------------------------------------------------------


def plans(engine: Engine, table: sa.Table, batch_size: int) -> dict[str, list[str]]:
    cutoff = NOW - timedelta(days=CUTOFF_DAYS)
    with engine.connect() as conn:
        found_old = conn.execute(newest_old_id_query(table, cutoff=cutoff)).scalar_one()
        assert found_old is not None  # the filled table always has old rows
        newest_old = int(found_old)
        newest = int(conn.execute(sa.select(sa.func.max(table.c.id))).scalar_one())
        found: dict[str, list[str]] = {
            "newest old id": db.explain(conn, newest_old_id_query(table, cutoff=cutoff))
        }
        found["decision walk (one streamed statement)"] = db.explain(
            conn,
            lifecycle_rows_query(
                table, lifecycles_of(table.name), cutoff=cutoff, upper_id=newest_old
            ),
        )
        found["all old rows page (R3 only; pass 2 reads nothing)"] = db.explain(
            conn,
            old_rows_page_query(
                table,
                cutoff=cutoff,
                after_id=newest_old // 2,
                upper_id=newest_old,
                limit=batch_size,
            ),
        )
        found["delete batch"] = db.explain(
            conn, delete_ids_statement(conn, table, list(range(1, batch_size + 1)))
        )
        found["peer pass 1 (app)"] = db.explain(
            conn, peer_prunable_query(table, APP_PROCESS, cutoff, newest, batch_size)
        )
    return found


# --- disk space after a cleanup -------------------------------------------------------------

#: How each backend gives a table's freed space back, as an operator would run it.
RECLAIM_STATEMENTS: dict[db.Backend, list[tuple[str, str]]] = {
    db.Backend.POSTGRESQL: [
        ("VACUUM", "VACUUM app_usage_events"),
        ("VACUUM FULL", "VACUUM FULL app_usage_events"),
    ],
    db.Backend.MARIADB: [("OPTIMIZE TABLE", "OPTIMIZE TABLE app_usage_events")],
    db.Backend.SQLITE: [("VACUUM", "VACUUM")],
}


def space_used(engine: Engine) -> str:
    """What app_usage_events takes on disk, in the backend's own terms; on SQLite the whole
    file (both event tables) and its WAL."""
    mib = 2**20
    name = app_usage_events.name
    with engine.connect() as conn:
        backend = db.backend_of(conn)
        if backend is db.Backend.POSTGRESQL:
            size = conn.exec_driver_sql(f"SELECT pg_total_relation_size('{name}')")
            return f"{size.scalar_one() / mib:.0f} MiB (table and indexes)"
        if backend is db.Backend.MARIADB:
            # information_schema's sizes are InnoDB's estimates, refreshed by ANALYZE TABLE.
            conn.exec_driver_sql(f"ANALYZE TABLE {name}").all()
            data, index, free = conn.exec_driver_sql(
                "SELECT data_length, index_length, data_free FROM information_schema.tables"
                f" WHERE table_schema = DATABASE() AND table_name = '{name}'"
            ).one()
            return f"{(data + index) / mib:.0f} MiB (+ {free / mib:.0f} MiB free in the file)"
        pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
        free_pages = conn.exec_driver_sql("PRAGMA freelist_count").scalar_one()
        page = conn.exec_driver_sql("PRAGMA page_size").scalar_one()
        path = db.sqlite_path(engine.url)
        wal = Path(f"{path}-wal") if path is not None else None
        wal_mib = wal.stat().st_size / mib if wal is not None and wal.exists() else 0.0
        return (
            f"{pages * page / mib:.0f} MiB file, {free_pages / pages:.0%} of its pages free,"
            f" {wal_mib:.0f} MiB WAL"
        )


def reclaim(engine: Engine, statement: str) -> tuple[float, float, int]:
    """Run `statement` while a producer inserts one row every 20 ms on its own connection:
    (seconds it took, the producer's longest insert in seconds, inserts made). A failure of
    either side fails the bench; the producer stops either way."""
    waits: list[float] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def produce() -> None:
        try:
            with engine.connect() as conn:
                while not stop.is_set():
                    row = _app_row("STARTED", NOW, str(uuid.uuid4()), task=False, staging=False)
                    started = time.perf_counter()
                    with conn.begin():
                        conn.execute(app_usage_events.insert(), row)
                    waits.append(time.perf_counter() - started)
                    time.sleep(0.02)
        except BaseException as exc:
            failures.append(exc)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        time.sleep(0.3)
        started = time.perf_counter()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            result = conn.exec_driver_sql(statement)
            if result.returns_rows:  # MariaDB's OPTIMIZE reports a status table
                result.all()
        took = time.perf_counter() - started
        time.sleep(0.3)
    finally:
        stop.set()
        producer.join(timeout=60)
    if failures:
        raise RuntimeError(f"the producer failed during {statement}") from failures[0]
    if not waits:
        raise RuntimeError(f"the producer inserted nothing during {statement}")
    return took, max(waits), len(waits)


def space_after_cleanup(engine: Engine, batch_size: int) -> list[str]:
    """Clean the (full) app table, then give the space back each way the backend has."""
    if db.backend_of(engine) is db.Backend.SQLITE:
        # The file still holds the pages of the bench's own dropped copies: start without them.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM")
    lines = [f"before the cleanup: {space_used(engine)}"]
    result = cleanup(
        engine,
        app_usage_events,
        cutoff_age_in_days=CUTOFF_DAYS,
        batch_size=batch_size,
        clock=SimulatedClock(NOW),
    )
    lines.append(f"after the cleanup ({result.deleted:,} rows deleted): {space_used(engine)}")
    for label, statement in RECLAIM_STATEMENTS[db.backend_of(engine)]:
        err.print(f"{label} …")
        took, worst, inserts = reclaim(engine, statement)
        lines.append(
            f"after {label} ({took:.1f} s; a producer's slowest of {inserts} inserts meanwhile:"
            f" {worst:.2f} s): {space_used(engine)}"
        )
    return lines


# --- 90 days of daily cleanups --------------------------------------------------------------


def daily_simulation(engine: Engine, days: int, per_day: int, running: int, seed: int) -> list[int]:
    """Row count of app_usage_events after each day's cleanup, with `running` processes that
    never stop (each scaled about twice a day) and short-lived churn around them."""
    rng = random.Random(seed)
    t = app_usage_events
    db.truncate_tables(engine, [t])
    start = NOW
    clock = SimulatedClock(start)
    counts: list[int] = []
    serial = 0
    for day in range(days):
        day_start = start + timedelta(days=day)
        events: list[Event] = []
        if day == 0:
            events += [(0.0, "STARTED", f"steady-{i}") for i in range(running)]
        for i in range(running):
            for _ in range(2):
                events.append((rng.random(), "STARTED", f"steady-{i}"))
        while len(events) < per_day:
            serial += 1
            at = rng.random()
            kind = rng.random()
            if kind < 0.4:
                key = f"churn-{serial}"
                events += [
                    (at, "STARTED", key),
                    (at, "STARTED", key),
                    (min(at + 0.01, 1), "STOPPED", key),
                ]
            elif kind < 0.8:
                key = f"task-{serial}"
                events += [(at, "TASK_STARTED", key), (min(at + 0.001, 1), "TASK_STOPPED", key)]
            else:
                key = f"package-{serial}"
                events += [
                    (at, "STAGING_STARTED", key),
                    (min(at + 0.002, 1), "STAGING_STOPPED", key),
                ]
        events.sort(key=lambda e: e[0])
        # (fraction of the day, state, key) -> days before the end of the day
        day_end = day_start + timedelta(days=1)
        as_ago = [(1.0 - at, state, key) for at, state, key in events]
        insert_events(engine, APP_USAGE_EVENTS, as_ago, day_end, seed + day)
        clock.set(day_end)
        cleanup(engine, APP_USAGE_EVENTS, cutoff_age_in_days=CUTOFF_DAYS, clock=clock)
        counts.append(count(engine, t))
    return counts


# --- the run --------------------------------------------------------------------------------


def bench_database(backend_url: str) -> tuple[URL, Path | None]:
    parsed = db.parse_url(backend_url)
    folder: Path | None = None
    if db.backend_of(parsed) is db.Backend.SQLITE:
        folder = Path(tempfile.mkdtemp(prefix="ul_bench_"))
        parsed = parsed.set(database=str(folder / "placeholder.db"))
    return db.create_database(parsed, "ul_bench_retention"), folder


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", required=True, help="database server URL or sqlite:///…")
    parser.add_argument("--rows", type=int, default=200_000, help="rows of app_usage_events")
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--repeat",
        type=positive_int,
        default=1,
        help="rounds of cleanup, floor and sorted floor (median and range reported)",
    )
    parser.add_argument("--peer-timebox", type=float, default=300.0, help="seconds (0: skip)")
    parser.add_argument("--days", type=int, default=90, help="simulated days (0: skip)")
    parser.add_argument("--per-day", type=int, default=2000, help="events per simulated day")
    parser.add_argument("--running", type=int, default=300, help="steady running processes")
    parser.add_argument("--no-plans", action="store_true")
    parser.add_argument(
        "--reclaim",
        action="store_true",
        help="then clean the app table once more and measure giving its space back",
    )
    parser.add_argument("--keep-database", action="store_true")
    args = parser.parse_args(argv)

    url, folder = bench_database(args.backend)
    engine = db.make_engine(url, create=True)
    backend = db.backend_of(engine).value
    try:
        migrations.upgrade(engine)
        err.print(f"[{backend}] generating {args.rows:,} rows …")
        app_events, service_events = generate(args.rows, args.seed)
        started = time.perf_counter()
        insert_events(engine, APP_USAGE_EVENTS, app_events, NOW, args.seed)
        insert_events(engine, SERVICE_USAGE_EVENTS, service_events, NOW, args.seed + 1)
        load_seconds = time.perf_counter() - started
        del app_events, service_events
        results = Table(
            title=f"retention on {backend}, {args.rows:,} app rows, batch {args.batch_size}"
            + (f", median (range) of {args.repeat} rounds" if args.repeat > 1 else "")
        )
        for column in (
            "table",
            "rows",
            "old",
            "deleted",
            "cleanup s",
            "deciding alone s",
            "floor s",
            "cleanup/floor",
            "sorted floor s",
            "peer s",
            "peer/cleanup",
            "µs per old row",
        ):
            results.add_column(column, justify="right" if column != "table" else "left")
        cutoff = NOW - timedelta(days=CUTOFF_DAYS)
        for table in (app_usage_events, service_usage_events):
            copy = backup_table(table)
            db.analyze_tables(engine, [table])
            save(engine, table, copy)
            restore(engine, table, copy)  # every shape starts from the same restored table
            before = all_ids(engine, table)
            with engine.connect() as conn:
                old = int(
                    conn.execute(
                        sa.select(sa.func.count()).where(table.c.created_at < cutoff)
                    ).scalar_one()
                )
            err.print(f"[{backend}] {table.name}: decision alone …")
            deciding_s = run_decision(engine, table)
            rounds: list[tuple[float, float, float]] = []  # (cleanup, floor, sorted floor) s
            for round_no in range(1, args.repeat + 1):
                if round_no > 1:
                    restore(engine, table, copy)
                err.print(f"[{backend}] {table.name}: cleanup (round {round_no}) …")
                cleanup_s, deleted, batches = run_cleanup(engine, table, args.batch_size)
                gone = sorted(before - all_ids(engine, table))
                assert len(gone) == deleted == sum(len(b) for b in batches)
                restore(engine, table, copy)
                err.print(f"[{backend}] {table.name}: floor (round {round_no}) …")
                floor_s = run_floor(engine, table, batches)
                restore(engine, table, copy)
                err.print(f"[{backend}] {table.name}: sorted floor (round {round_no}) …")
                sorted_floor_s = run_floor(engine, table, sorted_batches(gone, args.batch_size))
                rounds.append((cleanup_s, floor_s, sorted_floor_s))
            cleanup_s = statistics.median(r[0] for r in rounds)
            peer_text, ratio_text = "skipped", "–"
            if args.peer_timebox > 0:
                restore(engine, table, copy)
                err.print(f"[{backend}] {table.name}: peer (time box {args.peer_timebox:.0f}s) …")
                peer_s, peer_deleted, finished = run_peer(
                    engine, table, args.batch_size, args.peer_timebox, len(gone)
                )
                peer_text = f"{peer_s:.1f}" if finished else f"≥{peer_s:.0f} (extrap.)"
                ratio_text = f"{peer_s / cleanup_s:.1f}×" + ("" if finished else " (≥)")
                if finished and peer_deleted != len(gone):
                    peer_text += f" [{peer_deleted} rows]"
            results.add_row(
                table.name,
                f"{len(before):,}",
                f"{old:,}",
                f"{deleted:,}",
                spread([r[0] for r in rounds], "{:.2f}"),
                f"{deciding_s:.2f}",
                spread([r[1] for r in rounds], "{:.2f}"),
                # paired: each round's cleanup against the floor measured right after it
                spread([r[0] / r[1] for r in rounds if r[1]], "{:.2f}×"),
                spread([r[2] for r in rounds], "{:.2f}"),
                peer_text,
                ratio_text,
                f"{cleanup_s / max(old, 1) * 1e6:.1f}",
            )
            restore(engine, table, copy)
            if not args.no_plans and table is app_usage_events:
                found = plans(engine, table, args.batch_size)
            copy.drop(engine)
        out.print(f"load: {load_seconds:.1f}s for {args.rows + args.rows // 10:,} rows")
        out.print(results)
        if not args.no_plans:
            out.print(f"[bold]query plans on {backend}[/bold] (app_usage_events)")
            for name, lines in found.items():
                text = " ".join(lines)
                # MariaDB's EXPLAIN names the index it chose in `key=`; the others in the plan.
                used = sorted(set(CHOSEN_KEY.findall(text) or INDEX_NAMES.findall(text)) - {"None"})
                out.print(f"[bold]{name}[/bold]: indexes {', '.join(used) or 'none (table scan)'}")
                for line in lines:
                    text = POSSIBLE_KEYS.sub("", line)
                    text = text if len(text) <= 150 else text[:147] + "..."
                    out.print(f"    {text}", markup=False)
        if args.reclaim:
            err.print(f"[{backend}] disk space after a cleanup …")
            out.print(f"[bold]disk space of app_usage_events on {backend}[/bold]")
            for line in space_after_cleanup(engine, args.batch_size):
                out.print(f"    {line}", markup=False)
        if args.days > 0:
            err.print(f"[{backend}] {args.days} simulated days …")
            counts = daily_simulation(engine, args.days, args.per_day, args.running, args.seed)
            marks = [d for d in (1, 15, 31, 32, 45, 60, 75, 90) if d <= len(counts)]
            out.print(
                f"daily cleanups, {args.per_day}/day, {args.running} always running: "
                "rows after day "
                + ", ".join(f"{d}: {counts[d - 1]:,}" for d in marks)
                + f"; max after day 32: {max(counts[31:], default=0):,}"
            )
    finally:
        engine.dispose()
        if not args.keep_database:
            db.drop_database(url)
            if folder is not None:
                for leftover in folder.iterdir():
                    leftover.unlink()
                folder.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
