"""Alembic environment: runs the packaged migrations on the connection usageledger hands over."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from usageledger.schema import metadata

config = context.config
connection = config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("run migrations through `usageledger db …`, which passes a connection")

# One transaction per revision, so that a revision may leave it (autocommit_block) to build an
# index CONCURRENTLY on PostgreSQL, and an interrupted upgrade keeps the revisions it finished.
context.configure(
    connection=connection,
    target_metadata=metadata,
    transaction_per_migration=True,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
