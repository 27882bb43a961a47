"""`usageledger cleanup`: the keep-running retention cleanup of the usage-event tables (SPEC §4)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from usageledger import retention
from usageledger.cli.root import (
    db_option,
    emit_json,
    json_option,
    open_engine,
    show_progress,
    stderr,
    stdout,
)
from usageledger.lifecycles import APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS

TABLE_CHOICES = {
    "app": (APP_USAGE_EVENTS,),
    "service": (SERVICE_USAGE_EVENTS,),
    "all": (APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS),
}

PASS_TITLES = {
    retention.SUPERSEDED_OPENINGS: "1 superseded openings",
    retention.NON_OPENINGS: "2 endings, other old rows",
    retention.ALL_OLD_ROWS: "every old row (R3)",
}


@contextmanager
def _progress(enabled: bool) -> Iterator[retention.OnBatch | None]:
    """A rich progress display on stderr, fed by the cleanup's per-batch reports."""
    if not enabled:
        yield None
        return
    bars: dict[tuple[str, str], TaskID] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,} rows"),
        TimeElapsedColumn(),
        console=stderr(),
        transient=False,
    ) as progress:

        def on_batch(report: retention.BatchProgress) -> None:
            key = (report.table, report.pass_name)
            if key not in bars:
                bars[key] = progress.add_task(
                    f"{report.table} {PASS_TITLES.get(report.pass_name, report.pass_name)}",
                    total=report.planned,
                )
            progress.update(bars[key], completed=report.deleted_so_far)

        yield on_batch


def result_document(
    results: tuple[retention.CleanupResult, ...], *, cutoff_age_in_days: int, batch_size: int
) -> dict[str, Any]:
    """The JSON document: snake_case keys, ISO-8601 UTC cutoff, counts per pass and lifecycle.

    A dry run's document has the same keys, its counts being the rows the run would delete,
    and says `"dry_run": true`."""
    tables: dict[str, Any] = {}
    for result in results:
        tables[result.table] = {
            "passes": {
                p.name: {"deleted": dict(p.deleted), "total": p.total, "batches": p.batches}
                for p in result.passes
            },
            "deleted": result.deleted,
            "batches": result.batches,
            "kept_endings": result.kept_endings,
            "elapsed_seconds": round(result.elapsed_seconds, 3),
        }
    first = results[0]
    return {
        "dry_run": first.dry_run,
        "cutoff": first.cutoff,
        "cutoff_age_in_days": cutoff_age_in_days,
        "keep_running_records": first.keep_running_records,
        "keep_at_least_one_record": first.keep_at_least_one_record,
        "batch_size": batch_size,
        "tables": tables,
        "deleted": sum(r.deleted for r in results),
        "elapsed_seconds": round(sum(r.elapsed_seconds for r in results), 3),
    }


def summary_table(results: tuple[retention.CleanupResult, ...]) -> Table:
    first = results[0]
    before = first.cutoff.isoformat().replace("+00:00", "Z")
    title = f"cleanup: rows created before {before}"
    if first.dry_run:
        title = f"cleanup dry run: rows created before {before} that cleanup would delete"
    table = Table(title=title, title_justify="left")
    table.add_column("table")
    table.add_column("pass")
    table.add_column("lifecycle")
    table.add_column("would delete" if first.dry_run else "deleted", justify="right")
    table.add_column("batches", justify="right")
    for result in results:
        first_row = True
        for p in result.passes:
            for i, (kind, count) in enumerate(p.deleted.items()):
                table.add_row(
                    result.table if first_row else "",
                    PASS_TITLES.get(p.name, p.name),
                    kind,
                    f"{count:,}",
                    f"{p.batches:,}" if i == 0 else "",
                )
                first_row = False
        table.add_row(
            "",
            "total",
            "",
            f"{result.deleted:,}",
            f"{result.batches:,}",
            end_section=True,
        )
    return table


@click.command("cleanup")
@click.option(
    "--table",
    "table_choice",
    type=click.Choice(sorted(TABLE_CHOICES)),
    default="all",
    show_default=True,
    help="Which usage-event table to clean.",
)
@click.option(
    "--cutoff-age-in-days",
    type=click.IntRange(min=0, max=retention.MAX_CUTOFF_AGE_IN_DAYS),
    default=retention.DEFAULT_CUTOFF_AGE_IN_DAYS,
    show_default=True,
    help=(
        "Rows created longer ago than this are old. 0 makes every row old at once, rows still"
        " being committed included: for tests and idle tables, not a live platform."
    ),
)
@click.option(
    "--no-keep-running-records",
    is_flag=True,
    help="Delete every old row, even the openings of running resources (SPEC R3).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1, max=retention.MAX_BATCH_SIZE),
    default=retention.DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Rows per delete; each batch is its own short transaction.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help=(
        "Report what the cleanup would delete, per pass and lifecycle, and delete nothing"
        " (read-only transactions, no watermark written)."
    ),
)
@db_option
@json_option
def cleanup_command(
    table_choice: str,
    cutoff_age_in_days: int,
    no_keep_running_records: bool,
    batch_size: int,
    dry_run: bool,
    db_url: str | None,
    as_json: bool,
) -> None:
    """Delete old usage events, keeping what running resources need (SPEC §4).

    Safe to interrupt (Ctrl-C, or a killed session) and rerun: every batch commits on its own
    and the deletion order keeps the table consistent in between. With --dry-run, nothing is
    deleted: the summary says what the same run would delete.
    """
    engine = open_engine(db_url)
    try:
        # A dry run commits no batch, so it has no progress to show.
        with _progress(show_progress(as_json) and not dry_run) as on_batch:
            results = retention.cleanup_tables(
                engine,
                TABLE_CHOICES[table_choice],
                cutoff_age_in_days=cutoff_age_in_days,
                keep_running_records=not no_keep_running_records,
                batch_size=batch_size,
                on_batch=on_batch,
                dry_run=dry_run,
            )
    finally:
        engine.dispose()
    if as_json:
        emit_json(
            result_document(results, cutoff_age_in_days=cutoff_age_in_days, batch_size=batch_size)
        )
        return
    out = stdout()
    out.print(summary_table(results))
    elapsed = sum(r.elapsed_seconds for r in results)
    deleted = sum(r.deleted for r in results)
    if dry_run:
        out.print(f"dry run: would delete {deleted:,} rows; nothing was deleted ({elapsed:.2f}s)")
    else:
        out.print(f"deleted {deleted:,} rows in {elapsed:.2f}s")
