"""The consumer's ledger tables (SPEC C1, C9, C14): cursors, resource states, segments, findings
and gaps. Every function works on the caller's ledger transaction, so that a batch's state
changes and its cursor move commit together or not at all (C1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from usageledger import db
from usageledger.clock import Clock
from usageledger.reconstruct.billing import (
    S_GUID,
    S_KIND,
    SEGMENT_ROW_FIELDS,
    STATE_ROW_FIELDS,
    Finding,
    FindingCode,
    Footprint,
    Ledger,
    ResourceId,
    ResourceState,
    Segment,
    StateRow,
    segment_to_row,
    state_from_row,
    state_to_row,
)
from usageledger.reconstruct.gaps import IdRange, KnownGap
from usageledger.schema import (
    ledger_cursors,
    ledger_findings,
    ledger_gaps,
    ledger_resources,
    ledger_segments,
)

GAP_OPEN = "open"
GAP_PERMANENT = "permanent"
GAP_RETENTION = "retention"


@attrs.frozen
class ConsumerCursor:
    """Where a consumer stands in one source table: every id <= `position` is applied or a
    recorded hole; `last_event_id` is the last event actually applied."""

    consumer: str
    table: str
    position: int
    last_event_id: int | None
    last_event_guid: str | None = None


def _insert_many(conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]]) -> None:
    db.insert_many(conn, table, list(rows))


# --- cursors ----------------------------------------------------------------------------------


def _new_cursor_row(consumer: str, table: str, now: datetime) -> dict[str, Any]:
    return {
        "consumer": consumer,
        "source_table": table,
        "position": 0,
        "last_event_id": None,
        "last_event_guid": None,
        "updated_at": now,
    }


def ensure_cursor(engine: Engine, consumer: str, table: str, clock: Clock) -> None:
    """Create the cursor at position 0 if it does not exist, in a transaction of its own.

    `consume` calls it before its batches, so that two first runs of the same new consumer
    name do not both insert the row inside their batch transactions (on MariaDB their locking
    reads of the missing row would deadlock): here one insert waits for the other and then
    finds the row there.
    """
    c = ledger_cursors.c
    mine = sa.and_(c.consumer == consumer, c.source_table == table)
    try:
        with db.transaction(engine) as conn:
            if conn.execute(sa.select(c.position).where(mine)).first() is None:
                conn.execute(
                    ledger_cursors.insert().values(
                        **_new_cursor_row(consumer, table, clock.now(conn))
                    )
                )
    except sa.exc.IntegrityError:
        pass  # the other run created it


def lock_cursor(conn: Connection, consumer: str, table: str, now: datetime) -> ConsumerCursor:
    """The cursor, locked for this transaction (a second consumer of the same name waits);
    created at position 0 on first use (see `ensure_cursor` for two first uses at once)."""
    c = ledger_cursors.c
    row = conn.execute(
        sa.select(c.position, c.last_event_id, c.last_event_guid)
        .where(c.consumer == consumer, c.source_table == table)
        .with_for_update()
    ).first()
    if row is None:
        conn.execute(ledger_cursors.insert().values(**_new_cursor_row(consumer, table, now)))
        return ConsumerCursor(consumer, table, 0, None)
    return ConsumerCursor(
        consumer, table, int(row.position), row.last_event_id, row.last_event_guid
    )


def write_cursor(conn: Connection, cursor: ConsumerCursor, now: datetime) -> None:
    c = ledger_cursors.c
    conn.execute(
        ledger_cursors.update()
        .where(c.consumer == cursor.consumer, c.source_table == cursor.table)
        .values(
            position=cursor.position,
            last_event_id=cursor.last_event_id,
            last_event_guid=cursor.last_event_guid,
            updated_at=now,
        )
    )


def read_cursors(conn: Connection, consumer: str) -> list[ConsumerCursor]:
    c = ledger_cursors.c
    rows = conn.execute(
        sa.select(c.source_table, c.position, c.last_event_id, c.last_event_guid)
        .where(c.consumer == consumer)
        .order_by(c.source_table)
    ).all()
    return [
        ConsumerCursor(
            consumer, r.source_table, int(r.position), r.last_event_id, r.last_event_guid
        )
        for r in rows
    ]


# --- resource states --------------------------------------------------------------------------


#: The ledger's names for the row-layout fields that `billing` names after its own classes.
_LEDGER_NAMES = {"guid": "resource_guid", "start": "start_at", "end": "end_at"}
#: `ledger_resources` columns in the order of `billing.STATE_ROW_FIELDS`, consumer first.
_STATE_COLUMNS = ["consumer", *(_LEDGER_NAMES.get(f, f) for f in STATE_ROW_FIELDS)]


def _states_query() -> sa.Select[*tuple[Any, ...]]:
    """`ledger_resources` rows laid out as `billing.STATE_ROW_FIELDS` (for `state_from_row`)."""
    return sa.select(*(ledger_resources.c[name] for name in _STATE_COLUMNS[1:]))


def open_states(conn: Connection, consumer: str, kinds: Sequence[str]) -> list[ResourceState]:
    c = ledger_resources.c
    rows = conn.execute(
        _states_query()
        .where(c.consumer == consumer, c.kind.in_(kinds), c.is_open.is_(True))
        .order_by(c.kind, c.resource_guid)
    ).all()
    return [state_from_row(row) for row in rows]


def save_states(
    conn: Connection, consumer: str, states: Mapping[ResourceId, ResourceState]
) -> None:
    """Replace the stored states of these resources (delete, then insert: portable upsert).

    One row per resource the batch changed, however many of its events the batch held.
    """
    if not states:
        return
    c = ledger_resources.c
    by_kind: dict[str, list[str]] = {}
    for kind, guid in states:
        by_kind.setdefault(kind, []).append(guid)
    for kind, guids in sorted(by_kind.items()):
        guids.sort()
        for start in range(0, len(guids), chunk := db.text_in_chunk(conn)):
            conn.execute(
                ledger_resources.delete().where(
                    db.text_in(conn, c.resource_guid, guids[start : start + chunk]),
                    c.kind == kind,
                    c.consumer == consumer,
                )
            )
    db.copy_rows(
        conn,
        ledger_resources,
        _STATE_COLUMNS,
        [(consumer, *state_to_row(states[rid])) for rid in sorted(states)],
    )


def take_states(
    conn: Connection, consumer: str, ids: Iterable[ResourceId]
) -> dict[ResourceId, StateRow]:
    """The stored states of the resources `ids`, as `billing.StateRow`s with naive UTC times,
    removed from the table in the same statement (DELETE … RETURNING): the caller writes every
    one of them back with `put_states`, changed or not, before its transaction commits (C1).

    One statement per batch instead of a lookup and a delete. The condition is the guids and
    the kinds, each as a list, so that the database probes the primary key for each guid; a
    guid the batch touches under one kind is also taken under another kind it has, which is
    harmless since everything taken is written back.
    """
    wanted = set(ids)
    if not wanted:
        return {}
    db.prefer_key_probes(conn)
    c = ledger_resources.c
    columns = [c[name] for name in _STATE_COLUMNS[1:]]
    kinds = sorted({kind for kind, _ in wanted})
    guids = sorted({guid for _, guid in wanted})
    chunk = db.text_in_chunk(conn)
    states: dict[ResourceId, StateRow] = {}
    for start in range(0, len(guids), chunk):
        where = sa.and_(
            db.text_in(conn, c.resource_guid, guids[start : start + chunk]),
            c.kind.in_(kinds),
            c.consumer == consumer,
        )
        if conn.dialect.delete_returning:
            rows = db.fetch_rows(conn, ledger_resources.delete().where(where).returning(*columns))
        else:
            rows = db.fetch_rows(conn, sa.select(*columns).where(where))
            conn.execute(ledger_resources.delete().where(where))
        for row in rows:
            state = list(row)
            states[(state[S_KIND], state[S_GUID])] = state
    return states


def put_states(conn: Connection, consumer: str, states: Iterable[StateRow]) -> None:
    """Insert these states (the rows `take_states` removed and any new ones), times naive UTC."""
    db.copy_rows(
        conn,
        ledger_resources,
        _STATE_COLUMNS,
        [(consumer, *state) for state in states],
        naive_utc=True,
    )


def put_segment_rows(conn: Connection, consumer: str, rows: Sequence[Sequence[Any]]) -> None:
    """Insert closed segments given as `billing.SEGMENT_ROW_FIELDS` rows, times naive UTC."""
    db.copy_rows(
        conn, ledger_segments, _SEGMENT_COLUMNS, [(consumer, *row) for row in rows], naive_utc=True
    )


def all_states(conn: Connection, consumer: str, guid: str | None = None) -> list[ResourceState]:
    c = ledger_resources.c
    statement = _states_query().where(c.consumer == consumer)
    if guid is not None:
        statement = statement.where(c.resource_guid == guid)
    rows = conn.execute(statement.order_by(c.kind, c.resource_guid)).all()
    return [state_from_row(row) for row in rows]


# --- segments and findings --------------------------------------------------------------------


#: `ledger_segments` columns in the order of `billing.SEGMENT_ROW_FIELDS`, consumer first.
_SEGMENT_COLUMNS = ["consumer", *(_LEDGER_NAMES.get(f, f) for f in SEGMENT_ROW_FIELDS)]


def save_segments(conn: Connection, consumer: str, segments: Sequence[Segment]) -> None:
    if not segments:
        return
    db.copy_rows(
        conn,
        ledger_segments,
        _SEGMENT_COLUMNS,
        [(consumer, *segment_to_row(s)) for s in segments],
    )


def _segment_from_row(row: sa.Row[Any]) -> Segment:
    return Segment(
        kind=row.kind,
        guid=row.resource_guid,
        start=row.start_at,
        end=row.end_at,
        footprint=Footprint(
            instance_count=row.instance_count,
            memory_in_mb_per_instance=row.memory_in_mb_per_instance,
            service_plan_guid=row.service_plan_guid,
        ),
        opened_by_id=int(row.opened_by_id),
        opened_by_guid=row.opened_by_guid,
        closed_by_id=row.closed_by_id,
        closed_by_guid=row.closed_by_guid,
        start_is_lower_bound=bool(row.start_is_lower_bound),
        end_is_repaired=bool(row.end_is_repaired),
        gap_close=bool(row.gap_close),
        approximate_size=bool(row.approximate_size),
        name=row.name,
        space_guid=row.space_guid,
        org_guid=row.org_guid,
    )


def closed_segments(conn: Connection, consumer: str, guid: str | None = None) -> list[Segment]:
    c = ledger_segments.c
    statement = sa.select(ledger_segments).where(c.consumer == consumer)
    if guid is not None:
        statement = statement.where(c.resource_guid == guid)
    return [_segment_from_row(r) for r in conn.execute(statement.order_by(c.id)).all()]


def save_findings(conn: Connection, consumer: str, findings: Sequence[Finding]) -> None:
    if not findings:
        return
    _insert_many(
        conn,
        ledger_findings,
        [
            {
                "consumer": consumer,
                "code": f.code.value,
                "source_table": f.table,
                "event_id": f.event_id,
                "event_guid": f.event_guid,
                "kind": f.kind,
                "resource_guid": f.guid,
                "state": f.state,
                "detail": f.detail[:1000],
            }
            for f in findings
        ],
    )


def findings(conn: Connection, consumer: str, guid: str | None = None) -> list[Finding]:
    c = ledger_findings.c
    statement = sa.select(ledger_findings).where(c.consumer == consumer)
    if guid is not None:
        statement = statement.where(c.resource_guid == guid)
    return [
        Finding(
            code=FindingCode(r.code),
            table=r.source_table,
            event_id=r.event_id,
            event_guid=r.event_guid,
            kind=r.kind,
            guid=r.resource_guid,
            state=r.state,
            detail=r.detail,
        )
        for r in conn.execute(statement.order_by(c.id)).all()
    ]


def read_ledger(conn: Connection, consumer: str) -> Ledger:
    """The whole stored ledger of `consumer` (closed segments in closing order, then the open
    ones), comparable with `billing.fold` after `Ledger.canonical()`."""
    states = all_states(conn, consumer)
    return Ledger(
        segments=tuple(closed_segments(conn, consumer))
        + tuple(s for state in states if (s := state.open_segment()) is not None),
        findings=tuple(findings(conn, consumer)),
        resources=tuple(states),
    )


# --- gaps -------------------------------------------------------------------------------------


@attrs.frozen
class GapRecord:
    """A gap as stored: open (waiting out the grace period), permanent, or retention (C10)."""

    table: str
    first_id: int
    last_id: int
    first_seen_at: datetime
    status: str
    resolved_at: datetime | None


def open_gaps(conn: Connection, consumer: str, table: str) -> list[KnownGap]:
    c = ledger_gaps.c
    rows = conn.execute(
        sa.select(c.first_id, c.last_id, c.first_seen_at)
        .where(c.consumer == consumer, c.source_table == table, c.status == GAP_OPEN)
        .order_by(c.first_id)
    ).all()
    return [KnownGap(int(r.first_id), int(r.last_id), r.first_seen_at) for r in rows]


def record_gaps(
    conn: Connection,
    consumer: str,
    table: str,
    *,
    position: int,
    passed: Sequence[tuple[KnownGap, str]],
    new_gaps: Sequence[IdRange],
    now: datetime,
    known: Sequence[KnownGap] | None = None,
) -> None:
    """Retire open gaps the cursor has moved past, store the passed ones with their status, and
    record newly seen ones as open from `now`. `known`: the open gaps read on this transaction,
    if the caller has them (saves two statements per batch when there are none)."""
    c = ledger_gaps.c
    mine = sa.and_(c.consumer == consumer, c.source_table == table, c.status == GAP_OPEN)
    if known is None or any(gap.first <= position for gap in known):
        # `known` is what open_gaps returned on this transaction: nothing to retire otherwise.
        conn.execute(ledger_gaps.delete().where(mine, c.last_id <= position))
        conn.execute(
            ledger_gaps.update().where(mine, c.first_id <= position).values(first_id=position + 1)
        )
    rows = [
        {
            "consumer": consumer,
            "source_table": table,
            "first_id": gap.first,
            "last_id": gap.last,
            "first_seen_at": gap.first_seen_at,
            "status": status,
            "resolved_at": now,
        }
        for gap, status in passed
    ] + [
        {
            "consumer": consumer,
            "source_table": table,
            "first_id": gap.first,
            "last_id": gap.last,
            "first_seen_at": now,
            "status": GAP_OPEN,
            "resolved_at": None,
        }
        for gap in new_gaps
    ]
    if rows:
        conn.execute(ledger_gaps.insert(), rows)


def gap_records(conn: Connection, consumer: str) -> list[GapRecord]:
    c = ledger_gaps.c
    rows = conn.execute(
        sa.select(ledger_gaps).where(c.consumer == consumer).order_by(c.source_table, c.first_id)
    ).all()
    return [
        GapRecord(
            r.source_table,
            int(r.first_id),
            int(r.last_id),
            r.first_seen_at,
            r.status,
            r.resolved_at,
        )
        for r in rows
    ]
