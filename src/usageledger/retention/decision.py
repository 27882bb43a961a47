"""Which old rows retention may delete (SPEC R5, R6, R7), decided in one walk by id.

The walk reads every row of one table in id order, up to the newest old row: one statement over
the primary key, streamed in chunks. Lifecycle rows fold per (lifecycle, key) into the ids of
superseded openings (pass 1); old rows that open no lifecycle go into pass 2's ids on the same
read. Order is always by id; `created_at` only says whether a row is old. No sort and no per-row
lookup: the cost is one read of each row up to the newest old one, and no row is read twice
(R11).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, TypeAlias

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from usageledger import db
from usageledger.lifecycles import Lifecycle

#: The bucket for rows of no lifecycle (staging, BUILDPACK_SET, unknown states).
NO_LIFECYCLE = "other"


def lifecycle_rows_query(
    table: sa.Table,
    lifecycles: Sequence[Lifecycle],
    *,
    cutoff: datetime,
    upper_id: int,
) -> sa.Select[int, str, str, int]:
    """(id, state, lifecycle key, is old) of every row with id <= upper_id, by id.

    Every row, not only lifecycle states: the same read that decides pass 1 (R5) collects
    pass 2's old non-openings (R7), so no old row is read twice. The filter is the primary-key
    range alone: one ordered range scan, no sort.
    """
    t = table
    key = sa.case(
        *[(t.c.state.in_(lc.states), t.c[lc.key_column]) for lc in lifecycles],
        else_=sa.null(),
    )
    return (
        sa.select(
            t.c.id,
            t.c.state,
            key.label("lifecycle_key"),
            sa.case((t.c.created_at < cutoff, 1), else_=0).label("old"),
        )
        .where(t.c.id <= upper_id)
        .order_by(t.c.id)
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


_Role: TypeAlias = "tuple[bool, dict[str | None, _KeyState], list[int], array[int]]"
"""What a state means to the walk: (is an opening, its lifecycle's keys, prunable ids,
pass 2 ids)."""


@attrs.define
class SupersededOpeningsWalk:
    """The R5/R6 decision as a fold over rows in id order, collecting pass 2's ids on the way.

    For an old opening r of a key:
      (a) a later OLD ending of the key prunes it (the run is over; a fresh ending is no evidence);
      (b) it is prunable when an earlier old opening shares its run (no ending, old or fresh,
          in between) and a later OLD opening of the key exists.
    An old ending is kept when a fresh opening precedes it in its run: pass 1 never prunes a
    fresh opening, and deleting that ending would make it look running (the invariant behind R7).
    Every other old row whose state opens no lifecycle, up to `upper_id`, is pass 2's (R7).
    """

    lifecycles: Sequence[Lifecycle]
    upper_id: int
    """The highest id any pass may delete (R2); the walk may read further, as evidence."""
    prunable: dict[str, list[int]] = attrs.field(init=False)
    non_openings: dict[str, array[int]] = attrs.field(init=False)
    """Pass 2's ids per lifecycle kind (its endings) and `other`, ascending as read."""
    kept_endings: set[int] = attrs.Factory(set)
    _role: dict[str, _Role] = attrs.field(init=False)
    _keys: dict[str, dict[str | None, _KeyState]] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.prunable = {lc.kind: [] for lc in self.lifecycles}
        self.non_openings = {lc.kind: array("q") for lc in self.lifecycles}
        self.non_openings[NO_LIFECYCLE] = array("q")
        # One dict of keys per lifecycle, so a row's slot is its key alone.
        self._keys = {lc.kind: {} for lc in self.lifecycles}
        self._role = {
            state: (
                state in lc.openings,
                self._keys[lc.kind],
                self.prunable[lc.kind],
                self.non_openings[lc.kind],
            )
            for lc in self.lifecycles
            for state in lc.states
        }

    def feed(self, rows: Iterable[Sequence[Any]]) -> int:
        """Fold rows (id, state, key, old) given in ascending id order; returns the last id."""
        role_of, upper = self._role, self.upper_id
        other = self.non_openings[NO_LIFECYCLE]
        last = 0
        for row_id, state, key, old in rows:
            last = row_id
            role = role_of.get(state)
            if role is None:  # staging, BUILDPACK_SET, unknown: pass 2 when old
                if old and row_id <= upper:
                    other.append(row_id)
                continue
            is_opening, keys, prunable, non_openings = role
            current = keys.get(key)
            if is_opening:
                if current is None:
                    current = keys[key] = _KeyState()
                if not old:
                    current.run_has_fresh_opening = True
                    continue
                if current.waiting is not None:  # R5(b): this is the later old opening
                    prunable.append(current.waiting)
                    current.waiting = None
                if current.run_has_old_opening:
                    current.waiting = row_id
                else:
                    current.old_firsts.append(row_id)
                    current.run_has_old_opening = True
            elif current is None:
                # An ending with nothing before it changes nothing; when old it is pass 2's.
                if old and row_id <= upper:
                    non_openings.append(row_id)
            elif old:
                # An old ending proves every earlier run of the key over (R5(a)).
                if current.run_has_fresh_opening:
                    self.kept_endings.add(row_id)
                elif row_id <= upper:
                    non_openings.append(row_id)
                prunable.extend(current.old_firsts)
                if current.waiting is not None:
                    prunable.append(current.waiting)
                del keys[key]
            else:
                # A fresh ending is still a run boundary (R6), but proves nothing over.
                current.run_has_old_opening = False
                current.run_has_fresh_opening = False
                if not current.old_firsts and current.waiting is None:
                    del keys[key]
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
