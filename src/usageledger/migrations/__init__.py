"""Schema migrations (Alembic, shipped in the package) and the check that a database has them.

`upgrade`, `downgrade` and `current` drive Alembic programmatically on an Engine; the command
line and the tests use these, never Alembic's own CLI.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import Engine

from usageledger import db
from usageledger.db import PLATFORM_VERSION_TABLE, display_url
from usageledger.errors import BadInputError, SchemaMissingError
from usageledger.schema import EVENT_TABLES, metadata

VERSION_TABLE = PLATFORM_VERSION_TABLE
#: The run lock that makes upgrades and downgrades of one database take turns. Two at once
#: would both find a revision missing and both apply it: on PostgreSQL one then fails, on
#: MariaDB (whose DDL commits statement by statement) both can fail halfway.
MIGRATION_LOCK = "schema-migrations"

#: Set to 1 to apply the seed migrations without seeding (SPEC B9); `usageledger backfill` later.
ENV_SKIP_WAS_RUNNING_BACKFILL = "USAGELEDGER_SKIP_WAS_RUNNING_BACKFILL"
#: The config attribute the seed migrations read (see usageledger.backfill.migration).
SKIP_WAS_RUNNING_BACKFILL = "skip_was_running_backfill"


def _config(engine: Engine | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.set_main_option("version_table", VERSION_TABLE)
    return config


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


def head_revision() -> str:
    head = _script().get_current_head()
    assert head is not None
    return head


@attrs.frozen
class SchemaStatus:
    """Where a database's schema stands against the migrations this package ships."""

    current: str | None
    head: str

    known: bool = True
    """False when the database is at a revision this release does not ship (a newer
    usageledger migrated it)."""

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def current(engine: Engine) -> SchemaStatus:
    with db.read_connection(engine) as conn:
        revision = MigrationContext.configure(conn).get_current_revision()
    known = revision is None or _get_revision_or_none(revision) is not None
    return SchemaStatus(current=revision, head=head_revision(), known=known)


def _get_revision_or_none(revision: str) -> object:
    try:
        return _script().get_revision(revision)
    except CommandError:
        return None


def _newer_release(where: str, status: SchemaStatus) -> BadInputError:
    return SchemaMissingError(
        f"{where} is at schema revision {status.current}, which this usageledger does not know "
        f"(its newest is {status.head}): a newer usageledger migrated it; use that release"
    )


def _check_upgradable(engine: Engine, status: SchemaStatus) -> None:
    """Refuse, before anything is written, a database this release cannot migrate: one at a
    revision it does not know, or one without our version table that already holds tables of
    the same names (Cloud Controller's own database, or a half-applied first migration)."""
    where = display_url(engine.url)
    if not status.known:
        raise _newer_release(where, status)
    if status.current is not None:
        return
    with db.read_connection(engine) as conn:
        existing = set(sa.inspect(conn).get_table_names())
    clashing = sorted(existing & set(metadata.tables))
    if clashing:
        raise BadInputError(
            f"{where} already has tables named {', '.join(clashing)} but no usageledger schema "
            "revision; usageledger creates and migrates its own tables, so point --db at an "
            "empty database (or drop those tables if a failed first upgrade left them)"
        )


def _run(engine: Engine, action: str, revision: str, **attributes: object) -> None:
    config = _config()
    try:
        with engine.connect() as conn:
            config.attributes["connection"] = conn
            config.attributes.update(attributes)
            if action == "upgrade":
                command.upgrade(config, revision)
            else:
                command.downgrade(config, revision)
    except CommandError as exc:
        raise BadInputError(f"cannot {action} to {revision!r}: {exc}") from None


@attrs.frozen
class Migrated:
    """The revisions before and after an upgrade or downgrade, read while holding the lock."""

    before: str | None
    after: str | None


def upgrade(
    engine: Engine, revision: str = "head", *, skip_was_running_backfill: bool = False
) -> Migrated:
    """Apply every migration up to `revision`, after any other upgrade or downgrade of this
    database has finished (`MIGRATION_LOCK`).

    The seed migrations run the backfill unless `skip_was_running_backfill` is true or
    `$USAGELEDGER_SKIP_WAS_RUNNING_BACKFILL` is 1; skipped, they are still recorded as applied.
    """
    skip = skip_was_running_backfill or os.environ.get(ENV_SKIP_WAS_RUNNING_BACKFILL) == "1"
    with db.taking_turns(engine, MIGRATION_LOCK, "schema migration"):
        before = current(engine)
        _check_upgradable(engine, before)
        _run(engine, "upgrade", revision, **{SKIP_WAS_RUNNING_BACKFILL: skip})
        return Migrated(before.current, current(engine).current)


def downgrade(engine: Engine, revision: str) -> Migrated:
    """Undo migrations down to `revision` (`base` removes the schema), one migration run of
    this database at a time."""
    with db.taking_turns(engine, MIGRATION_LOCK, "schema migration"):
        before = current(engine).current
        _run(engine, "downgrade", revision)
        return Migrated(before, current(engine).current)


def require_schema(engine: Engine) -> None:
    """Raise SchemaMissingError unless the database holds the schema at the shipped head."""
    with db.read_connection(engine) as conn:
        inspector = sa.inspect(conn)
        missing = [name for name in EVENT_TABLES if not inspector.has_table(name)]
    status = current(engine)
    where = display_url(engine.url)
    if status.current is None or missing:
        raise SchemaMissingError(
            f"{where} has no usageledger schema; run `usageledger db upgrade` first"
        )
    if not status.known:
        raise _newer_release(where, status)
    if not status.up_to_date:
        raise SchemaMissingError(
            f"{where} is at schema revision {status.current}, this usageledger needs "
            f"{status.head}; run `usageledger db upgrade`"
        )
