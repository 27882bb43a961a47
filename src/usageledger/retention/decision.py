"""Which old rows retention may delete (SPEC R5, R6), decided in one walk by id.

The walk reads the lifecycle rows of one table in id order, in keyset pages, up to the newest
old row, and folds them per (lifecycle, key) into the ids of superseded openings. Order is always
by id; `created_at` only says whether a row is old. No sort and no per-row lookup: the cost is
one read of each row up to the newest old one (R11).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from usageledger import db
from usageledger.lifecycles import Lifecycle


def lifecycle_rows_page_query(
    table: sa.Table,
    lifecycles: Sequence[Lifecycle],
    *,
    cutoff: datetime,
    after_id: int,
    upper_id: int,
    limit: int,
) -> sa.Select[int, str, str, int]:
    """One keyset page of (id, state, lifecycle key, is old) for the walk, by id."""
    t = table
    key = sa.case(
        *[(t.c.state.in_(lc.states), t.c[lc.key_column]) for lc in lifecycles],
        else_=sa.null(),
    )
    states = sorted({s for lc in lifecycles for s in lc.states})
    return (
        sa.select(
            t.c.id,
            t.c.state,
            key.label("lifecycle_key"),
            sa.case((t.c.created_at < cutoff, 1), else_=0).label("old"),
        )
        .where(t.c.id > after_id, t.c.id <= upper_id, t.c.state.in_(states))
        .order_by(t.c.id)
        .limit(limit)
    )


@attrs.define
class _KeyState:
    """What the walk remembers about one resource (lifecycle, key) so far."""

    old_firsts: list[int] = attrs.Factory(list)
    """Old openings that were first in their run and are not pruned yet: only R5(a) prunes
    them, when a later old ending arrives."""
    waiting: int | None = None
    """The old opening that is not first in its run and has no later old opening yet; the
    next old opening makes it prunable (R5(b))."""
    run_has_old_opening: bool = False
    run_has_fresh_opening: bool = False


@attrs.define
class SupersededOpeningsWalk:
    """The R5/R6 decision as a fold over lifecycle rows in id order.

    For an old opening r of a key:
      (a) a later OLD ending of the key prunes it (the run is over; a fresh ending is no evidence);
      (b) it is prunable when an earlier old opening shares its run (no ending, old or fresh,
          in between) and a later OLD opening of the key exists.
    An old ending is kept when a fresh opening precedes it in its run: pass 1 never prunes a
    fresh opening, and deleting that ending would make it look running (the invariant behind R7).
    """

    lifecycles: Sequence[Lifecycle]
    prunable: dict[str, list[int]] = attrs.field(init=False)
    kept_endings: set[int] = attrs.Factory(set)
    _role: dict[str, tuple[str, bool]] = attrs.field(init=False)
    _keys: dict[tuple[str, str | None], _KeyState] = attrs.Factory(dict)

    def __attrs_post_init__(self) -> None:
        self.prunable = {lc.kind: [] for lc in self.lifecycles}
        self._role = {
            state: (lc.kind, state in lc.openings) for lc in self.lifecycles for state in lc.states
        }

    def feed(self, rows: Iterable[tuple[int, str, str | None, int]]) -> int:
        """Fold rows (id, state, key, old) given in ascending id order; returns the last id."""
        role_of, keys, prunable = self._role, self._keys, self.prunable
        last = 0
        for row_id, state, key, old in rows:
            last = row_id
            kind, is_opening = role_of[state]
            slot = (kind, key)
            current = keys.get(slot)
            if is_opening:
                if current is None:
                    current = keys[slot] = _KeyState()
                if not old:
                    current.run_has_fresh_opening = True
                    continue
                if current.waiting is not None:  # R5(b): this is the later old opening
                    prunable[kind].append(current.waiting)
                    current.waiting = None
                if current.run_has_old_opening:
                    current.waiting = row_id
                else:
                    current.old_firsts.append(row_id)
                    current.run_has_old_opening = True
            elif current is None:
                continue  # an ending with nothing before it changes nothing
            elif old:
                # An old ending proves every earlier run of the key over (R5(a)).
                if current.run_has_fresh_opening:
                    self.kept_endings.add(row_id)
                prunable[kind].extend(current.old_firsts)
                if current.waiting is not None:
                    prunable[kind].append(current.waiting)
                del keys[slot]
            else:
                # A fresh ending is still a run boundary (R6), but proves nothing over.
                current.run_has_old_opening = False
                current.run_has_fresh_opening = False
                if not current.old_firsts and current.waiting is None:
                    del keys[slot]
        return last


def newest_old_id_query(table: sa.Table, *, cutoff: datetime) -> sa.Select[int | None]:
    """The highest id among old rows: no row above it is old, so every walk stops there."""
    return sa.select(sa.func.max(table.c.id)).where(table.c.created_at < cutoff)


def newest_id_query(table: sa.Table) -> sa.Select[int | None]:
    return sa.select(sa.func.max(table.c.id))


def old_rows_page_query(
    table: sa.Table,
    *,
    cutoff: datetime,
    after_id: int,
    upper_id: int,
    limit: int,
    except_states: Iterable[str] = (),
) -> sa.Select[int, str]:
    """One keyset page of old rows by id (pass 2, and R3): never restarts from the beginning."""
    t = table
    query = sa.select(t.c.id, t.c.state).where(
        t.c.id > after_id, t.c.id <= upper_id, t.c.created_at < cutoff
    )
    excluded = tuple(except_states)
    if excluded:
        query = query.where(t.c.state.not_in(excluded))
    return query.order_by(t.c.id).limit(limit)


def delete_ids_statement(bind: Engine | Connection, table: sa.Table, ids: list[int]) -> sa.Delete:
    """DELETE by an explicit id list (R8; MySQL cannot delete from a table it subqueries)."""
    return table.delete().where(db.id_in(bind, table.c.id, ids))
