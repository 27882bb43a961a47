"""`usageledger reconstruct current-state`: what is running now, from the event tables (§7)."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from usageledger import db
from usageledger.cli.root import db_option, emit_json, json_option, literal, open_engine, stdout
from usageledger.reconstruct import current_state
from usageledger.reconstruct.current_state import KINDS, Drift, RunningResource

SCHEMA_VERSION = 1


@click.group("reconstruct")
def reconstruct_group() -> None:
    """Rebuild state from the usage-event tables."""


def _running_json(r: RunningResource) -> dict[str, Any]:
    return {
        "kind": r.kind,
        "guid": r.guid,
        "name": r.name,
        "space_guid": r.space_guid,
        "org_guid": r.org_guid,
        "started_at": r.started_at,
        "start_is_lower_bound": r.start_is_lower_bound,
        "instance_count": r.instance_count,
        "memory_in_mb_per_instance": r.memory_in_mb_per_instance,
        "service_plan_guid": r.service_plan_guid,
        "last_event_id": r.last_event_id,
    }


def _drift_json(d: Drift) -> dict[str, Any]:
    return {"kind": d.kind, "guid": d.guid, "problem": d.problem, "remedy": d.remedy}


@reconstruct_group.command("current-state")
@click.option(
    "--kind",
    type=click.Choice(KINDS),
    default=None,
    help="Only this kind (app means app processes).",
)
@click.option(
    "--verify",
    is_flag=True,
    help="Compare with the resource tables and list drift; exit 1 on drift (CS3).",
)
@click.option(
    "--method",
    type=click.Choice(["sql", "fold"]),
    default="sql",
    show_default=True,
    help="sql: one set-based query; fold: replay every event through the consumer.",
)
@db_option
@json_option
def current_state_command(
    kind: str | None, verify: bool, method: str, db_url: str | None, as_json: bool
) -> int:
    """List what is running now, with the start of each run and its current size (CS1–CS4)."""
    engine = open_engine(db_url)
    try:
        # Read-only transactions: the command needs SELECT rights only (CS4).
        with db.transaction(engine, read_only=True) as conn:
            if method == "sql":
                running = current_state.running_by_sql(conn, kind)
            else:
                running = current_state.running_by_fold(conn, kind)
            drift = (
                current_state.drift(running, current_state.running_per_resource_tables(conn, kind))
                if verify
                else []
            )
    finally:
        engine.dispose()
    totals = {k: sum(1 for r in running if r.kind == k) for k in KINDS}
    if as_json:
        document: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "running": [_running_json(r) for r in running],
            "totals": totals,
        }
        if verify:
            document["drift"] = [_drift_json(d) for d in drift]
        emit_json(document)
    else:
        out = stdout()
        table = Table(title="running now")
        for column in ("kind", "guid", "name", "space", "started at", "size", "last event"):
            # fold, not ellipsis: a narrow terminal wraps a guid or name but never cuts it.
            table.add_column(column, overflow="fold")
        for r in running:
            size = (
                f"plan {r.service_plan_guid or '-'}"
                if r.kind == "service"
                else f"{r.instance_count} × {r.memory_in_mb_per_instance} MB"
            )
            started = ("≥ " if r.start_is_lower_bound else "") + r.started_at.isoformat()
            # Names and guids come from the database: printed literally, never as markup.
            table.add_row(
                *map(literal, (r.kind, r.guid, r.name, r.space_guid, started, size)),
                str(r.last_event_id),
            )
        out.print(table)
        shown = [k for k in KINDS if kind is None or k == kind]
        out.print("totals: " + ", ".join(f"{k} {totals[k]}" for k in shown))
        if any(r.start_is_lower_bound for r in running):
            out.print(
                "≥ marks a start that is a lower bound (a baseline: the true start was pruned)"
            )
        if verify:
            if drift:
                drift_table = Table(title="drift against the resource tables")
                for column in ("kind", "guid", "problem", "remedy"):
                    drift_table.add_column(column, overflow="fold")
                for d in drift:
                    drift_table.add_row(*map(literal, (d.kind, d.guid, d.problem, d.remedy)))
                out.print(drift_table)
            else:
                out.print("no drift: the event tables agree with the resource tables")
    return 1 if drift else 0
