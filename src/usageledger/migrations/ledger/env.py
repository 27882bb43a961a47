"""Alembic environment of the consumer's ledger (SPEC C14): its own tables, its own version
table, run on the connection `usageledger.migrations.ledger` hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from usageledger.migrations.ledger import VERSION_TABLE
from usageledger.schema import ledger_metadata

config = context.config
connection = config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("run ledger migrations through usageledger.migrations.ledger")

context.configure(
    connection=connection,
    target_metadata=ledger_metadata,
    version_table=VERSION_TABLE,
    transaction_per_migration=True,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
