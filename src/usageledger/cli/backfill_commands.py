"""`usageledger backfill`: seed baselines for running resources and repair stale ones (SPEC §5)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from usageledger import backfill as backfill_package
from usageledger.backfill import KIND_NAMES, BackfillResult, BatchReport, Phase
from usageledger.cli.root import (
    db_option,
    emit_json,
    json_option,
    open_engine,
    show_progress,
    stderr,
    stdout,
)

KIND_TITLES = {"app": "app processes", "task": "tasks", "service": "service instances"}


def _batch_size(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    """B3: an integer of at least 1, checked before the database is even opened."""
    try:
        size = int(value, 10)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an integer") from None
    if size < 1:
        raise click.BadParameter(f"must be at least 1, got {size}")
    return size


@contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[BatchReport], None] | None]:
    """A bar per kind on stderr; each phase's batch count is added once the phase starts."""
    if not enabled:
        yield None
        return
    progress = Progress(
        TextColumn("{task.description:<28}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("batches  +{task.fields[added]} rows"),
        console=stderr(),
        transient=False,
    )
    bars: dict[str, TaskID] = {}
    planned: dict[tuple[str, Phase], int] = {}

    def on_batch(report: BatchReport) -> None:
        if report.kind not in bars:
            bars[report.kind] = progress.add_task(
                f"{KIND_TITLES[report.kind]} ({report.phase})", total=0, added=0
            )
        bar = bars[report.kind]
        if (report.kind, report.phase) not in planned:
            planned[report.kind, report.phase] = report.count
            total = sum(n for (kind, _), n in planned.items() if kind == report.kind)
            progress.update(
                bar, total=total, description=f"{KIND_TITLES[report.kind]} ({report.phase})"
            )
        added = progress.tasks[bar].fields["added"] + report.inserted
        progress.update(bar, advance=1, added=added)

    with progress:
        yield on_batch


def _summary(result: BackfillResult) -> Table:
    table = Table(title="backfill", title_justify="left")
    table.add_column("kind")
    table.add_column("baselines seeded", justify="right")
    table.add_column("endings repaired", justify="right")
    table.add_column("batches", justify="right")
    table.add_column("seconds", justify="right")
    for name in KIND_NAMES:
        done = result.kind(name)
        table.add_row(
            KIND_TITLES[name],
            str(done.seeded),
            str(done.repaired),
            str(done.batches),
            f"{done.elapsed_seconds:.2f}",
        )
    table.add_section()
    table.add_row(
        "total",
        str(sum(result.kind(n).seeded for n in KIND_NAMES)),
        str(sum(result.kind(n).repaired for n in KIND_NAMES)),
        str(sum(result.kind(n).batches for n in KIND_NAMES)),
        f"{result.elapsed_seconds:.2f}",
    )
    return table


@click.command("backfill")
@click.option(
    "--batch-size",
    default="1000",
    show_default=True,
    callback=_batch_size,
    metavar="N",
    help="Resource or event ids per batch; each batch is one short transaction.",
)
@click.option(
    "--wait",
    is_flag=True,
    help="Wait for another backfill holding the lock instead of failing (exit 3).",
)
@db_option
@json_option
def backfill_command(batch_size: int, wait: bool, db_url: str | None, as_json: bool) -> None:
    """Seed WAS_RUNNING / TASK_WAS_RUNNING baselines for running resources whose start is no
    longer on record, then append the missing ending for baselines whose resource stopped.

    Run it after a migration skipped with --skip-was-running-backfill, once after a rolling
    deploy, and after a destructive purge-and-reseed. It never deletes or updates a row.
    """
    engine = open_engine(db_url)
    try:
        with _progress(show_progress(as_json)) as on_batch:
            result = backfill_package.backfill(
                engine, batch_size=batch_size, wait_for_lock=wait, on_batch=on_batch
            )
    finally:
        engine.dispose()
    if as_json:
        emit_json(result.to_json())
    else:
        stdout().print(_summary(result))
