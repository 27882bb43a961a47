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

from usageledger.db import display_url
from usageledger.errors import BadInputError, SchemaMissingError
from usageledger.schema import EVENT_TABLES

VERSION_TABLE = "alembic_version"

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

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def current(engine: Engine) -> SchemaStatus:
    with engine.connect() as conn:
        revision = MigrationContext.configure(conn).get_current_revision()
    return SchemaStatus(current=revision, head=head_revision())


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


def upgrade(
    engine: Engine, revision: str = "head", *, skip_was_running_backfill: bool = False
) -> None:
    """Apply every migration up to `revision`.

    The seed migrations run the backfill unless `skip_was_running_backfill` is true or
    `$USAGELEDGER_SKIP_WAS_RUNNING_BACKFILL` is 1; skipped, they are still recorded as applied.
    """
    skip = skip_was_running_backfill or os.environ.get(ENV_SKIP_WAS_RUNNING_BACKFILL) == "1"
    _run(engine, "upgrade", revision, **{SKIP_WAS_RUNNING_BACKFILL: skip})


def downgrade(engine: Engine, revision: str) -> None:
    """Undo migrations down to `revision` (`base` removes the schema)."""
    _run(engine, "downgrade", revision)


def require_schema(engine: Engine) -> None:
    """Raise SchemaMissingError unless the database holds the schema at the shipped head."""
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        missing = [name for name in EVENT_TABLES if not inspector.has_table(name)]
    status = current(engine)
    where = display_url(engine.url)
    if status.current is None or missing:
        raise SchemaMissingError(
            f"{where} has no usageledger schema; run `usageledger db upgrade` first"
        )
    if not status.up_to_date:
        raise SchemaMissingError(
            f"{where} is at schema revision {status.current}, this usageledger needs "
            f"{status.head}; run `usageledger db upgrade`"
        )
