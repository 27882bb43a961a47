"""`usageledger consume`: the reference billing consumer (SPEC §6), and `--show GUID`."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import attrs
import click
from rich.progress import BarColumn, Progress, TextColumn
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from usageledger import db
from usageledger.cli.root import (
    db_option,
    emit_json,
    json_option,
    open_engine,
    show_progress,
    stderr,
    stdout,
)
from usageledger.clock import DEFAULT_CLOCK
from usageledger.errors import FellBehindRetentionError, SchemaMissingError
from usageledger.migrations import ledger as ledger_migrations
from usageledger.reconstruct import consumer as reference
from usageledger.reconstruct import ledger_store
from usageledger.reconstruct.billing import Finding, Segment
from usageledger.reconstruct.gaps import IdRange

SCHEMA_VERSION = 1


def _segment_json(segment: Segment) -> dict[str, Any]:
    return {
        "kind": segment.kind,
        "guid": segment.guid,
        "name": segment.name,
        "space_guid": segment.space_guid,
        "org_guid": segment.org_guid,
        "start": segment.start,
        "end": segment.end,
        "instance_count": segment.footprint.instance_count,
        "memory_in_mb_per_instance": segment.footprint.memory_in_mb_per_instance,
        "service_plan_guid": segment.footprint.service_plan_guid,
        "opened_by_id": segment.opened_by_id,
        "opened_by_guid": segment.opened_by_guid,
        "closed_by_id": segment.closed_by_id,
        "closed_by_guid": segment.closed_by_guid,
        "start_is_lower_bound": segment.start_is_lower_bound,
        "end_is_repaired": segment.end_is_repaired,
        "gap_close": segment.gap_close,
        "approximate_size": segment.approximate_size,
    }


def _finding_json(finding: Finding) -> dict[str, Any]:
    return {
        "code": finding.code.value,
        "table": finding.table,
        "event_id": finding.event_id,
        "event_guid": finding.event_guid,
        "kind": finding.kind,
        "guid": finding.guid,
        "state": finding.state,
        "detail": finding.detail,
    }


def _flags(segment: Segment) -> str:
    flags = [
        name
        for name, on in (
            ("lower-bound start", segment.start_is_lower_bound),
            ("repaired end", segment.end_is_repaired),
            ("gap close", segment.gap_close),
            ("approximate size", segment.approximate_size),
        )
        if on
    ]
    return ", ".join(flags)


def _footprint_text(segment: Segment) -> str:
    fp = segment.footprint
    if fp.service_plan_guid is not None or fp.instance_count is None:
        return f"plan {fp.service_plan_guid or '-'}"
    return f"{fp.instance_count} × {fp.memory_in_mb_per_instance} MB"


def _show(ledger: Engine, consumer: str, guid: str, as_json: bool) -> int:
    """Print one resource's billed segments with their provenance (C9)."""
    with db.transaction(ledger, read_only=True) as conn:
        closed = ledger_store.closed_segments(conn, consumer, guid)
        states = ledger_store.all_states(conn, consumer, guid)
        found = ledger_store.findings(conn, consumer, guid)
    segments = closed + [s for state in states if (s := state.open_segment()) is not None]
    if as_json:
        emit_json(
            {
                "schema_version": SCHEMA_VERSION,
                "consumer": consumer,
                "guid": guid,
                "segments": [_segment_json(s) for s in segments],
                "findings": [_finding_json(f) for f in found],
            }
        )
        return 0
    # Every line below carries names and guids from the ledger: printed literally (§9).
    out = stdout()
    if not segments and not found:
        out.print(f"consumer {consumer!r} has billed nothing for {guid}", markup=False)
        return 0
    out.print(f"{guid}: {len(segments)} segments billed by consumer {consumer!r}", markup=False)
    for number, s in enumerate(segments, start=1):
        end = s.end.isoformat() if s.end is not None else "open"
        out.print(
            f"{number}. {s.kind} {s.name or ''} {s.start.isoformat()} → {end}, "
            f"{_footprint_text(s)}",
            markup=False,
        )
        out.print(f"   opened by event #{s.opened_by_id} {s.opened_by_guid}", markup=False)
        if s.closed_by_id is not None:
            out.print(f"   closed by event #{s.closed_by_id} {s.closed_by_guid}", markup=False)
        elif s.gap_close:
            out.print("   closed because its history was pruned (C10)", markup=False)
        if _flags(s):
            out.print(f"   flags: {_flags(s)}", markup=False)
    for f in found:
        out.print(
            f"finding {f.code.value}: event #{f.event_id} {f.state or ''} {f.detail}",
            markup=False,
        )
    return 0


def _existing_ledger(ledger_db: str) -> Engine:
    """The `--ledger-db` of `--show`, which reads: a missing SQLite file is not created."""
    url = db.parse_url(ledger_db)
    if db.backend_of(url) is db.Backend.SQLITE:
        path = db.sqlite_path(url)
        if path is not None and not path.exists():
            raise SchemaMissingError(
                f"no consumer ledger at {str(path)!r}; run `usageledger consume --ledger-db "
                "URL` once to create it"
            )
    return db.make_engine(ledger_db)


def _ledger_engine(source: Engine, ledger_db: str | None) -> Engine:
    """The ledger database (default: the platform's), its tables created on first use."""
    if ledger_db is None:
        ledger = source
    else:
        ledger = db.make_engine(ledger_db, create=True)
        db.check_connection(ledger)
    ledger_migrations.upgrade(ledger)
    return ledger


@attrs.define
class _Tally:
    """The batches this command committed, added up as each commits, so that a round cut
    short by an error, Ctrl-C or SIGTERM still counts in the summary."""

    batches: int = 0
    events_applied: int = 0
    segments_closed: int = 0
    findings: int = 0
    positions: dict[str, int] = attrs.Factory(dict)
    waiting_at: dict[str, IdRange] = attrs.Factory(dict)
    fell_behind: list[reference.RetentionGap] = attrs.Factory(list)

    def add(self, batch: reference.BatchResult) -> None:
        self.batches += 1
        self.events_applied += batch.events_applied
        self.segments_closed += batch.segments_closed
        self.findings += batch.findings
        self.positions[batch.table] = batch.position
        if batch.blocked_by is not None:
            self.waiting_at[batch.table] = batch.blocked_by
        else:
            self.waiting_at.pop(batch.table, None)
        if batch.fell_behind is not None:
            self.fell_behind.append(batch.fell_behind)

    def summary(self, consumer: str, interrupted: bool) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "consumer": consumer,
            "batches": self.batches,
            "events_applied": self.events_applied,
            "segments_closed": self.segments_closed,
            "findings": self.findings,
            "positions": dict(self.positions),
            "waiting_at": {
                table: {"first_id": gap.first, "last_id": gap.last}
                for table, gap in self.waiting_at.items()
            },
            "fell_behind": [
                {
                    "table": g.table,
                    "first_id": g.first_id,
                    "last_id": g.last_id,
                    "gap_closed": g.gap_closed,
                }
                for g in self.fell_behind
            ],
            "interrupted": interrupted,
        }


def _finite(_ctx: click.Context, _param: click.Parameter, value: float) -> float:
    """Reject nan (which passes click's range check: every comparison with it is false)."""
    if not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number of seconds")
    return value


@click.command("consume")
@click.option(
    "--ledger-db",
    metavar="URL",
    default=None,
    help="Database for the consumer's ledger (default: the --db database). Created on first use.",
)
@click.option(
    "--consumer",
    "consumer_name",
    default=reference.DEFAULT_CONSUMER,
    show_default=True,
    help="Name of this consumer; each name has its own cursor and ledger.",
)
@click.option("--follow", is_flag=True, help="Keep polling for new events until interrupted.")
@click.option(
    "--grace-seconds",
    type=click.FloatRange(min=0, max=reference.MAX_GRACE.total_seconds()),
    callback=_finite,
    default=reference.DEFAULT_GRACE.total_seconds(),
    show_default=True,
    help="How long an id gap must stay open before the cursor moves past it (C2).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1, max=reference.MAX_BATCH_SIZE),
    default=reference.DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Events per batch; each batch is one ledger transaction (C1).",
)
@click.option(
    "--poll-seconds",
    type=click.FloatRange(min=0.01),
    default=5.0,
    show_default=True,
    help="With --follow: pause between polls once caught up.",
)
@click.option(
    "--show",
    "show_guid",
    metavar="GUID",
    default=None,
    help="Print this resource's billed segments and their provenance; consume nothing.",
)
@db_option
@json_option
def consume_command(
    ledger_db: str | None,
    consumer_name: str,
    follow: bool,
    grace_seconds: float,
    batch_size: int,
    poll_seconds: float,
    show_guid: str | None,
    db_url: str | None,
    as_json: bool,
) -> int:
    """Read usage events forward and keep billed segments in a ledger (SPEC §6).

    Exit 4 when, run once, the consumer finds it fell behind retention (C10).
    """
    if not consumer_name or len(consumer_name) > 100:
        raise click.BadParameter("must be 1 to 100 characters", param_hint="--consumer")
    if show_guid is not None:
        ledger = (
            open_engine(db_url, need_schema=False)
            if ledger_db is None
            else _existing_ledger(ledger_db)
        )
        db.check_connection(ledger)
        ledger_migrations.require_ledger_schema(ledger)
        try:
            return _show(ledger, consumer_name, show_guid, as_json)
        finally:
            ledger.dispose()

    source = open_engine(db_url)
    ledger = _ledger_engine(source, ledger_db)
    grace = timedelta(seconds=grace_seconds)
    once: reference.ConsumeResult | None = None  # the run-once result, for C10's exit code
    tally = _Tally()
    interrupted = False
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,} events"),
        console=stderr(),
        disable=not show_progress(as_json),
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def on_batch(batch: reference.BatchResult) -> None:
        tally.add(batch)
        if follow and batch.fell_behind is not None:
            gap = batch.fell_behind
            stderr().print(
                f"warning: fell behind retention on {gap.table}: ids "
                f"{gap.first_id}..{gap.last_id} were pruned unread (C10)",
                markup=False,
            )
        if batch.table not in tasks:
            tasks[batch.table] = progress.add_task(batch.table, total=None)
        task = tasks[batch.table]
        progress.advance(task, batch.events_applied)
        done = progress.tasks[task].completed
        progress.update(task, total=done + batch.remaining if batch.remaining else done)

    def retrying(exc: SQLAlchemyError, pause: float) -> None:
        stderr().print(
            f"warning: database error, consuming again in {pause:.1f}s: {db.one_line(exc)}",
            markup=False,
        )

    options: dict[str, Any] = {
        "consumer": consumer_name,
        "clock": DEFAULT_CLOCK,
        "grace": grace,
        "batch_size": batch_size,
        "on_batch": on_batch,
    }
    try:
        with progress:
            if follow:
                reference.follow(
                    source,
                    ledger,
                    poll_seconds=poll_seconds,
                    on_retry=retrying,
                    **options,
                )
            else:
                once = reference.consume(source, ledger, **options)
    except KeyboardInterrupt:
        # Each batch is one transaction: an interrupted batch rolled back, the rest is stored.
        interrupted = True
    finally:
        if ledger is not source:
            ledger.dispose()
        source.dispose()
    summary = tally.summary(consumer_name, interrupted)
    if as_json:
        emit_json(summary)
    else:
        # The consumer's name is the user's: printed literally, never as markup (§9).
        out = stdout()
        out.print(
            f"consumer {consumer_name!r}: {summary['events_applied']:,} events applied in "
            f"{summary['batches']} batches, {summary['segments_closed']} segments closed, "
            f"{summary['findings']} findings",
            markup=False,
        )
        for table, position in summary["positions"].items():
            out.print(f"  {table}: cursor at id {position}", markup=False)
        for table, gap in summary["waiting_at"].items():
            out.print(
                f"  {table}: waiting at ids {gap['first_id']}..{gap['last_id']} (grace period)",
                markup=False,
            )
    if once is not None:
        try:
            reference.raise_if_fell_behind(once)
        except FellBehindRetentionError as exc:
            stderr().print(f"error: {exc}", markup=False)
            return exc.exit_code
    return 0
