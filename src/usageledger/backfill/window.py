"""The bound parameters of every batch statement: its id window and the time its rows carry.

Each phase builds its INSERT…SELECT once and runs it per batch with new values, so a batch
costs the database's work only, not rebuilding and re-keying a large statement (B3).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa

from usageledger.schema import IdType, UTCDateTime

AFTER_ID = sa.bindparam("after_id", type_=IdType)
THROUGH_ID = sa.bindparam("through_id", type_=IdType)
#: The seed or repair time (B4, B5): created_at of every row the batch appends.
NOW = sa.bindparam("now", type_=UTCDateTime())


def in_window(id_column: sa.ColumnElement[int]) -> sa.ColumnElement[bool]:
    """`after_id < id <= through_id`."""
    return sa.and_(id_column > AFTER_ID, id_column <= THROUGH_ID)


def window_values(after_id: int, through_id: int, now: datetime | None = None) -> dict[str, Any]:
    """The window's bound values; `now` for the statements that append rows."""
    values: dict[str, Any] = {AFTER_ID.key: after_id, THROUGH_ID.key: through_id}
    if now is not None:
        values[NOW.key] = now
    return values
