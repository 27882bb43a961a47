"""The forward-reading billing consumer (SPEC C1, C2, C10, C14).

One batch: lock the cursor in the ledger, read the next events above it from the platform on a
short read-only transaction, decide how far the cursor may move over id gaps (C2), fold the
events through the billing state machine, and store states, segments, findings, gaps and the
new cursor in the same ledger transaction (C1). The ledger may be another database (C14).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import attrs
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from usageledger import db
from usageledger.clock import Clock
from usageledger.errors import BadInputError, FellBehindRetentionError, SourceResetError
from usageledger.lifecycles import APP_USAGE_EVENTS, EVENT_TABLES, lifecycles_of
from usageledger.reconstruct import ledger_store, source
from usageledger.reconstruct.billing import (
    STAGING,
    BillingStateMachine,
    Finding,
    FindingCode,
    ResourceId,
    Role,
    RowFold,
    resources_of_rows,
    role_of,
)
from usageledger.reconstruct.gaps import IdRange, KnownGap, plan_read

log = logging.getLogger(__name__)

DEFAULT_CONSUMER = "reference"
DEFAULT_GRACE = timedelta(seconds=60)
#: A longer grace period would keep a consumer behind a rolled-back id for more than a week.
MAX_GRACE = timedelta(days=7)
#: Events per batch. Each batch is one ledger transaction (C1) with a fixed cost of about 2.7 ms
#: on PostgreSQL (some fifteen round trips and a durable commit), more per event at 1,000 than
#: fetching the event costs; at 5,000 it is a fifth of that. Reading alone is as fast at either.
DEFAULT_BATCH_SIZE = 5000
#: A larger batch holds its ledger transaction (and its states in memory) for longer, for no
#: gain (see bench/README.md).
MAX_BATCH_SIZE = 100_000
#: How many ids ahead the reader records gaps when it is blocked (C2), so that the holes of a
#: pruned table start their grace period together instead of one batch at a time.
GAP_LOOKAHEAD = 100_000
#: The shortest and the longest pause before consuming again after a transient database error
#: while following.
MIN_RETRY_PAUSE_SECONDS = 0.01
MAX_RETRY_PAUSE_SECONDS = 60.0


@attrs.frozen
class RetentionGap:
    """C10: ids `first_id`..`last_id` of `table` were pruned before this consumer read them."""

    table: str
    first_id: int
    last_id: int
    gap_closed: int


@attrs.frozen
class BatchResult:
    """What one batch did. `caught_up` means the table had nothing more to read right now."""

    table: str
    events_read: int
    events_applied: int
    position: int
    segments_closed: int
    findings: int
    blocked_by: IdRange | None
    fell_behind: RetentionGap | None
    caught_up: bool
    remaining: int


@attrs.frozen
class ConsumeResult:
    """A consumer run: totals, where each cursor stands, gaps it waits at, retention gaps."""

    consumer: str
    batches: int
    events_applied: int
    segments_closed: int
    findings: int
    positions: dict[str, int]
    waiting_at: dict[str, IdRange]
    fell_behind: tuple[RetentionGap, ...]


def _kinds_of(table: str) -> list[str]:
    kinds = [lc.kind for lc in lifecycles_of(table)]
    if table == APP_USAGE_EVENTS:
        kinds.append(STAGING)
    return kinds


def _retention_closes(
    ledger_conn: Connection,
    source_conn: Connection,
    consumer: str,
    table: str,
    machine: BillingStateMachine,
    at: datetime,
    position: int,
) -> int:
    """C10: close the OPEN resources whose run ended in the pruned range.

    Retention keeps a running resource's first opening (R5), so a run whose opening is still in
    the table goes on. One whose opening is gone ended (or an old-style cleanup removed it);
    what is left of it above the cursor decides: an ending or a baseline or resize carries it
    on, a real start begins a new run (so this one ended unseen), nothing at all means its
    history was pruned. Those last two are closed, flagged.
    """
    closed = 0
    for kind in _kinds_of(table):
        states = ledger_store.open_states(ledger_conn, consumer, [kind])
        gone = source.missing_ids(
            source_conn, table, [s.run_opened_by_id for s in states if s.run_opened_by_id]
        )
        suspects = [s for s in states if s.run_opened_by_id is None or s.run_opened_by_id in gone]
        if not suspects:
            continue
        lifecycle = next((lc for lc in lifecycles_of(table) if lc.kind == kind), None)
        following = source.next_lifecycle_rows(
            source_conn, lifecycle, table, [s.guid for s in suspects], position
        )
        for state in suspects:
            after = following.get(state.guid)
            if after is not None and role_of(table, *after) not in _NEW_RUN:
                continue
            rid: ResourceId = (state.kind, state.guid)
            machine.states[rid] = state
            machine.close_for_gap(rid, at)
            closed += 1
    return closed


#: Roles that begin a new run, so that an OPEN resource whose next kept row is one of them
#: ended before it (C10).
_NEW_RUN = frozenset({Role.START, Role.STAGING_START})


def _fell_behind_retention(
    conn: Connection, table: str, cursor: ledger_store.ConsumerCursor
) -> bool:
    """C10, asked when the cursor passes id gaps: may rows above it have been pruned?

    Yes when a cleanup has planned to delete ids above the cursor (its watermark, which the
    keep-running cleanup writes before it deletes: `usage_event_retention`), or, for cleanups
    that keep no watermark (Cloud Foundry's own), when the table now starts above the cursor.
    A rolled-back transaction's hole is neither. (With the keep-running cleanup the table
    seldom starts above a cursor: a long-running resource's first opening keeps its lowest id
    low.)
    """
    pruned_through = source.pruned_through(conn, table)
    if pruned_through is not None and pruned_through > cursor.position:
        return True
    lowest = source.lowest_id(conn, table)
    return lowest is not None and lowest > cursor.position


def _settled_through(conn: Connection, table: str, now: datetime, grace: timedelta) -> int:
    """C2: the id through which every hole is settled without waiting: the cleanup watermark,
    once its cutoff is at least `grace` old.

    A transaction still holding an id below the watermark allocated it before a row the cleanup
    found older than its cutoff was written, so it has been open since before that cutoff: at
    least as long as the grace period the consumer would wait anyway. A cleanup with a cutoff
    of 0 settles nothing until a grace period has passed.
    """
    watermark = source.retention_watermark(conn, table)
    if watermark is None:
        return 0
    through, cutoff = watermark  # cutoff: aware UTC (schema.UTCDateTime)
    return through if now - cutoff >= grace else 0


def _check_not_reset(
    conn: Connection, table: str, cursor: ledger_store.ConsumerCursor, *, empty: bool
) -> None:
    """C1: refuse a source table that was recreated (or had its ids restarted) since this
    consumer read it; reading on from the old cursor would skip every new event up to it.

    Two signs. The row at the cursor's last applied id, where it is still there, carries another
    guid (one primary-key lookup per batch). And, with nothing left to read: ids only grow and
    retention keeps the newest row (R2), so a non-empty table whose highest id is below the
    cursor was recreated. A cleanup told not to keep the newest row leaves its watermark at or
    above the cursor, which is no reset.
    """
    if cursor.last_event_id is not None and cursor.last_event_guid is not None:
        found = source.guid_at(conn, table, cursor.last_event_id)
        if found is not None and found != cursor.last_event_guid:
            raise _reset(cursor, table, f"its event {cursor.last_event_id} is now another event")
    if not empty or cursor.position == 0:
        return
    highest = source.highest_id(conn, table)
    if highest is None or highest >= cursor.position:
        return
    pruned = source.pruned_through(conn, table)
    if pruned is None or pruned < cursor.position:
        raise _reset(cursor, table, f"the table's highest id is now {highest}")


def _reset(cursor: ledger_store.ConsumerCursor, table: str, sign: str) -> SourceResetError:
    return SourceResetError(
        f"consumer {cursor.consumer!r} stands at {table} id {cursor.position}, but {sign}: the "
        "table was recreated or its ids restarted, and this ledger belongs to its old history; "
        "use a new --consumer name or a new --ledger-db (see docs/consumer-rules.md, C1)"
    )


def consume_batch(
    source_engine: Engine,
    ledger_engine: Engine,
    *,
    table: str,
    consumer: str = DEFAULT_CONSUMER,
    clock: Clock,
    grace: timedelta = DEFAULT_GRACE,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> BatchResult:
    """Read and apply one batch of `table` for `consumer`, in one ledger transaction (C1).

    The batch is folded by `billing.RowFold` (the rules of `billing.transition` over the
    driver's row tuples) and written with one statement per ledger table: the touched
    resources' states are taken out and written back, the closed segments appended.
    """
    # READ COMMITTED: at MariaDB's default REPEATABLE READ, taking the states of resources
    # the ledger does not hold yet locks the gaps around their keys, and another batch's
    # insert into such a gap waits (a batch of the other table, or of another consumer),
    # or deadlocks. Nothing here needs the stronger level: this consumer's rows for this
    # table are written only under the cursor lock taken first.
    with db.transaction(ledger_engine, isolation=db.Isolation.READ_COMMITTED) as lconn:
        now = clock.now(lconn)
        cursor = ledger_store.lock_cursor(lconn, consumer, table, now)
        known = ledger_store.open_gaps(lconn, consumer, table)
        with db.transaction(source_engine, read_only=True) as sconn:
            rows, top = source.fetch_rows(sconn, table, cursor.position, batch_size)
            _check_not_reset(sconn, table, cursor, empty=not rows)
            ids = [row[0] for row in rows]
            plan = plan_read(cursor.position, ids, known, now=now, grace=grace)
            settled = 0
            if plan.blocked_by is not None:
                # Holes a cleanup pruned need no grace period (a fresh consumer on a pruned
                # table would otherwise wait one out at its very first gap).
                settled = _settled_through(sconn, table, now, grace)
                if settled >= plan.blocked_by.last:
                    plan = plan_read(
                        cursor.position, ids, known, now=now, grace=grace, settled_through=settled
                    )
            if plan.blocked_by is not None and len(rows) == batch_size:
                ahead = source.ids_after(sconn, table, cursor.position, GAP_LOOKAHEAD)
                plan = plan_read(
                    cursor.position,
                    ids,
                    known,
                    now=now,
                    grace=grace,
                    lookahead=ahead,
                    settled_through=settled,
                )
            applied = rows[: plan.apply] if plan.apply < len(rows) else rows
            fell_behind = None
            gap_closed = 0
            passed: list[tuple[KnownGap, str]] = [
                (gap, ledger_store.GAP_PERMANENT) for gap in plan.passed
            ]
            # A consumer at 0 has read nothing: it bootstraps from the kept rows (C10).
            if plan.passed and cursor.position > 0 and _fell_behind_retention(sconn, table, cursor):
                fell_behind, gap_closed = _fell_behind(
                    lconn, sconn, consumer, table, cursor.position, plan.passed, rows[0][2]
                )
                passed = [(gap, ledger_store.GAP_RETENTION) for gap in plan.passed]
            remaining = max(0, (top or 0) - plan.position) if len(rows) == batch_size else 0
        fold = RowFold(
            table, ledger_store.take_states(lconn, consumer, resources_of_rows(table, applied))
        )
        fold.apply_rows(applied)
        ledger_store.put_states(lconn, consumer, fold.states.values())
        ledger_store.put_segment_rows(lconn, consumer, fold.segments)
        ledger_store.save_findings(lconn, consumer, fold.findings)
        ledger_store.record_gaps(
            lconn,
            consumer,
            table,
            position=plan.position,
            passed=passed,
            new_gaps=plan.new_gaps,
            now=now,
            known=known,
        )
        moved = attrs.evolve(cursor, position=plan.position)
        if applied:  # the row tuples of both tables begin with (id, guid, …)
            last = applied[-1]
            moved = attrs.evolve(moved, last_event_id=last[0], last_event_guid=last[1])
        ledger_store.write_cursor(lconn, moved, now)
    if plan.blocked_by is not None:
        log.info(
            "consumer %s waits at %s ids %d..%d (grace period, C2)",
            consumer,
            table,
            plan.blocked_by.first,
            plan.blocked_by.last,
        )
    return BatchResult(
        table=table,
        events_read=len(rows),
        events_applied=len(applied),
        position=plan.position,
        segments_closed=len(fold.segments) + gap_closed,
        findings=len(fold.findings) + (gap_closed + 1 if fell_behind is not None else 0),
        blocked_by=plan.blocked_by,
        fell_behind=fell_behind,
        caught_up=plan.blocked_by is None and len(rows) < batch_size,
        remaining=remaining,
    )


def _fell_behind(
    lconn: Connection,
    sconn: Connection,
    consumer: str,
    table: str,
    position: int,
    gaps: Sequence[KnownGap],
    first_kept_at: datetime,
) -> tuple[RetentionGap, int]:
    """C10: close the OPEN resources whose history was pruned, at the first kept event's time
    (naive UTC as read), and store the closes and findings before the batch's own."""
    machine = BillingStateMachine()
    at = first_kept_at.replace(tzinfo=UTC) if first_kept_at.tzinfo is None else first_kept_at
    gap_closed = _retention_closes(lconn, sconn, consumer, table, machine, at, position)
    first, last = gaps[0].first, gaps[-1].last
    machine.findings.insert(
        0,
        Finding(
            code=FindingCode.FELL_BEHIND_RETENTION,
            table=table,
            event_id=None,
            event_guid=None,
            kind=None,
            guid=None,
            state=None,
            detail=(
                f"ids {first}..{last} were pruned before this consumer read them "
                f"({len(gaps)} holes); {gap_closed} open resources closed"
            ),
        ),
    )
    log.warning(
        "consumer %s fell behind retention on %s: ids %d..%d pruned unread",
        consumer,
        table,
        first,
        last,
    )
    ledger_store.save_states(lconn, consumer, {rid: machine.states[rid] for rid in machine.touched})
    ledger_store.save_segments(lconn, consumer, machine.closed)
    ledger_store.save_findings(lconn, consumer, machine.findings)
    return RetentionGap(table, first, last, gap_closed), gap_closed


def check_grace(grace: timedelta) -> None:
    """C2's grace period: from 0 to MAX_GRACE (a bad value is bad input, nothing written)."""
    if not timedelta(0) <= grace <= MAX_GRACE:
        raise BadInputError(
            f"the grace period must be from 0 to {int(MAX_GRACE.total_seconds())} seconds "
            f"(7 days), got {grace.total_seconds():g} seconds"
        )


def consume(
    source_engine: Engine,
    ledger_engine: Engine,
    *,
    consumer: str = DEFAULT_CONSUMER,
    clock: Clock,
    grace: timedelta = DEFAULT_GRACE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    tables: Sequence[str] = EVENT_TABLES,
    max_batches: int | None = None,
    on_batch: Callable[[BatchResult], None] | None = None,
) -> ConsumeResult:
    """Read every table forward until it is caught up or waits at a gap (C1, C2).

    Falling behind retention (C10) is handled and reported in the result; `raise_if_fell_behind`
    turns it into FellBehindRetentionError for a run-once caller.
    """
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise BadInputError(
            f"batch size must be an integer from 1 to {MAX_BATCH_SIZE}, got {batch_size}"
        )
    check_grace(grace)
    batches = applied = closed = found = 0
    positions: dict[str, int] = {}
    waiting: dict[str, IdRange] = {}
    behind: list[RetentionGap] = []
    for table in tables:
        ledger_store.ensure_cursor(ledger_engine, consumer, table, clock)
        while max_batches is None or batches < max_batches:
            result = consume_batch(
                source_engine,
                ledger_engine,
                table=table,
                consumer=consumer,
                clock=clock,
                grace=grace,
                batch_size=batch_size,
            )
            batches += 1
            applied += result.events_applied
            closed += result.segments_closed
            found += result.findings
            positions[table] = result.position
            if result.fell_behind is not None:
                behind.append(result.fell_behind)
            if on_batch is not None:
                on_batch(result)
            if result.blocked_by is not None:
                waiting[table] = result.blocked_by
                break
            if result.caught_up:
                break
    return ConsumeResult(
        consumer=consumer,
        batches=batches,
        events_applied=applied,
        segments_closed=closed,
        findings=found,
        positions=positions,
        waiting_at=waiting,
        fell_behind=tuple(behind),
    )


def raise_if_fell_behind(result: ConsumeResult) -> None:
    """Exit code 4 for a run-once consumer that found it fell behind retention (C10)."""
    if result.fell_behind:
        parts = ", ".join(
            f"{g.table} ids {g.first_id}..{g.last_id} ({g.gap_closed} resources closed)"
            for g in result.fell_behind
        )
        raise FellBehindRetentionError(
            f"consumer {result.consumer!r} fell behind retention: {parts} were pruned before it "
            "read them; the ledger continued from the kept rows and flagged the closes "
            "(see docs/consumer-rules.md, C10)"
        )


def follow(
    source_engine: Engine,
    ledger_engine: Engine,
    *,
    clock: Clock,
    poll_seconds: float,
    consumer: str = DEFAULT_CONSUMER,
    grace: timedelta = DEFAULT_GRACE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    tables: Sequence[str] = EVENT_TABLES,
    should_stop: Callable[[], bool] = lambda: False,
    on_batch: Callable[[BatchResult], None] | None = None,
    on_result: Callable[[ConsumeResult], None] | None = None,
    on_retry: Callable[[SQLAlchemyError, float], None] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> None:
    """`consume` round after round, pausing `poll_seconds` between rounds, until
    `should_stop()` says so or the caller is interrupted (`usageledger consume --follow`).

    A transient database error (`db.is_transient_error`: a lost or killed connection, a server
    restart, a deadlock victim, a lock wait that timed out) ends the round, not the consumer:
    the batch it hit rolled back whole with its cursor move (C1), so the next round reads the
    same events again. The pause before it doubles from `poll_seconds` up to
    MAX_RETRY_PAUSE_SECONDS while the errors go on; `on_retry` hears of each (else it is
    logged as a warning). Any other error, a source reset (C1) among them, ends the run.
    """
    pause_for = sleep or time.sleep  # looked up now, so a test may patch time.sleep
    failures = 0
    while not should_stop():
        try:
            result = consume(
                source_engine,
                ledger_engine,
                consumer=consumer,
                clock=clock,
                grace=grace,
                batch_size=batch_size,
                tables=tables,
                on_batch=on_batch,
            )
        except SQLAlchemyError as exc:
            if not db.is_transient_error(exc):
                raise
            failures += 1
            # The exponent stops growing once the cap is reached (an outage of hours would
            # otherwise overflow the float), and the first pause is never nothing.
            doubled = max(poll_seconds, MIN_RETRY_PAUSE_SECONDS) * 2 ** min(failures, 30)
            pause = min(doubled, MAX_RETRY_PAUSE_SECONDS)
            if on_retry is not None:
                on_retry(exc, pause)
            else:
                log.warning("database error, consuming again in %.1fs: %s", pause, db.one_line(exc))
            pause_for(pause)
            continue
        failures = 0
        if on_result is not None:
            on_result(result)
        if should_stop():
            break
        pause_for(poll_seconds)
