"""The cleanup's dry run (SPEC §4 through `dry_run=True`): it reads the cutoff once (R1), makes
the real run's plan, reports per pass and lifecycle what the real run would delete (R7, R8), and
changes nothing: no delete, no watermark, no lock that a producer waits for."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from tests.retention.history import (
    CUTOFF,
    CUTOFF_DAYS,
    NOW,
    OLD,
    Event,
    StoredEvent,
    audit_table,
    clock,
    load,
    realistic_history,
    remaining_ids,
    row_values,
)
from tests.retention.model import kept_after_cleanup
from usageledger import db
from usageledger.clock import SimulatedClock
from usageledger.errors import BadInputError
from usageledger.lifecycles import APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS, lifecycles_of
from usageledger.retention import (
    ALL_OLD_ROWS,
    NO_LIFECYCLE,
    CleanupResult,
    cleanup,
    cleanup_tables,
)
from usageledger.schema import EVENT_TABLES, app_usage_events, usage_event_retention

APP = APP_USAGE_EVENTS
SVC = SERVICE_USAGE_EVENTS
TABLES = [APP, SVC]
WRITES = {"INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE", "TRUNCATE", "CREATE", "DROP", "ALTER"}


def _contents(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row and column of both event tables and of the watermark table, in key order."""
    contents: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for table in (*(EVENT_TABLES[name] for name in TABLES), usage_event_retention):
            query = sa.select(table).order_by(*table.primary_key.columns)
            contents[table.name] = [tuple(row) for row in conn.execute(query)]
    return contents


def _load_histories(engine: Engine) -> dict[str, list[StoredEvent]]:
    return {
        table: load(engine, table, realistic_history(table, seed=seed, resources=20))
        for table, seed in ((APP, 11), (SVC, 12))
    }


def _counts(result: CleanupResult) -> list[tuple[str, dict[str, int], int]]:
    """What a result says was (or would be) deleted: per pass, per lifecycle, and batches."""
    return [(p.name, dict(p.deleted), p.batches) for p in result.passes]


def _bucket(table: str, state: str) -> str:
    for lc in lifecycles_of(table):
        if state in lc.states:
            return lc.kind
    return NO_LIFECYCLE


def _per_bucket(result: CleanupResult) -> Counter[str]:
    total: Counter[str] = Counter()
    for p in result.passes:
        total.update(p.deleted)
    return +total  # drop the zeros


@contextmanager
def _statements(engine: Engine) -> Iterator[list[str]]:
    """The SQL statements the engine sends through SQLAlchemy while the block runs."""
    seen: list[str] = []

    def record(_conn: Connection, _cursor: object, statement: str, *_: object) -> None:
        seen.append(" ".join(statement.split()).upper())

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def _writes(statements: Sequence[str]) -> list[str]:
    return [s for s in statements if s.split(" ", 1)[0] in WRITES or s == "BEGIN IMMEDIATE"]


def _watermark(engine: Engine, table: str) -> int | None:
    r = usage_event_retention.c
    with engine.connect() as conn:
        value = conn.execute(
            sa.select(r.pruned_through_id).where(r.table_name == table)
        ).scalar_one_or_none()
    return int(value) if value is not None else None


@pytest.mark.parametrize("keep_running", [True, False], ids=["keep-running", "r3"])
def test_r7_r8_dry_run_changes_nothing_and_writes_no_watermark(
    engine: Engine, keep_running: bool
) -> None:
    """R7, R8 (dry run): rows and the watermark table (`usage_event_retention`) are identical,
    every column, before and after a dry run over both tables that would delete rows; no
    write statement and no write-locking BEGIN is sent. The real run that follows changes both,
    so the comparison can tell."""
    _load_histories(engine)
    with engine.begin() as conn:  # an earlier run's watermark, below what this run plans
        conn.execute(
            usage_event_retention.insert().values(table_name=APP, pruned_through_id=1, cutoff=OLD)
        )
    before = _contents(engine)
    with _statements(engine) as sent:
        results = cleanup_tables(
            engine,
            TABLES,
            cutoff_age_in_days=CUTOFF_DAYS,
            keep_running_records=keep_running,
            batch_size=7,
            clock=clock(),
            dry_run=True,
        )
    assert _contents(engine) == before
    assert [s for s in sent if s.startswith("SELECT")], "the dry run read nothing"
    assert _writes(sent) == []
    assert [r.dry_run for r in results] == [True, True]
    assert all(r.deleted > 0 for r in results), [_counts(r) for r in results]

    with _statements(engine) as sent:
        real = cleanup_tables(
            engine,
            TABLES,
            cutoff_age_in_days=CUTOFF_DAYS,
            keep_running_records=keep_running,
            batch_size=7,
            clock=clock(),
        )
    assert [r.dry_run for r in real] == [False, False]
    assert _writes(sent), "the statement probe saw no write in a real run"
    assert _contents(engine) != before
    assert (_watermark(engine, APP) or 0) > 1 and _watermark(engine, SVC) is not None


@pytest.mark.parametrize("keep_running", [True, False], ids=["keep-running", "r3"])
@pytest.mark.parametrize("table", TABLES)
def test_r8_dry_run_counts_equal_what_the_real_run_then_deletes(
    engine: Engine, table: str, keep_running: bool
) -> None:
    """R8 (dry run): in a quiet database the dry run's counts per pass and per lifecycle, and
    its batches, are what the real cleanup then deletes, counted from its deletes; both agree
    with the model of R5–R7 (and of R3 without keep-running), and the cutoff is R1's."""
    stored = load(engine, table, realistic_history(table, seed=5, resources=20))
    options: dict[str, Any] = {
        "cutoff_age_in_days": CUTOFF_DAYS,
        "keep_running_records": keep_running,
        "batch_size": 6,
        "clock": clock(),
    }
    dry = cleanup(engine, table, dry_run=True, **options)
    assert remaining_ids(engine, table) == {s.id for s in stored}
    real = cleanup(engine, table, **options)

    assert _counts(dry) == _counts(real)  # the central assertion
    assert dry.deleted == real.deleted > 0
    assert dry.batches == real.batches > 1
    assert dry.kept_endings == real.kept_endings
    assert dry.cutoff == real.cutoff == CUTOFF
    assert (dry.dry_run, real.dry_run) == (True, False)
    assert dry.keep_running_records is real.keep_running_records is keep_running

    kept = kept_after_cleanup(stored, table, CUTOFF, keep_running_records=keep_running)
    assert remaining_ids(engine, table) == kept
    gone = Counter(_bucket(table, s.state) for s in stored if s.id not in kept)
    assert _per_bucket(dry) == gone


def test_r3_r2_dry_run_without_keep_running_reports_every_old_row_but_the_newest(
    engine: Engine,
) -> None:
    """R3, R2 (dry run): without keep_running_records the dry run reports every old row, the
    openings of running resources and NULL-key rows included, except the newest row (R2);
    with keep_at_least_one_record off, every old row. Nothing is deleted until the real run."""
    events = [
        Event("STARTED", "p1", OLD),
        Event("STARTED", "p1", OLD),
        Event("TASK_STARTED", "t1", OLD),
        Event("TASK_WAS_RUNNING", None, OLD),
        Event("STAGING_STARTED", "b1", OLD),
        Event("STOPPED", "p2", OLD),
    ]
    stored = load(engine, APP, events)
    every_id = {s.id for s in stored}
    options: dict[str, Any] = {
        "cutoff_age_in_days": CUTOFF_DAYS,
        "keep_running_records": False,
        "clock": clock(),
        "batch_size": 4,
    }

    dry = cleanup(engine, APP, dry_run=True, **options)
    assert [p.name for p in dry.passes] == [ALL_OLD_ROWS]
    assert dict(dry.passes[0].deleted) == {"app": 2, "task": 2, NO_LIFECYCLE: 1}
    assert dry.deleted == len(events) - 1 and dry.batches == 2
    everything = cleanup(engine, APP, dry_run=True, keep_at_least_one_record=False, **options)
    assert dict(everything.passes[0].deleted) == {"app": 3, "task": 2, NO_LIFECYCLE: 1}
    assert remaining_ids(engine, APP) == every_id

    real = cleanup(engine, APP, **options)
    assert _counts(real) == _counts(dry)
    assert remaining_ids(engine, APP) == {stored[-1].id}


def test_r4_dry_run_keeps_the_same_error_for_a_table_without_lifecycles(engine: Engine) -> None:
    """R4 (dry run): asking to keep running records on a table with no declared lifecycles is
    the same error as in a real run, raised before any work; R3 on it reports every old row
    but the newest (R2) and deletes none."""
    audit = audit_table("retention_test_dry_run_audit_events")
    audit.create(engine)
    try:
        rows = [{"id": i, "created_at": OLD.replace(tzinfo=None), "state": "X"} for i in (1, 2, 3)]
        with engine.begin() as conn:
            conn.execute(audit.insert(), rows)
        with pytest.raises(BadInputError, match="declares no lifecycles") as dry_error:
            cleanup(engine, audit, cutoff_age_in_days=CUTOFF_DAYS, clock=clock(), dry_run=True)
        with pytest.raises(BadInputError) as real_error:
            cleanup(engine, audit, cutoff_age_in_days=CUTOFF_DAYS, clock=clock())
        assert str(dry_error.value) == str(real_error.value)

        dry = cleanup(
            engine,
            audit,
            cutoff_age_in_days=CUTOFF_DAYS,
            clock=clock(),
            keep_running_records=False,
            dry_run=True,
        )
        assert dry.dry_run and dry.deleted == 2
        assert dict(dry.passes[0].deleted) == {NO_LIFECYCLE: 2}
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(audit)).scalar() == 3
    finally:
        audit.drop(engine)


class _CountingClock(SimulatedClock):
    def __init__(self, start: datetime) -> None:
        super().__init__(start)
        self.reads = 0

    def now(self, conn: Connection | None = None) -> datetime:
        self.reads += 1
        return super().now(conn)


def test_r1_dry_run_reads_the_cutoff_once_for_both_tables(engine: Engine) -> None:
    """R1 (dry run): one clock read for a dry run over both tables; both report that cutoff."""
    _load_histories(engine)
    counting = _CountingClock(NOW)
    results = cleanup_tables(
        engine, TABLES, cutoff_age_in_days=CUTOFF_DAYS, clock=counting, dry_run=True
    )
    assert counting.reads == 1
    assert [r.cutoff for r in results] == [CUTOFF, CUTOFF]
    assert all(r.deleted > 0 for r in results)


@pytest.mark.parametrize("keep_running", [True, False], ids=["keep-running", "r3"])
def test_r8_dry_run_never_makes_the_producer_wait(
    db_url: URL, engine: Engine, keep_running: bool
) -> None:
    """R8 (dry run): after each statement the dry run sends inside one of its transactions,
    a producer on another connection inserts and commits an event without waiting (SQLite: no
    write lock; PostgreSQL, MariaDB: plain reads lock nothing). The inserted rows are fresh, so
    the dry run still reports what it would delete."""
    _load_histories(engine)
    producer = db.make_engine(db_url)
    probes: list[str] = []

    def insert_event() -> None:
        values = row_values(APP, Event("STARTED", f"probe-{len(probes)}", NOW))
        with producer.begin() as conn:
            conn.execute(app_usage_events.insert().values(**values))

    def probe(conn: Connection, _cursor: object, statement: str, *_: object) -> None:
        if not conn.in_transaction():
            return
        errors: list[BaseException] = []

        def run() -> None:
            try:
                insert_event()
            except BaseException as exc:
                errors.append(exc)

        writer = threading.Thread(target=run)
        writer.start()
        writer.join(5)
        assert not writer.is_alive(), f"a producer insert waited on the dry run: {statement}"
        assert errors == []
        probes.append(statement)

    sa.event.listen(engine, "after_cursor_execute", probe)
    try:
        result = cleanup(
            engine,
            APP,
            cutoff_age_in_days=CUTOFF_DAYS,
            keep_running_records=keep_running,
            batch_size=50,
            clock=clock(),
            dry_run=True,
        )
    finally:
        sa.event.remove(engine, "after_cursor_execute", probe)
        producer.dispose()
    assert probes, "no statement of the dry run ran inside a transaction"
    assert result.deleted > 0
