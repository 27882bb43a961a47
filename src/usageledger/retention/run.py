"""The keep-running cleanup of the usage-event tables (SPEC §4).

`cleanup` reads the cutoff once (R1), then reads the table once by id up to the newest old row,
deciding which old openings are superseded (R5, R6) and collecting the other old non-openings
(R11). It deletes in the safe order (R7): pass 1 the superseded openings, pass 2 the old rows
that are not openings. Every delete is a batch of explicit ids in its own short transaction
(R8), so an interrupted run leaves a consistent table and the next run, deciding afresh,
finishes it.

A dry run (`dry_run=True`) takes the same steps up to the deletes: the same cutoff read, the
same plan, the same batches. It then counts each batch's ids instead of deleting them, writes
no watermark, and runs nothing but read-only transactions, so an operator sees what a cleanup
would delete before it does.
"""

from __future__ import annotations

import bisect
import logging
import time
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime, timedelta
from functools import partial
from itertools import chain

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from usageledger import db
from usageledger.clock import DEFAULT_CLOCK, Clock
from usageledger.errors import BadInputError
from usageledger.lifecycles import Lifecycle, lifecycles_of
from usageledger.retention.decision import (
    NO_LIFECYCLE,
    SupersededOpeningsWalk,
    delete_ids_statement,
    lifecycle_rows_query,
    newest_id_query,
    newest_old_id_query,
    old_rows_page_query,
)
from usageledger.schema import EVENT_TABLES, usage_event_retention

log = logging.getLogger(__name__)

DEFAULT_CUTOFF_AGE_IN_DAYS = 31
DEFAULT_BATCH_SIZE = 1000
#: A batch is one DELETE with its ids as parameters: SQLite takes at most 32,766 of them, and a
#: batch is meant to be a short transaction (R8).
MAX_BATCH_SIZE = 10_000
#: About 270 years: beyond it the cutoff date leaves what the databases store.
MAX_CUTOFF_AGE_IN_DAYS = 100_000
#: Rows the deciding walk fetches and folds at a time, from one streamed statement.
WALK_CHUNK_ROWS = 5_000

#: Pass names, as they appear in results, logs and JSON.
SUPERSEDED_OPENINGS = "superseded_openings"
NON_OPENINGS = "non_openings"
ALL_OLD_ROWS = "all_old_rows"


@attrs.frozen
class BatchProgress:
    """Reported after every committed batch (progress display, operators' hooks)."""

    table: str
    pass_name: str
    deleted_in_batch: int
    deleted_so_far: int
    planned: int | None
    """How many rows the pass means to delete, when known before it starts (pass 1)."""


OnBatch = Callable[[BatchProgress], None]


@attrs.frozen
class PassResult:
    """Rows one pass deleted, per lifecycle kind (and `other`), counted from the deletes; in a
    dry run, the rows it would delete, counted from the ids its batches would name."""

    name: str
    deleted: Mapping[str, int]
    batches: int

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


@attrs.frozen(eq=False)
class CleanupPlan:
    """What a run decided before deleting anything, from one read of the table."""

    table: sa.Table
    cutoff: datetime
    newest_id: int | None
    """The highest id when the run started; never deleted with keep_at_least_one_record (R2)."""
    upper_id: int
    """The highest id any pass may delete: the newest old row, below `newest_id` under R2."""
    prunable_openings: Mapping[str, array[int]]
    """Per lifecycle kind, the ids of the superseded old openings (R5), ascending."""
    kept_endings: frozenset[int]
    """Old endings whose run still has a fresh opening; pass 2 leaves them (R7)."""
    non_openings: Mapping[str, array[int]] = attrs.Factory(dict)
    """Pass 2's ids (R7) per lifecycle kind (its endings) and `other`, ascending: every old
    row up to `upper_id` whose state opens no lifecycle, except `kept_endings`."""

    @property
    def planned_non_openings(self) -> int:
        return sum(len(ids) for ids in self.non_openings.values())

    @property
    def planned_openings(self) -> int:
        return sum(len(ids) for ids in self.prunable_openings.values())


@attrs.frozen
class CleanupResult:
    """The outcome of one cleanup of one table."""

    table: str
    cutoff: datetime
    keep_running_records: bool
    keep_at_least_one_record: bool
    passes: tuple[PassResult, ...]
    kept_endings: int
    elapsed_seconds: float
    dry_run: bool = False
    """True when the run deleted nothing: `passes` then count what it would have deleted."""

    @property
    def deleted(self) -> int:
        return sum(p.total for p in self.passes)

    @property
    def batches(self) -> int:
        return sum(p.batches for p in self.passes)

    def pass_named(self, name: str) -> PassResult | None:
        return next((p for p in self.passes if p.name == name), None)


# --- inputs ---------------------------------------------------------------------------------


def resolve_table(table: str | sa.Table) -> sa.Table:
    """A usage-event table by name, or a Table given directly (R4 checks its lifecycles)."""
    if isinstance(table, sa.Table):
        return table
    found = EVENT_TABLES.get(table)
    if found is None:
        raise BadInputError(
            f"unknown usage-event table {table!r}; use one of {', '.join(EVENT_TABLES)}"
        )
    return found


def _int_within(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def check_cleanup_options(cutoff_age_in_days: object, batch_size: object) -> None:
    """Reject bad option values before any work (exit 2, nothing written)."""
    if not _int_within(cutoff_age_in_days, 0, MAX_CUTOFF_AGE_IN_DAYS):
        raise BadInputError(
            f"cutoff age must be a whole number of days from 0 to {MAX_CUTOFF_AGE_IN_DAYS}, "
            f"got {cutoff_age_in_days!r}"
        )
    if not _int_within(batch_size, 1, MAX_BATCH_SIZE):
        raise BadInputError(
            f"batch size must be an integer from 1 to {MAX_BATCH_SIZE}, got {batch_size!r}"
        )


def check_lifecycles(table: sa.Table, *, keep_running_records: bool) -> tuple[Lifecycle, ...]:
    """R4: keeping running records needs lifecycles to tell what is running."""
    lifecycles = lifecycles_of(table.name)
    if keep_running_records and not lifecycles:
        raise BadInputError(
            f"table {table.name!r} declares no lifecycles, so cleanup cannot tell which of its "
            "rows belong to running resources; refusing to delete (pass "
            "keep_running_records=False / --no-keep-running-records to delete every old row)"
        )
    return lifecycles


def cutoff_for(conn: Connection, clock: Clock, cutoff_age_in_days: int) -> datetime:
    """R1: clock now minus the age, read once per run. Old means created_at < cutoff."""
    return clock.now(conn) - timedelta(days=cutoff_age_in_days)


# --- connections ----------------------------------------------------------------------------


@contextmanager
def _run_connection(bind: Engine | Connection, *, deletes: bool) -> Iterator[Connection]:
    """One connection for the whole run; each batch is its own transaction on it. A run that
    deletes has it set up for many delete batches (`db.bulk_deletes`, once per run however
    many passes use it); a plan or a dry run leaves it as it is."""
    if isinstance(bind, Connection) and bind.in_transaction():
        raise ValueError("cleanup runs its own transactions; pass a connection outside one")
    # A caller's connection stays open after the run; an engine's is closed with it.
    with nullcontext(bind) if isinstance(bind, Connection) else bind.connect() as conn:
        db.use_read_committed(conn)
        with db.bulk_deletes(conn) if deletes else nullcontext():
            yield conn


def _delete_batch(
    conn: Connection, table: sa.Table, groups: Mapping[str, list[int]]
) -> dict[str, int]:
    """Delete one batch in one transaction; per-bucket counts come from the DELETE rowcounts.

    One DELETE for the whole batch: when it deletes every id, each bucket's count is its share
    of the batch. When some ids were already gone (a concurrent cleanup got there first) and
    the batch spans buckets, roll it back and delete bucket by bucket, so the counts stay
    exact (R8) without a COUNT query.
    """
    filled = {bucket: ids for bucket, ids in groups.items() if ids}
    every_id = list(chain.from_iterable(filled.values()))
    if not every_id:
        return {}
    with conn.begin() as transaction:
        deleted = conn.execute(delete_ids_statement(conn, table, every_id)).rowcount
        if len(filled) == 1:
            return {next(iter(filled)): deleted}
        if deleted == len(every_id):
            return {bucket: len(ids) for bucket, ids in filled.items()}
        transaction.rollback()
    with conn.begin():
        return {
            bucket: conn.execute(delete_ids_statement(conn, table, ids)).rowcount
            for bucket, ids in filled.items()
        }


def _count_batch(groups: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """What one batch would delete in a dry run: its planned ids per bucket, nothing sent."""
    return {bucket: len(ids) for bucket, ids in groups.items() if ids}


# --- the decision ---------------------------------------------------------------------------


def plan_cleanup(
    bind: Engine | Connection,
    table: str | sa.Table,
    *,
    cutoff: datetime,
    keep_at_least_one_record: bool = True,
) -> CleanupPlan:
    """Decide, in one read-only transaction, what the keep-running passes delete.

    One keyset walk by id over every row up to the newest old row (R11); the plan holds the
    ids of both passes, so the deletes that follow read nothing and never re-run a filtered
    query (R8).
    """
    resolved = resolve_table(table)
    lifecycles = check_lifecycles(resolved, keep_running_records=True)
    with _run_connection(bind, deletes=False) as conn, db.read_only_transaction(conn):
        return _plan(conn, resolved, lifecycles, cutoff, keep_at_least_one_record)


def _plan(
    conn: Connection,
    table: sa.Table,
    lifecycles: Sequence[Lifecycle],
    cutoff: datetime,
    keep_at_least_one_record: bool,
) -> CleanupPlan:
    newest_id = conn.execute(newest_id_query(table)).scalar()
    newest_old_id = conn.execute(newest_old_id_query(table, cutoff=cutoff)).scalar()
    if newest_id is None or newest_old_id is None:
        return CleanupPlan(
            table=table,
            cutoff=cutoff,
            newest_id=newest_id,
            upper_id=0,
            prunable_openings={lc.kind: array("q") for lc in lifecycles},
            kept_endings=frozenset(),
        )
    upper_id = newest_old_id
    if keep_at_least_one_record:
        upper_id = min(upper_id, newest_id - 1)  # R2
    walk = SupersededOpeningsWalk(lifecycles, upper_id)
    if lifecycles:
        # The walk reads up to the newest old row (the newest row is still evidence); only
        # ids up to upper_id are ever deleted. One ordered read of the id range (R11): it
        # decides pass 1 and collects pass 2 at once.
        _walk_id_range(conn, table, lifecycles, walk, cutoff, newest_old_id)
    prunable = walk.take_prunable_openings()
    return CleanupPlan(
        table=table,
        cutoff=cutoff,
        newest_id=newest_id,
        upper_id=upper_id,
        prunable_openings=prunable,
        kept_endings=frozenset(walk.kept_endings),
        non_openings=walk.non_openings if lifecycles else {},
    )


def _walk_id_range(
    conn: Connection,
    table: sa.Table,
    lifecycles: Sequence[Lifecycle],
    walk: SupersededOpeningsWalk,
    cutoff: datetime,
    newest_old_id: int,
) -> None:
    """Feed the walk every row up to the newest old one: one ordered statement over the
    primary key, streamed in chunks of WALK_CHUNK_ROWS (R11), so the server reads on while the
    fold runs and no page query is ever re-planned."""
    query = lifecycle_rows_query(table, lifecycles, cutoff=cutoff, upper_id=newest_old_id)
    # The driver's own tuples: every column is an int or a plain string, so SQLAlchemy's
    # per-row Row objects would cost more than the whole fold.
    for chunk in db.stream_rows(conn, query, WALK_CHUNK_ROWS):
        walk.feed(chunk)


# --- the passes -----------------------------------------------------------------------------


def prune_superseded_openings(
    bind: Engine | Connection,
    plan: CleanupPlan,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: OnBatch | None = None,
    dry_run: bool = False,
) -> PassResult:
    """Pass 1 (R7): delete the planned superseded openings, while their evidence still exists.

    With `dry_run`, count what each batch would delete and touch nothing."""
    return _delete_planned(
        bind,
        plan,
        pass_name=SUPERSEDED_OPENINGS,
        ids_by_bucket=plan.prunable_openings,
        buckets=list(plan.prunable_openings),
        planned=plan.planned_openings,
        batch_size=batch_size,
        on_batch=on_batch,
        dry_run=dry_run,
    )


def prune_non_openings(
    bind: Engine | Connection,
    plan: CleanupPlan,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: OnBatch | None = None,
    dry_run: bool = False,
) -> PassResult:
    """Pass 2 (R7): delete the old rows whose state opens no lifecycle, as the plan read them.

    Run it only after pass 1 of the same plan: an ending must outlive the openings it closes.
    The ids come from the plan's walk, so this pass reads nothing; a row committed after the
    plan was made waits for the next run. With `dry_run`, count what each batch would delete
    and touch nothing.
    """
    lifecycles = lifecycles_of(plan.table.name)
    return _delete_planned(
        bind,
        plan,
        pass_name=NON_OPENINGS,
        ids_by_bucket=plan.non_openings,
        buckets=[*(lc.kind for lc in lifecycles), NO_LIFECYCLE],
        planned=plan.planned_non_openings,
        batch_size=batch_size,
        on_batch=on_batch,
        dry_run=dry_run,
    )


@attrs.define
class _PassTally:
    """Rows one pass deleted so far, per bucket, from the deletes' rowcounts (R8)."""

    table: str
    pass_name: str
    planned: int | None
    on_batch: OnBatch | None
    deleted: dict[str, int]
    batches: int = 0
    so_far: int = 0
    dry_run: bool = False

    def add_batch(self, counts: Mapping[str, int]) -> None:
        self.batches += 1
        done = sum(counts.values())
        for bucket, count in counts.items():
            self.deleted[bucket] = self.deleted.get(bucket, 0) + count
        self.so_far += done
        if self.on_batch is not None:
            self.on_batch(
                BatchProgress(self.table, self.pass_name, done, self.so_far, self.planned)
            )

    def result(self) -> PassResult:
        result = PassResult(self.pass_name, self.deleted, self.batches)
        log.info(
            "%s: %s %s %s rows %s",
            self.table,
            self.pass_name,
            "would delete" if self.dry_run else "deleted",
            result.total,
            self.deleted,
        )
        return result


def _delete_planned(
    bind: Engine | Connection,
    plan: CleanupPlan,
    *,
    pass_name: str,
    ids_by_bucket: Mapping[str, array[int]],
    buckets: Sequence[str],
    planned: int,
    batch_size: int,
    on_batch: OnBatch | None,
    dry_run: bool,
) -> PassResult:
    """Delete planned ids in batches of `batch_size`, all buckets together in id order (each
    batch touches neighbouring rows and pages), each batch its own transaction (R8).

    A dry run cuts the same batches and counts their ids: it needs no connection, since the
    plan holds every id, and it reports no progress (no batch commits)."""
    check_cleanup_options(0, batch_size)
    table = plan.table
    tally = _PassTally(
        table.name,
        pass_name,
        planned,
        None if dry_run else on_batch,
        {bucket: 0 for bucket in buckets},
        dry_run=dry_run,
    )
    if dry_run:
        for groups in _batches_in_id_order(ids_by_bucket, batch_size):
            tally.add_batch(_count_batch(groups))
        return tally.result()
    with _run_connection(bind, deletes=True) as conn:
        for groups in _batches_in_id_order(ids_by_bucket, batch_size):
            tally.add_batch(
                db.retry_conflicts(
                    partial(_delete_batch, conn, table, groups),
                    what=f"{table.name} {pass_name} batch {tally.batches + 1}",
                )
            )
    return tally.result()


def _batches_in_id_order(
    ids_by_bucket: Mapping[str, array[int]], batch_size: int
) -> Iterator[dict[str, list[int]]]:
    """The planned ids of every bucket together, in id order, cut into batches of at most
    `batch_size`, without a list of every id: each bucket's ids are ascending, so a batch is
    the next slice of every bucket's array, cut at the batch's highest id. Only one batch's
    ids ever exist as Python ints.

    The batch's highest id is the least value with `batch_size` ids at or below it, found by
    bisecting on the value; the count below a value is one bisect per bucket (no merge of the
    ids themselves).
    """
    names = list(ids_by_bucket)
    arrays = [ids_by_bucket[name] for name in names]
    starts = [0] * len(arrays)
    while True:
        # Each bucket's next batch_size ids: the batch is a prefix of each of these slices.
        slices = [
            (ids, start, min(start + batch_size, len(ids)))
            for ids, start in zip(arrays, starts, strict=True)
        ]
        left = sum(end - start for _, start, end in slices)
        if left == 0:
            return
        ends = [end for _, _, end in slices]
        if left > batch_size:
            ends = _cut_at(slices, batch_size)
        yield {
            name: ids[start:end].tolist()
            for name, (ids, start, _), end in zip(names, slices, ends, strict=True)
            if end > start
        }
        starts = ends


def _cut_at(slices: Sequence[tuple[array[int], int, int]], batch_size: int) -> list[int]:
    """Where each (ids, start, end) slice ends so that together they hold the `batch_size`
    smallest ids: bisect on the value between `low` (no id at or below it) and `high` (at
    least batch_size ids at or below it: the last id of a full slice, or the largest of all)."""
    filled = [(ids, start, end) for ids, start, end in slices if end > start]
    low = min(ids[start] for ids, start, _ in filled) - 1
    high = min(
        [ids[end - 1] for ids, start, end in filled if end - start == batch_size]
        or [max(ids[end - 1] for ids, _, end in filled)]
    )
    while high - low > 1:
        middle = (low + high) // 2
        below = sum(
            bisect.bisect_right(ids, middle, start, end) - start for ids, start, end in slices
        )
        if below >= batch_size:
            high = middle
        else:
            low = middle
    ends = [bisect.bisect_right(ids, high, start, end) for ids, start, end in slices]
    # Ids are unique across buckets (a row is in one), so exactly batch_size are at or below
    # `high`; should an id ever be planned twice, the batch still keeps to batch_size (R8).
    extra = sum(ends) - sum(start for _, start, _ in slices) - batch_size
    for index, (_, start, _) in enumerate(slices):
        dropped = min(extra, ends[index] - start)
        ends[index] -= dropped
        extra -= dropped
    return ends


def _old_rows_page(
    conn: Connection,
    table: sa.Table,
    query: sa.Select[int, str],
    keep: frozenset[int],
    bucket_of: Mapping[str, str],
    *,
    dry_run: bool,
) -> tuple[int | None, dict[str, int]]:
    """One page of the keyset walk in one transaction: read it, delete its ids (a dry run
    counts them, read-only). Returns the page's last id (None when there is no page) and the
    rows deleted per bucket."""
    page_transaction: AbstractContextManager[object] = (
        db.read_only_transaction(conn) if dry_run else conn.begin()
    )
    with page_transaction:
        page = conn.execute(query).all()
        if not page:
            return None, {}
        groups: dict[str, list[int]] = {}
        for row_id, state in page:
            if row_id not in keep:
                groups.setdefault(bucket_of.get(state, NO_LIFECYCLE), []).append(row_id)
        if dry_run:
            return page[-1][0], _count_batch(groups)
        return page[-1][0], {
            bucket: conn.execute(delete_ids_statement(conn, table, ids)).rowcount
            for bucket, ids in groups.items()
        }


def _walk_old_rows(
    bind: Engine | Connection,
    table: sa.Table,
    plan: CleanupPlan,
    *,
    pass_name: str,
    except_states: Sequence[str],
    keep: frozenset[int],
    buckets: Sequence[str],
    bucket_of: Mapping[str, str],
    batch_size: int,
    on_batch: OnBatch | None,
    dry_run: bool,
) -> PassResult:
    """Keyset walk over old rows by id (R11): each page starts after the previous one.

    A dry run reads the same pages, each in a read-only transaction, and counts the ids each
    page would delete; it reports no progress (no batch commits)."""
    check_cleanup_options(0, batch_size)
    tally = _PassTally(
        table.name,
        pass_name,
        None,
        None if dry_run else on_batch,
        {bucket: 0 for bucket in (*buckets, NO_LIFECYCLE)},
        dry_run=dry_run,
    )
    after_id = 0
    with _run_connection(bind, deletes=not dry_run) as conn:
        while after_id < plan.upper_id:
            query = old_rows_page_query(
                table,
                cutoff=plan.cutoff,
                after_id=after_id,
                upper_id=plan.upper_id,
                limit=batch_size,
                except_states=except_states,
            )
            page = partial(_old_rows_page, conn, table, query, keep, bucket_of, dry_run=dry_run)
            last_id, counts = (
                page()
                if dry_run
                else db.retry_conflicts(
                    page, what=f"{table.name} {pass_name} batch {tally.batches + 1}"
                )
            )
            if last_id is None:
                break
            after_id = last_id
            tally.add_batch(counts)
    return tally.result()


def prune_all_old_rows(
    bind: Engine | Connection,
    plan: CleanupPlan,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: OnBatch | None = None,
    dry_run: bool = False,
) -> PassResult:
    """R3: without keep_running_records every old row goes (R2 still applies via the plan).

    With `dry_run`, count what each page would delete and touch nothing."""
    table = plan.table
    lifecycles = lifecycles_of(table.name)
    bucket_of = {state: lc.kind for lc in lifecycles for state in lc.states}
    return _walk_old_rows(
        bind,
        table,
        plan,
        pass_name=ALL_OLD_ROWS,
        except_states=(),
        keep=frozenset(),
        buckets=[lc.kind for lc in lifecycles],
        bucket_of=bucket_of,
        batch_size=batch_size,
        on_batch=on_batch,
        dry_run=dry_run,
    )


# --- the run --------------------------------------------------------------------------------


def cleanup(
    bind: Engine | Connection,
    table: str | sa.Table,
    *,
    cutoff_age_in_days: int = DEFAULT_CUTOFF_AGE_IN_DAYS,
    keep_at_least_one_record: bool = True,
    keep_running_records: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    clock: Clock = DEFAULT_CLOCK,
    on_batch: OnBatch | None = None,
    dry_run: bool = False,
) -> CleanupResult:
    """Clean one usage-event table (SPEC §4) and say what was deleted.

    With `dry_run`, delete nothing and say what would be deleted (see `cleanup_tables`)."""
    return cleanup_tables(
        bind,
        [table],
        cutoff_age_in_days=cutoff_age_in_days,
        keep_at_least_one_record=keep_at_least_one_record,
        keep_running_records=keep_running_records,
        batch_size=batch_size,
        clock=clock,
        on_batch=on_batch,
        dry_run=dry_run,
    )[0]


def cleanup_tables(
    bind: Engine | Connection,
    tables: Sequence[str | sa.Table],
    *,
    cutoff_age_in_days: int = DEFAULT_CUTOFF_AGE_IN_DAYS,
    keep_at_least_one_record: bool = True,
    keep_running_records: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    clock: Clock = DEFAULT_CLOCK,
    on_batch: OnBatch | None = None,
    dry_run: bool = False,
) -> tuple[CleanupResult, ...]:
    """Clean several tables in one run, with one cutoff read once for all of them (R1).

    Every check (options, table names, R4) happens before the first delete.

    `dry_run=True` makes the same checks, reads the cutoff once and makes the same plan, then
    reports per pass and lifecycle the rows the run would delete (the ids its batches would
    name) and deletes none: no DELETE, no watermark, only read-only transactions, so the
    producer never waits for it. `on_batch` is not called (no batch commits). In a quiet
    database its counts are what the real run then deletes.
    """
    check_cleanup_options(cutoff_age_in_days, batch_size)
    resolved = [resolve_table(t) for t in tables]
    for t in resolved:
        check_lifecycles(t, keep_running_records=keep_running_records)
    results: list[CleanupResult] = []
    with _run_connection(bind, deletes=not dry_run) as conn:
        with db.read_only_transaction(conn):
            cutoff = cutoff_for(conn, clock, cutoff_age_in_days)
        log.info(
            "cleanup%s: cutoff %s (%s days)",
            " (dry run)" if dry_run else "",
            cutoff.isoformat(),
            cutoff_age_in_days,
        )
        for t in resolved:
            results.append(
                _cleanup_table(
                    conn,
                    t,
                    cutoff=cutoff,
                    keep_at_least_one_record=keep_at_least_one_record,
                    keep_running_records=keep_running_records,
                    batch_size=batch_size,
                    on_batch=on_batch,
                    dry_run=dry_run,
                )
            )
    return tuple(results)


def _record_watermark(conn: Connection, plan: CleanupPlan, keep_running_records: bool) -> None:
    """Raise the table's watermark (`usage_event_retention`) to the highest id this run plans
    to delete, in a transaction of its own before any delete: a consumer whose cursor is below
    it knows that rows it has not read may be gone (C10). Never lowered; nothing planned,
    nothing written."""
    if keep_running_records:
        lasts = [
            ids[-1]
            for ids in (*plan.prunable_openings.values(), *plan.non_openings.values())
            if ids
        ]
        through = max(lasts, default=None)
    else:
        through = plan.upper_id if plan.upper_id > 0 else None  # R3 deletes every old row
    if through is None:
        return
    r = usage_event_retention.c
    mine = r.table_name == plan.table.name
    raise_it = (
        usage_event_retention.update()
        .where(mine, r.pruned_through_id < through)
        .values(pruned_through_id=through, cutoff=plan.cutoff)
    )
    with conn.begin():
        raised = conn.execute(raise_it).rowcount
        if raised or conn.execute(sa.select(r.table_name).where(mine)).first() is not None:
            return
    try:
        with conn.begin():
            conn.execute(
                usage_event_retention.insert().values(
                    table_name=plan.table.name, pruned_through_id=through, cutoff=plan.cutoff
                )
            )
    except sa.exc.IntegrityError:  # a concurrent cleanup inserted it first: raise that one
        with conn.begin():
            conn.execute(raise_it)


def _cleanup_table(
    conn: Connection,
    table: sa.Table,
    *,
    cutoff: datetime,
    keep_at_least_one_record: bool,
    keep_running_records: bool,
    batch_size: int,
    on_batch: OnBatch | None,
    dry_run: bool,
) -> CleanupResult:
    started = time.perf_counter()  # elapsed work time, not domain time: no Clock needed
    lifecycles = lifecycles_of(table.name)
    with db.read_only_transaction(conn):
        # R3 needs no decision: only the id bounds.
        decided = lifecycles if keep_running_records else ()
        plan = _plan(conn, table, decided, cutoff, keep_at_least_one_record)
    if not dry_run:  # a dry run deletes nothing, so it has nothing to record
        _record_watermark(conn, plan, keep_running_records)
    passes: tuple[PassResult, ...]
    if keep_running_records:
        passes = (
            prune_superseded_openings(
                conn, plan, batch_size=batch_size, on_batch=on_batch, dry_run=dry_run
            ),
            prune_non_openings(
                conn, plan, batch_size=batch_size, on_batch=on_batch, dry_run=dry_run
            ),
        )
    else:
        passes = (
            prune_all_old_rows(
                conn, plan, batch_size=batch_size, on_batch=on_batch, dry_run=dry_run
            ),
        )
    result = CleanupResult(
        table=table.name,
        cutoff=cutoff,
        keep_running_records=keep_running_records,
        keep_at_least_one_record=keep_at_least_one_record,
        passes=passes,
        kept_endings=len(plan.kept_endings),
        elapsed_seconds=time.perf_counter() - started,
        dry_run=dry_run,
    )
    log.info(
        "%s: %s %s rows in %s batches, %.2fs",
        table.name,
        "dry run, would delete" if dry_run else "deleted",
        result.deleted,
        result.batches,
        result.elapsed_seconds,
    )
    return result
