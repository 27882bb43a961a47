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
from itertools import compress, islice
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
    """What the walk remembers about one resource (lifecycle, key) so far. Openings are named
    by their index in the walk's array of old openings of the lifecycle, not by id."""

    old_firsts: list[int] = attrs.Factory(list)
    """Old openings that were first in their run and are not pruned yet: only R5(a) prunes
    them, when a later old ending arrives."""
    waiting: int | None = None
    """The old opening that is not first in its run and has no later old opening yet; the
    next old opening makes it prunable (R5(b))."""
    run_has_old_opening: bool = False
    run_has_fresh_opening: bool = False


_Role: TypeAlias = "tuple[bool, dict[str, _KeyState], array[int], bytearray, array[int]]"
"""What a state means to the walk: (is an opening, its lifecycle's keys, the lifecycle's old
openings, their pruned marks, pass 2 ids)."""


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

    A NULL key pairs with nothing, as in SQL and in the consumer (a lifecycle row without its
    key is its `missing_key`): a NULL-key opening is never prunable, a NULL-key ending closes
    nothing and, when old, is pass 2's like any orphan ending (R5, R9). The empty string is a
    key like any other, as it is to the consumer.

    Memory: only ids, in arrays of 8 bytes each. Every old opening is appended to its
    lifecycle's array as read (so ascending) with a pruned mark of one byte beside it;
    `take_prunable_openings` squeezes the marked ones out in place. No sort, and no Python
    int is kept per row.
    """

    lifecycles: Sequence[Lifecycle]
    upper_id: int
    """The highest id any pass may delete (R2); the walk may read further, as evidence."""
    old_openings: dict[str, array[int]] = attrs.field(init=False)
    """Every old opening read so far per lifecycle kind, ascending; `pruned` marks R5's."""
    pruned: dict[str, bytearray] = attrs.field(init=False)
    non_openings: dict[str, array[int]] = attrs.field(init=False)
    """Pass 2's ids per lifecycle kind (its endings) and `other`, ascending as read."""
    kept_endings: set[int] = attrs.Factory(set)
    _role: dict[str, _Role] = attrs.field(init=False)
    _keys: dict[str, dict[str, _KeyState]] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.old_openings = {lc.kind: array("q") for lc in self.lifecycles}
        self.pruned = {lc.kind: bytearray() for lc in self.lifecycles}
        self.non_openings = {lc.kind: array("q") for lc in self.lifecycles}
        self.non_openings[NO_LIFECYCLE] = array("q")
        # One dict of keys per lifecycle, so a row's slot is its key alone.
        self._keys = {lc.kind: {} for lc in self.lifecycles}
        self._role = {
            state: (
                state in lc.openings,
                self._keys[lc.kind],
                self.old_openings[lc.kind],
                self.pruned[lc.kind],
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
            is_opening, keys, openings, pruned, non_openings = role
            current = keys.get(key)  # never a NULL key: none is ever stored
            if is_opening:
                if current is None:
                    if key is None:  # pairs with nothing: never ended nor superseded (R5)
                        continue
                    current = keys[key] = _KeyState()
                if not old:
                    current.run_has_fresh_opening = True
                    continue
                index = len(openings)
                openings.append(row_id)
                pruned.append(0)
                if current.waiting is not None:  # R5(b): this is the later old opening
                    pruned[current.waiting] = 1
                    current.waiting = None
                if current.run_has_old_opening:
                    current.waiting = index
                else:
                    current.old_firsts.append(index)
                    current.run_has_old_opening = True
            elif current is None:
                # An ending with nothing before it (or with a NULL key, which pairs with
                # nothing) changes nothing; when old it is pass 2's.
                if old and row_id <= upper:
                    non_openings.append(row_id)
            elif old:
                # An old ending proves every earlier run of the key over (R5(a)).
                if current.run_has_fresh_opening:
                    self.kept_endings.add(row_id)
                elif row_id <= upper:
                    non_openings.append(row_id)
                for index in current.old_firsts:
                    pruned[index] = 1
                if current.waiting is not None:
                    pruned[current.waiting] = 1
                del keys[key]
            else:
                # A fresh ending is still a run boundary (R6), but proves nothing over.
                current.run_has_old_opening = False
                current.run_has_fresh_opening = False
                if not current.old_firsts and current.waiting is None:
                    del keys[key]
        return last

    def take_prunable_openings(self) -> dict[str, array[int]]:
        """Per lifecycle kind, the ids of the prunable openings up to `upper_id`, ascending:
        each lifecycle's array of old openings, squeezed in place to the marked ones. Ends
        the walk: its arrays become the result."""
        prunable: dict[str, array[int]] = {}
        for kind, ids in self.old_openings.items():
            marks = self.pruned[kind]
            _keep_marked(ids, marks)
            marks.clear()
            while ids and ids[-1] > self.upper_id:  # only the newest row can be above it
                ids.pop()
            prunable[kind] = ids
        return prunable


#: Ids moved at a time when squeezing an array in place.
_SQUEEZE_STEP = 1 << 13


def _keep_marked(ids: array[int], marks: bytearray) -> None:
    """Keep, in place and in order, the ids whose mark is set: a block of at most
    _SQUEEZE_STEP ids at a time is copied down, so no second array of every id is built."""
    marked = compress(ids, marks)  # reads ahead of every position written below
    written = 0
    while block := array("q", islice(marked, _SQUEEZE_STEP)):
        ids[written : written + len(block)] = block
        written += len(block)
    del ids[written:]


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
