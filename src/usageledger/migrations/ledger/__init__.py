"""Migrations of the consumer's ledger (SPEC C14), separate from the platform's.

The ledger may live in the platform database or in the billing system's own; either way its
tables are created and versioned here, with their own Alembic version table, so that neither
set of migrations ever touches the other's tables.
"""

from __future__ import annotations

from pathlib import Path

import attrs
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy.engine import Engine

from usageledger import db
from usageledger.db import LEDGER_VERSION_TABLE, display_url
from usageledger.errors import BadInputError, SchemaMissingError

VERSION_TABLE = LEDGER_VERSION_TABLE
#: Consumers create the ledger on first use, so several started together would otherwise
#: create its tables at once (see `usageledger.migrations.MIGRATION_LOCK`).
MIGRATION_LOCK = "ledger-migrations"


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


@attrs.frozen
class LedgerSchemaStatus:
    """Where a ledger database stands against the ledger migrations this package ships."""

    current: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def current(engine: Engine) -> LedgerSchemaStatus:
    with db.read_connection(engine) as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        revision = context.get_current_revision()
    return LedgerSchemaStatus(current=revision, head=head_revision())


def _run(engine: Engine, action: str, revision: str) -> None:
    config = _config()
    try:
        with engine.connect() as conn:
            config.attributes["connection"] = conn
            if action == "upgrade":
                command.upgrade(config, revision)
            else:
                command.downgrade(config, revision)
    except CommandError as exc:
        raise BadInputError(f"cannot {action} the ledger to {revision!r}: {exc}") from None


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Create or migrate the ledger tables up to `revision`, one migration run at a time.

    A ledger already at head (every consumer start after the first) takes no lock."""
    if revision == "head" and current(engine).up_to_date:
        return
    with db.taking_turns(engine, MIGRATION_LOCK, "ledger migration"):
        _run(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Undo ledger migrations down to `revision` (`base` drops the ledger tables)."""
    with db.taking_turns(engine, MIGRATION_LOCK, "ledger migration"):
        _run(engine, "downgrade", revision)


def require_ledger_schema(engine: Engine) -> None:
    """Raise SchemaMissingError unless the ledger tables are at the shipped head."""
    status = current(engine)
    where = display_url(engine.url)
    if status.current is None:
        raise SchemaMissingError(
            f"{where} has no consumer ledger; run `usageledger consume` once to create it"
        )
    if not status.up_to_date:
        raise SchemaMissingError(
            f"the ledger in {where} is at revision {status.current}, this usageledger needs "
            f"{status.head}; run `usageledger consume` to migrate it"
        )
