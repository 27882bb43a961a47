"""Reconstruct benchmark: consumer throughput, current-state time, consumer memory (issue 5).

    python bench/reconstruct_bench.py --backend postgresql+psycopg://postgres@HOST/postgres \
        [--events 1000000] [--batch-size 5000] [--repeat 3]

Creates its own database `ul_bench_reconstruct` beside `--backend` (PostgreSQL), fills
`app_usage_events` with realistic process, scale and task histories (and `service_usage_events`
with about 5 % as many rows) in two steps, 10 % and then all of `--events`, and after each step
VACUUM ANALYZEs the event tables (the bench server runs with autovacuum off; an operator's
server would have autovacuum do this), then measures each pair back to back, so that both
sides of a ratio see the same load on a shared machine:

- (a) the reference consumer from id 0, in a child process (which also reports (c), its peak
  RSS, and where its time went: reading, folding, ledger statements, the rest), immediately
  followed by the floor: fetching the same rows with psycopg, in the same batches by id, and
  doing nothing with them. For reference it also times the consumer's own read alone (the same
  batches as the consumer fetches them, with no billing and no writes);
- (b) `reconstruct current-state` (the set-based SQL, rows decoded as the command does)
  against one full sequential read of both tables, alternated `--repeat` times.

Not part of the test suite. Figures go to stdout as a table (and `--json` as one document).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import URL, Engine

from usageledger import db, migrations
from usageledger.clock import DEFAULT_CLOCK
from usageledger.lifecycles import APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS
from usageledger.migrations import ledger as ledger_migrations
from usageledger.reconstruct import billing, consumer, current_state, ledger_store, source
from usageledger.reconstruct.source import event_columns

DATABASE = "ul_bench_reconstruct"
START = datetime(2026, 1, 1, tzinfo=UTC)

APP_COLUMNS = [
    "guid",
    "created_at",
    "instance_count",
    "memory_in_mb_per_instance",
    "state",
    "app_guid",
    "app_name",
    "space_guid",
    "space_name",
    "org_guid",
    "task_guid",
    "task_name",
    "previous_state",
    "previous_instance_count",
    "previous_memory_in_mb_per_instance",
    "package_state",
    "previous_package_state",
    "process_type",
    "parent_app_guid",
    "parent_app_name",
]
SERVICE_COLUMNS = [
    "guid",
    "created_at",
    "state",
    "org_guid",
    "space_guid",
    "space_name",
    "service_instance_guid",
    "service_instance_name",
    "service_instance_type",
    "service_plan_guid",
    "service_plan_name",
]


class History:
    """A deterministic stream of realistic app and service events (a few thousand running)."""

    def __init__(self, seed: int = 5) -> None:
        self.rng = random.Random(seed)
        self.running: dict[str, tuple[int, int]] = {}
        self.tasks: list[str] = []
        self.services: dict[str, str] = {}
        self.moment = START
        self.serial = 0

    def _guid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _app(
        self,
        state: str,
        process: str,
        size: tuple[int, int],
        previous: str | None,
        before: tuple[int, int] | None,
    ) -> tuple[Any, ...]:
        return (
            self._guid(),
            self.moment,
            size[0],
            size[1],
            state,
            process,
            f"app-{process[:8]}",
            "space-1",
            "space",
            "org-1",
            None,
            None,
            previous,
            before[0] if before else None,
            before[1] if before else None,
            "STAGED",
            "UNKNOWN",
            "web",
            process,
            f"app-{process[:8]}",
        )

    def _task(self, state: str, task: str) -> tuple[Any, ...]:
        return (
            self._guid(),
            self.moment,
            1,
            512,
            state,
            "",
            "",
            "space-1",
            "space",
            "org-1",
            task,
            "migrate",
            None,
            1,
            512,
            "STAGED",
            None,
            None,
            "parent",
            "parent",
        )

    def app_event(self) -> tuple[Any, ...]:
        self.moment += timedelta(milliseconds=self.rng.randint(1, 400))
        roll = self.rng.random()
        if roll < 0.25 or len(self.running) < 2000:
            process = self._guid()
            size = (self.rng.randint(1, 4), self.rng.choice((256, 512, 1024)))
            self.running[process] = size
            return self._app("STARTED", process, size, "STOPPED", (0, 0))
        if roll < 0.55:
            process = (
                self.rng.choice(list(self.running))
                if len(self.running) < 64
                else next(iter(self.running))
            )
            before = self.running[process]
            size = (self.rng.randint(1, 8), before[1])
            self.running[process] = size
            return self._app("STARTED", process, size, "STARTED", before)
        if roll < 0.78:
            process, before = self.running.popitem()
            return self._app("STOPPED", process, before, "STARTED", before)
        if roll < 0.9 or not self.tasks:
            task = self._guid()
            self.tasks.append(task)
            return self._task("TASK_STARTED", task)
        return self._task("TASK_STOPPED", self.tasks.pop())

    def service_event(self) -> tuple[Any, ...]:
        roll = self.rng.random()
        if roll < 0.5 or not self.services:
            instance, state = self._guid(), "CREATED"
            self.services[instance] = "small"
        elif roll < 0.8:
            instance = next(iter(self.services))
            self.services[instance] = "large" if self.services[instance] == "small" else "small"
            state = "UPDATED"
        else:
            instance, _plan = self.services.popitem()
            state = "DELETED"
        return (
            self._guid(),
            self.moment,
            state,
            "org-1",
            "space-1",
            "space",
            instance,
            "db",
            "managed_service_instance",
            self.services.get(instance, "small"),
            "plan",
        )


def _copy(engine: Engine, table: str, columns: list[str], rows: Iterator[tuple[Any, ...]]) -> None:
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        raw.commit()
    finally:
        raw.close()


def fill(engine: Engine, history: History, app_rows: int) -> None:
    def apps() -> Iterator[tuple[Any, ...]]:
        for _ in range(app_rows):
            yield history.app_event()

    _copy(engine, APP_USAGE_EVENTS, APP_COLUMNS, apps())
    _copy(
        engine,
        SERVICE_USAGE_EVENTS,
        SERVICE_COLUMNS,
        (history.service_event() for _ in range(app_rows // 20)),
    )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE app_usage_events")
        conn.exec_driver_sql("VACUUM ANALYZE service_usage_events")


def count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.exec_driver_sql(
                "SELECT (SELECT count(*) FROM app_usage_events)"
                " + (SELECT count(*) FROM service_usage_events)"
            ).scalar_one()
        )


def consume_in_child(url: str, name: str, batch_size: int) -> dict[str, Any]:
    """Run the consumer from id 0 in a fresh process; its throughput and peak RSS."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--consume-child",
            "--backend",
            url,
            "--consumer",
            name,
            "--batch-size",
            str(batch_size),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout))


def peak_rss_mb() -> float:
    """This process's own peak RSS. Linux: VmHWM, which starts afresh at exec; getrusage's
    ru_maxrss would carry over the bench parent's RSS at the time it started the child."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


#: Where the child's time goes: the functions `consume_batch` calls, by phase (timed per call,
#: i.e. per batch, so the timing itself costs nothing per event).
PHASES: dict[str, list[tuple[object, str]]] = {
    "read": [(source, "fetch_rows")],
    "fold": [(consumer, "resources_of_rows"), (billing.RowFold, "apply_rows")],
    "ledger: take states": [(ledger_store, "take_states")],
    "ledger: put states": [(ledger_store, "put_states")],
    "ledger: put segments": [(ledger_store, "put_segment_rows")],
    "ledger: cursor, gaps, findings": [
        (ledger_store, name)
        for name in ("lock_cursor", "open_gaps", "record_gaps", "write_cursor", "save_findings")
    ],
}


def time_phases() -> dict[str, float]:
    spent = dict.fromkeys(PHASES, 0.0)
    for phase, targets in PHASES.items():
        for owner, attribute in targets:
            original = getattr(owner, attribute)

            def timed(*args: Any, _f: Any = original, _p: str = phase, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return _f(*args, **kwargs)
                finally:
                    spent[_p] += time.perf_counter() - started

            setattr(owner, attribute, timed)
    return spent


def child_consume(url: str, name: str, batch_size: int) -> None:
    """The consumer from id 0; its rate, its peak RSS, the peak RSS so far after every 100
    batches (so that a growing footprint would show where it grows), and its phases."""
    engine = db.make_engine(url)
    phases = time_phases()
    samples: list[float] = []
    applied = 0

    def on_batch(batch: consumer.BatchResult) -> None:
        nonlocal applied
        applied += batch.events_applied
        if batch.events_applied and (applied // batch_size) % 100 == 0:
            samples.append(peak_rss_mb())

    started = time.perf_counter()
    result = consumer.consume(
        engine,
        engine,
        consumer=name,
        clock=DEFAULT_CLOCK,
        batch_size=batch_size,
        on_batch=on_batch,
    )
    elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {
                "events": result.events_applied,
                "seconds": elapsed,
                "events_per_second": result.events_applied / elapsed,
                "peak_rss_mb": peak_rss_mb(),
                "peak_rss_mb_every_100_batches": samples,
                "phases_seconds": phases,
            }
        )
    )


def fetch_floor(engine: Engine, batch_size: int) -> tuple[int, float]:
    """The floor: the consumer's own SELECTs by id, in the same batches, straight on psycopg."""
    total = 0
    started = time.perf_counter()
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for table in (APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS):
            names = ", ".join(str(c.name) for c in event_columns(table))
            after = 0
            while True:
                cursor.execute(
                    f"SELECT {names} FROM {table} WHERE id > %s ORDER BY id LIMIT %s",
                    (after, batch_size),
                )
                rows = cursor.fetchall()
                raw.commit()
                total += len(rows)
                if len(rows) < batch_size:
                    break
                after = rows[-1][0]
    finally:
        raw.close()
    return total, time.perf_counter() - started


def consumer_read(engine: Engine, batch_size: int) -> tuple[int, float]:
    """The consumer's own read alone: its read-only transactions and `source.fetch_rows`
    (SQLAlchemy statement, the driver's tuples), same batches, no billing, no writes."""
    total = 0
    started = time.perf_counter()
    for table in (APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS):
        after = 0
        while True:
            with db.transaction(engine, read_only=True) as conn:
                rows, _top = source.fetch_rows(conn, table, after, batch_size)
            total += len(rows)
            if len(rows) < batch_size:
                break
            after = rows[-1][0]
    return total, time.perf_counter() - started


def full_read(engine: Engine) -> float:
    started = time.perf_counter()
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for table in (APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS):
            cursor.execute(f"SELECT * FROM {table}")
            while cursor.fetchmany(10_000):
                pass
        raw.commit()
    finally:
        raw.close()
    return time.perf_counter() - started


def time_current_state(engine: Engine) -> tuple[int, float]:
    started = time.perf_counter()
    with db.transaction(engine, read_only=True) as conn:
        running = current_state.running_by_sql(conn)
    return len(running), time.perf_counter() - started


def measure_current_state(engine: Engine, repeat: int) -> dict[str, Any]:
    """(b): current-state and the full read, alternated `repeat` times, each pair back to back."""
    pairs = []
    for _ in range(repeat):
        running, cs_seconds = time_current_state(engine)
        read_seconds = full_read(engine)
        pairs.append(
            {
                "running": running,
                "current_state_seconds": cs_seconds,
                "full_read_seconds": read_seconds,
                "ratio": cs_seconds / read_seconds,
            }
        )
    ratios = sorted(p["ratio"] for p in pairs)
    return {"current_state": pairs, "current_state_to_full_read_median": ratios[len(ratios) // 2]}


def measure_step(
    url: URL, engine: Engine, name: str, batch_size: int, repeat: int
) -> dict[str, Any]:
    """Every pair for the table as it stands now, each pair measured back to back."""
    run = consume_in_child(url.render_as_string(hide_password=False), name, batch_size)
    floor_events, floor_seconds = fetch_floor(engine, batch_size)
    read_events, read_seconds = consumer_read(engine, batch_size)
    floor_rate = floor_events / floor_seconds
    return {
        "consume": run,
        "floor_events_per_second": floor_rate,
        "consume_to_floor": run["events_per_second"] / floor_rate,
        "consumer_read_events_per_second": read_events / read_seconds,
        **measure_current_state(engine, repeat),
    }


def _add_consumer_rows(table: Table, total: int, step: dict[str, Any]) -> None:
    """(a) and (c) of one step, as table rows."""
    run = step["consume"]
    table.add_row(f"{total:,} events: consume events/s", f"{run['events_per_second']:,.0f}")
    table.add_row(
        "  floor (psycopg fetch, same batches) events/s",
        f"{step['floor_events_per_second']:,.0f}",
    )
    table.add_row("  (a) consume / floor", f"{step['consume_to_floor']:.3f}")
    table.add_row(
        "  the consumer's read alone, events/s",
        f"{step['consumer_read_events_per_second']:,.0f}",
    )
    seconds = run["seconds"]
    for phase, spent in run["phases_seconds"].items():
        table.add_row(
            f"  consumer time: {phase}",
            f"{spent / seconds:.0%} ({spent * 1e6 / run['events']:.2f} µs/event)",
        )
    other = seconds - sum(run["phases_seconds"].values())
    table.add_row(
        "  consumer time: rest (transactions, commits, gap plan)",
        f"{other / seconds:.0%} ({other * 1e6 / run['events']:.2f} µs/event)",
    )
    table.add_row("  (c) consumer peak RSS MB", f"{run['peak_rss_mb']:,.1f}")
    samples = run["peak_rss_mb_every_100_batches"]
    if samples:
        table.add_row(
            "  (c) peak RSS MB after the first / last 100 batches",
            f"{samples[0]:,.1f} / {samples[-1]:,.1f}",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=os.environ.get("USAGELEDGER_BENCH_DB"))
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=consumer.DEFAULT_BATCH_SIZE)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--consume-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--consumer", default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--current-state-only",
        action="store_true",
        help="measure (b) alone: no consumer, no floor, no RSS (quicker (b) iterations)",
    )
    args = parser.parse_args()
    if not args.backend:
        parser.error("--backend URL (a PostgreSQL server) is required")
    if args.consume_child:
        child_consume(args.backend, args.consumer, args.batch_size)
        return
    err = Console(stderr=True)
    url: URL = db.create_database(args.backend, DATABASE)
    engine = db.make_engine(url)
    figures: dict[str, Any] = {"batch_size": args.batch_size, "steps": {}}
    try:
        migrations.upgrade(engine)
        ledger_migrations.upgrade(engine)
        history = History()
        app_target = int(args.events / 1.05)
        steps = [app_target // 10, app_target - app_target // 10]
        for number, rows in enumerate(steps, start=1):
            err.print(f"filling {rows:,} more app events, then VACUUM ANALYZE (autovacuum is off)")
            fill(engine, history, rows)
            total = count(engine)
            if args.current_state_only:
                err.print(f"{total:,} events: measuring (b) only …")
                figures["steps"][total] = measure_current_state(engine, args.repeat)
                continue
            err.print(f"{total:,} events: measuring (consumer in a child process) …")
            figures["steps"][total] = measure_step(
                url, engine, f"bench{number}", args.batch_size, args.repeat
            )
    finally:
        engine.dispose()
        db.drop_database(url)
    if args.json:
        print(json.dumps(figures, indent=2, default=str))
        return
    table = Table(
        title="reconstruct benchmark (PostgreSQL; event tables VACUUM ANALYZEd after loading, "
        "as autovacuum would, since it is off on the bench server)"
    )
    table.add_column("measure")
    table.add_column("figure", justify="right")
    for total, step in figures["steps"].items():
        if "consume" in step:
            _add_consumer_rows(table, total, step)
        else:
            table.add_row(f"{total:,} events", "")
        for pair in step["current_state"]:
            table.add_row(
                f"  (b) current-state {pair['current_state_seconds']:.2f} s / full read "
                f"{pair['full_read_seconds']:.2f} s",
                f"{pair['ratio']:.2f}",
            )
        table.add_row(
            "  (b) current-state / full read, median",
            f"{step['current_state_to_full_read_median']:.2f}",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
