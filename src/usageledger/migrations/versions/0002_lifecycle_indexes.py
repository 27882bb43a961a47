"""The lifecycle indexes (state, app_guid, id) and (state, service_instance_guid, id).

Retention, backfill and current-state walk these. On PostgreSQL they are built CONCURRENTLY,
outside a transaction, so a live platform keeps writing events meanwhile; an invalid index left
by an interrupted build is dropped and rebuilt.

Revision ID: 0002_lifecycle_indexes
Revises: 0001_base_schema
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from alembic import op

from usageledger.db import create_index_online, drop_index_online, needs_autocommit_for_online_ddl
from usageledger.schema import LIFECYCLE_INDEXES

revision = "0002_lifecycle_indexes"
down_revision = "0001_base_schema"
branch_labels = None
depends_on = None


@contextmanager
def _online_ddl() -> Iterator[None]:
    if needs_autocommit_for_online_ddl(op.get_bind()):
        with op.get_context().autocommit_block():
            yield
    else:
        yield


def upgrade() -> None:
    with _online_ddl():
        for index in LIFECYCLE_INDEXES:
            create_index_online(op.get_bind(), index)


def downgrade() -> None:
    with _online_ddl():
        for index in LIFECYCLE_INDEXES:
            drop_index_online(op.get_bind(), index)
