"""`usageledger db upgrade | current | downgrade`: schema migrations."""

from __future__ import annotations

import click

from usageledger import db, migrations
from usageledger.cli.root import db_option, emit_json, json_option, open_engine, stdout


@click.group("db")
def db_group() -> None:
    """Create and migrate the schema."""


@db_group.command("upgrade")
@click.argument("revision", default="head")
@click.option(
    "--skip-was-running-backfill",
    is_flag=True,
    help="Apply the seed migrations without seeding baselines (also "
    f"${migrations.ENV_SKIP_WAS_RUNNING_BACKFILL}=1); run `usageledger backfill` later.",
)
@db_option
@json_option
def upgrade(
    revision: str, skip_was_running_backfill: bool, db_url: str | None, as_json: bool
) -> None:
    """Apply migrations up to REVISION (default: head). Creates a SQLite file if needed."""
    engine = open_engine(db_url, create=True, need_schema=False)
    try:
        migrated = migrations.upgrade(
            engine, revision, skip_was_running_backfill=skip_was_running_backfill
        )
        before = migrated.before
        status = migrations.current(engine)
    finally:
        engine.dispose()
    if as_json:
        emit_json(
            {
                "database": db.display_url(engine.url),
                "from_revision": before,
                "revision": status.current,
                "head": status.head,
            }
        )
    else:
        where = db.display_url(engine.url)
        if before == status.current:
            stdout().print(f"{where}: already at {status.current}, nothing to do")
        else:
            stdout().print(f"{where}: upgraded {before or 'empty'} → {status.current}")


@db_group.command("current")
@db_option
@json_option
def current(db_url: str | None, as_json: bool) -> int:
    """Show the schema revision of the database and whether it is up to date."""
    engine = open_engine(db_url, need_schema=False)
    try:
        status = migrations.current(engine)
    finally:
        engine.dispose()
    if as_json:
        emit_json(
            {
                "database": db.display_url(engine.url),
                "revision": status.current,
                "head": status.head,
                "up_to_date": status.up_to_date,
                "known_revision": status.known,
            }
        )
    else:
        if status.up_to_date:
            state = "up to date"
        elif not status.known:
            state = f"unknown to this release, whose head is {status.head}: a newer usageledger"
        else:
            state = f"behind head {status.head}"
        stdout().print(f"{db.display_url(engine.url)}: {status.current or 'no schema'} ({state})")
    return 0


@db_group.command("downgrade")
@click.argument("revision")
@db_option
@json_option
def downgrade(revision: str, db_url: str | None, as_json: bool) -> None:
    """Undo migrations down to REVISION (`base` removes the platform tables; a consumer's
    ledger tables in the same database stay)."""
    engine = open_engine(db_url, need_schema=False)
    try:
        before = migrations.downgrade(engine, revision).before
        status = migrations.current(engine)
    finally:
        engine.dispose()
    if as_json:
        emit_json(
            {
                "database": db.display_url(engine.url),
                "from_revision": before,
                "revision": status.current,
            }
        )
    else:
        after = status.current or "base"
        stdout().print(f"{db.display_url(engine.url)}: downgraded {before or 'empty'} → {after}")
