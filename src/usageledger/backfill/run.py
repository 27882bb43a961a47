"""One backfill run (SPEC B3, B7, B8, B10): under the run lock, seed then repair each kind, in
batches that walk a table by id, each batch one INSERT…SELECT in its own transaction."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from enum import StrEnum
from functools import partial
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from usageledger import db
from usageledger.backfill.kinds import KINDS, ResourceKind, kind_named
from usageledger.backfill.repair import repair_statement
from usageledger.backfill.seed import lock_statement, seed_statement
from usageledger.backfill.window import window_values
from usageledger.clock import DEFAULT_CLOCK, Clock
from usageledger.errors import BadInputError

log = logging.getLogger(__name__)

#: The run lock's name (B8): one backfill per database at a time.
BACKFILL_LOCK = "backfill"
DEFAULT_BATCH_SIZE = 1000
KIND_NAMES: tuple[str, ...] = tuple(kind.name for kind in KINDS)


class Phase(StrEnum):
    SEED = "seed"
    REPAIR = "repair"


@attrs.frozen
class BatchReport:
    """One batch that ran: which window of which table, and how many rows it appended."""

    kind: str
    phase: Phase
    #: 1-based position of this batch in its phase, and how many the phase walks.
    number: int
    count: int
    after_id: int
    through_id: int
    inserted: int
    seconds: float


@attrs.frozen
class KindResult:
    """What a run did for one kind (B10)."""

    seeded: int = 0
    repaired: int = 0
    batches: int = 0
    elapsed_seconds: float = 0.0

    def to_json(self) -> dict[str, int]:
        return {"seeded": self.seeded, "repaired": self.repaired, "batches": self.batches}


@attrs.frozen
class BackfillResult:
    """What a run did, per kind, and how long it took (B10)."""

    app: KindResult
    task: KindResult
    service: KindResult
    elapsed_seconds: float

    def kind(self, name: str) -> KindResult:
        result = getattr(self, name)
        assert isinstance(result, KindResult)
        return result

    @property
    def rows_added(self) -> int:
        return sum(self.kind(n).seeded + self.kind(n).repaired for n in KIND_NAMES)

    def to_json(self) -> dict[str, Any]:
        """B10's document: {"app": {seeded, repaired, batches}, "task", "service", elapsed}."""
        document: dict[str, Any] = {name: self.kind(name).to_json() for name in KIND_NAMES}
        document["elapsed_seconds"] = round(self.elapsed_seconds, 6)
        return document


def validate_batch_size(batch_size: object) -> int:
    """B3: an integer ≥ 1, checked before any work."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise BadInputError(f"batch size must be an integer of at least 1, got {batch_size!r}")
    return batch_size


def _kinds(names: Sequence[str]) -> tuple[ResourceKind, ...]:
    try:
        chosen = {kind_named(name).name for name in names}
    except KeyError as exc:
        raise BadInputError(
            f"unknown backfill kind {exc.args[0]!r}; use app, task or service"
        ) from None
    # Always in B9's order, whatever order the caller named them in.
    return tuple(kind for kind in KINDS if kind.name in chosen)


def _id_range(
    engine: Engine, lock: db.RunLock, table: sa.Table, where: sa.ColumnElement[bool]
) -> tuple[int, int] | None:
    with db.locked_transaction(engine, lock, isolation=db.Isolation.READ_COMMITTED) as conn:
        low, high = conn.execute(
            sa.select(sa.func.min(table.c.id), sa.func.max(table.c.id)).where(where)
        ).one()
    return None if low is None else (int(low), int(high))


def _one_batch(
    engine: Engine,
    lock: db.RunLock,
    statement: sa.Insert,
    lock_rows: sa.Select[tuple[int]] | None,
    after: int,
    through: int,
    clock: Clock,
) -> int:
    """One window of a phase: one INSERT…SELECT (after the seed's share locks) in one
    transaction on the lock's session; the rows it appended."""
    with db.locked_transaction(engine, lock, isolation=db.Isolation.READ_COMMITTED) as conn:
        if lock_rows is not None:
            conn.execute(lock_rows, window_values(after, through)).all()
        now = clock.now(conn)  # the seed or repair time of this batch's rows (B4, B5)
        return conn.execute(
            statement,
            window_values(after, through, now),
            # Read from the INSERT itself (some drivers drop an INSERT's count otherwise).
            execution_options={"preserve_rowcount": True},
        ).rowcount


def _walk(
    engine: Engine,
    lock: db.RunLock,
    kind: ResourceKind,
    phase: Phase,
    *,
    batch_size: int,
    clock: Clock,
) -> Iterator[BatchReport]:
    """Walk the phase's table by id in windows of `batch_size` ids, one INSERT…SELECT each.

    The seed walks the resource table; the repair walks the event table between the first and
    the last baseline. The windows end at the highest id seen when the phase starts, so the walk
    always ends (a window that appends nothing simply moves on).
    """
    lock_rows: sa.Select[tuple[int]] | None = None
    if phase is Phase.SEED:
        span = _id_range(engine, lock, kind.source, sa.true())
        statement = seed_statement(kind, engine)
        lock_rows = lock_statement(kind)
    else:
        events = kind.events
        span = _id_range(engine, lock, events, events.c.state == kind.lifecycle.baseline)
        statement = repair_statement(kind, engine)
    if span is None:
        return
    low, high = span
    count = (high - low) // batch_size + 1
    after = low - 1
    for number in range(1, count + 1):
        through = min(after + batch_size, high)
        started = time.perf_counter()

        # A platform transaction that locks several resource rows out of id order can deadlock
        # with the seed's id-ordered share locks, and either may be the victim: the batch rolled
        # back whole and its lock session lives, so it runs again.
        inserted = db.retry_conflicts(
            partial(_one_batch, engine, lock, statement, lock_rows, after, through, clock),
            what=f"{kind.name} {phase.value} batch {number} of {count}",
        )
        assert inserted >= 0, "the driver did not report the INSERT's row count"
        yield BatchReport(
            kind=kind.name,
            phase=phase,
            number=number,
            count=count,
            after_id=after,
            through_id=through,
            inserted=inserted,
            seconds=time.perf_counter() - started,
        )
        after = through


def backfill_batches(
    engine: Engine,
    lock: db.RunLock,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    clock: Clock = DEFAULT_CLOCK,
    kinds: Sequence[str] = KIND_NAMES,
) -> Iterator[BatchReport]:
    """The run's batches, one per `next()`, for a caller that already holds `lock` (B8).

    Each kind is seeded and then repaired before the next kind starts (apps, tasks, services).
    Stepping this iterator is how the simulator interleaves a backfill with other actors.
    """
    batch_size = validate_batch_size(batch_size)
    for kind in _kinds(kinds):
        for phase in (Phase.SEED, Phase.REPAIR):
            yield from _walk(engine, lock, kind, phase, batch_size=batch_size, clock=clock)


def summarize(reports: Sequence[BatchReport], elapsed_seconds: float) -> BackfillResult:
    """Fold a run's batch reports into its result."""
    per_kind: dict[str, KindResult] = {name: KindResult() for name in KIND_NAMES}
    for report in reports:
        before = per_kind[report.kind]
        per_kind[report.kind] = KindResult(
            seeded=before.seeded + (report.inserted if report.phase is Phase.SEED else 0),
            repaired=before.repaired + (report.inserted if report.phase is Phase.REPAIR else 0),
            batches=before.batches + 1,
            elapsed_seconds=before.elapsed_seconds + report.seconds,
        )
    return BackfillResult(
        app=per_kind["app"],
        task=per_kind["task"],
        service=per_kind["service"],
        elapsed_seconds=elapsed_seconds,
    )


def backfill(
    engine: Engine,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    wait_for_lock: bool = False,
    clock: Clock = DEFAULT_CLOCK,
    kinds: Sequence[str] = KIND_NAMES,
    on_batch: Callable[[BatchReport], None] | None = None,
) -> BackfillResult:
    """Seed and repair baselines (SPEC §5) under the run lock, and report what was added.

    Raises BadInputError for a bad batch size or kind before touching the database, and
    LockHeldError when another run holds the lock and `wait_for_lock` is false (B8).
    """
    batch_size = validate_batch_size(batch_size)
    chosen = _kinds(kinds)
    started = time.perf_counter()
    reports: list[BatchReport] = []
    with db.run_lock(engine, BACKFILL_LOCK, wait=wait_for_lock) as lock:
        for report in backfill_batches(
            engine, lock, batch_size=batch_size, clock=clock, kinds=[k.name for k in chosen]
        ):
            reports.append(report)
            if on_batch is not None:
                on_batch(report)
    result = summarize(reports, time.perf_counter() - started)
    for kind in chosen:
        done = result.kind(kind.name)
        log.info(
            "backfill %s: %d baselines seeded, %d endings repaired, %d batches, %.3fs",
            kind.name,
            done.seeded,
            done.repaired,
            done.batches,
            done.elapsed_seconds,
        )
    return result
