"""The checker (SPEC S6): every invariant I1–I10 over plain values, each finding with a minimal
witness in plain words, a verdict per invariant, and known bounded deviations with their size.

Inputs are what a run observed: the truth, each consumer's ledger and cursor moves, the rows the
observer saw become visible, snapshots around every cleanup, the final table, backfill lock holds
and the final fixpoint backfills. Nothing here touches a database.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import attrs

from usageledger.lifecycles import LIFECYCLES, TASK, Lifecycle
from usageledger.reconstruct.billing import FindingCode, Footprint, Ledger, Segment
from usageledger.simulator.truth import CommittedOp, Truth

INVARIANTS: dict[str, str] = {
    "I1": "no lost interval",
    "I2": "no duplicated (overlapping) interval",
    "I3": "no unbounded over-bill after repair ran",
    "I4": "no phantom charge",
    "I5": "no wrong footprint",
    "I6": "retention keeps running resources' openings and never orphans an opening",
    "I7": "backfill reaches a fixpoint that matches what runs",
    "I8": "never two backfills holding the lock at once",
    "I9": "TASK_STOPPED exactly when start evidence exists",
    "I10": "no row becomes visible below a consumer's cursor",
}
CONSUMER_INVARIANTS = ("I1", "I2", "I3", "I4", "I5", "I10")


class Verdict(StrEnum):
    VALID = "valid"
    INVALID = "invalid"
    UNKNOWN = "unknown"


class Severity(StrEnum):
    INVALID = "invalid"  # breaks the invariant
    DEVIATION = "deviation"  # a known, bounded deviation (reported with its size)
    EXPECTED = "expected"  # a violation the scenario asked for (the old cleanup, S2)


@attrs.frozen
class RowInfo:
    """One usage-event row as the observer saw it; `visible_step` is the step after whose
    commit it was first seen (0 for rows that existed before the actors started)."""

    table: str
    id: int
    state: str
    kind: str | None
    key: str | None
    created_at: datetime
    previous_state: str | None = None
    visible_step: int = 0


@attrs.frozen
class CleanupObservation:
    """The event tables just before and just after one cleanup operation (S6 I6)."""

    actor: str
    variant: str
    start_step: int
    end_step: int
    cutoff: datetime
    before: tuple[RowInfo, ...]
    after: tuple[RowInfo, ...]
    crashed: bool = False
    attempted: frozenset[tuple[str, int]] | None = None
    """The (table, id) pairs this cleanup's own DELETEs named; rows that another cleanup
    deleted meanwhile are not this one's doing. None: every row gone counts."""

    def deleted(self) -> set[tuple[str, int]]:
        gone = {(r.table, r.id) for r in self.before} - {(r.table, r.id) for r in self.after}
        return gone if self.attempted is None else gone & self.attempted


@attrs.frozen
class LockHold:
    actor: str
    acquired_step: int
    released_step: int


@attrs.frozen
class CursorMove:
    consumer: str
    table: str
    step: int
    position: int


@attrs.frozen
class TaskEnding:
    """A committed task-ending operation: whether it wrote TASK_STOPPED, and its step span."""

    op: CommittedOp
    start_step: int
    wrote_stop: bool
    was_running: bool


@attrs.frozen
class ConsumerView:
    """One consumer's output and how it read."""

    name: str
    flavour: str
    ledger: Ledger
    drained: bool
    moves: tuple[CursorMove, ...] = ()


@attrs.frozen
class CheckInput:
    truth: Truth
    consumers: tuple[ConsumerView, ...]
    observed: tuple[RowInfo, ...]
    cleanups: tuple[CleanupObservation, ...]
    final_rows: tuple[RowInfo, ...]
    final_backfills_added: tuple[int, ...]
    lock_holds: tuple[LockHold, ...]
    task_endings: tuple[TaskEnding, ...]
    start: datetime
    outcome_unknown: str = ""
    """Why the run's outcome could not be resolved (a stuck schedule), empty when it could."""


@attrs.frozen
class Finding:
    """One anomaly or deviation, with its witness in plain words."""

    invariant: str
    severity: Severity
    witness: str
    consumer: str | None = None
    guid: str | None = None
    label: str | None = None
    kind: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    size_seconds: float = 0.0
    event_ids: tuple[int, ...] = ()
    deviation: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "invariant": self.invariant,
            "severity": self.severity.value,
            "consumer": self.consumer,
            "resource": self.label,
            "guid": self.guid,
            "kind": self.kind,
            "start": self.start,
            "end": self.end,
            "size_seconds": round(self.size_seconds, 3),
            "event_ids": list(self.event_ids),
            "deviation": self.deviation or None,
            "witness": self.witness,
        }


@attrs.frozen
class InvariantResult:
    invariant: str
    verdict: Verdict
    invalid: int
    deviations: int
    expected: int
    note: str = ""


@attrs.frozen
class CheckReport:
    verdict: Verdict
    invariants: tuple[InvariantResult, ...]
    findings: tuple[Finding, ...]

    def invalid_findings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.INVALID)

    def of(self, invariant: str) -> InvariantResult:
        return next(r for r in self.invariants if r.invariant == invariant)

    def broken(self) -> frozenset[str]:
        return frozenset(f.invariant for f in self.invalid_findings())

    def deviation_totals(self) -> dict[str, tuple[int, float]]:
        totals: dict[str, tuple[int, float]] = {}
        for f in self.findings:
            if f.severity is Severity.DEVIATION:
                n, s = totals.get(f.deviation, (0, 0.0))
                totals[f.deviation] = (n + 1, s + f.size_seconds)
        return totals


# --- wording ----------------------------------------------------------------------------------


def aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class Words:
    """Formats times relative to the scenario start and resources by label."""

    def __init__(self, start: datetime, labels: Mapping[str, str]) -> None:
        self.start = start
        self.labels = labels

    def t(self, moment: datetime | None) -> str:
        if moment is None:
            return "(still open)"
        delta = aware(moment) - self.start
        days, rest = divmod(int(delta.total_seconds()), 86_400)
        h, rest = divmod(rest, 3600)
        m, s = divmod(rest, 60)
        return f"day {days} {h:02d}:{m:02d}:{s:02d}"

    def r(self, guid: str | None, kind: str | None = None) -> str:
        if guid is None:
            return "?"
        label = self.labels.get(guid)
        name = label if label is not None else guid[:8]
        return f"{kind} {name}" if kind else name

    @staticmethod
    def span(seconds: float) -> str:
        if seconds >= 86_400:
            return f"{seconds / 86_400:.1f} days"
        if seconds >= 3600:
            return f"{seconds / 3600:.1f} h"
        return f"{seconds:.0f} s"

    def seg(self, s: Segment) -> str:
        flags = [
            name
            for name, on in (
                ("lower-bound start", s.start_is_lower_bound),
                ("repaired end", s.end_is_repaired),
                ("gap close", s.gap_close),
                ("approximate size", s.approximate_size),
            )
            if on
        ]
        closed = f" closed by event #{s.closed_by_id}" if s.closed_by_id is not None else ""
        extra = f" [{', '.join(flags)}]" if flags else ""
        return (
            f"segment {self.t(s.start)}..{self.t(s.end)} opened by event #{s.opened_by_id}"
            f"{closed} at {fp_words(s.footprint)}{extra}"
        )


def fp_words(fp: Footprint) -> str:
    if fp.service_plan_guid is not None or fp.instance_count is None:
        return f"plan {fp.service_plan_guid}"
    return f"{fp.instance_count}x{fp.memory_in_mb_per_instance} MB"


def same_footprint(a: Footprint, b: Footprint) -> bool:
    if a.service_plan_guid is not None or b.service_plan_guid is not None:
        return a.service_plan_guid == b.service_plan_guid
    return (a.instance_count or 0, a.memory_in_mb_per_instance or 0) == (
        b.instance_count or 0,
        b.memory_in_mb_per_instance or 0,
    )


# --- I1–I5: a consumer's bills against the truth ---------------------------------------------


@attrs.frozen
class _Piece:
    start: datetime
    end: datetime
    category: str  # uncovered | overbilled | footprint
    segment: Segment | None
    truth: Footprint | None


def _pruned_windows(
    view: ConsumerView, observed: Sequence[RowInfo]
) -> list[tuple[datetime, datetime]]:
    """Time windows whose rows this consumer never read because retention pruned them (C10)."""
    windows: list[tuple[datetime, datetime]] = []
    for finding in view.ledger.findings:
        if finding.code != FindingCode.FELL_BEHIND_RETENTION:
            continue
        # detail: "ids A..B were pruned ..."
        words = finding.detail.split()
        try:
            first, last = (int(x) for x in words[1].split(".."))
        except (IndexError, ValueError):
            continue
        times = [
            aware(r.created_at)
            for r in observed
            if r.table == finding.table and first <= r.id <= last
        ]
        if times:
            windows.append((min(times), max(times)))
    return windows


def pruned_before_read(
    view: ConsumerView, cleanups: Sequence[CleanupObservation]
) -> dict[str, list[RowInfo]]:
    """Per resource, the rows a cleanup deleted before this consumer's cursor reached them:
    the consumer was further behind than the cutoff for that resource (C10, SPEC §4)."""
    missed: dict[str, list[RowInfo]] = {}
    for obs in cleanups:
        after = {(r.table, r.id) for r in obs.after}
        for row in obs.before:
            if (row.table, row.id) in after or row.key is None:
                continue
            read = any(
                m.table == row.table and m.step < obs.end_step and m.position >= row.id
                for m in view.moves
            )
            if not read:
                missed.setdefault(row.key, []).append(row)
    return missed


def excused_windows(
    lost_rows: Sequence[RowInfo], observed: Sequence[RowInfo], horizon: datetime
) -> list[tuple[datetime, datetime]]:
    """The time each row pruned before the consumer read it accounts for: from the row's
    created_at to that of the next row of the same resource (by id) the consumer did read, or
    the horizon when it read none after it. Only the bill inside these windows may differ
    from the truth because of the pruning (C10); elsewhere the consumer had the rows."""
    if not lost_rows:
        return []
    lost = {(r.table, r.id) for r in lost_rows}
    key = lost_rows[0].key
    read = sorted(
        (r for r in observed if r.key == key and (r.table, r.id) not in lost),
        key=lambda r: r.id,
    )
    windows: list[tuple[datetime, datetime]] = []
    for row in lost_rows:
        nxt = next((r for r in read if r.table == row.table and r.id > row.id), None)
        start = aware(row.created_at)
        end = aware(nxt.created_at) if nxt is not None else horizon
        if start < end:
            windows.append((start, end))
    union: list[tuple[datetime, datetime]] = []
    for start, end in sorted(windows):
        if union and start <= union[-1][1]:
            union[-1] = (union[-1][0], max(union[-1][1], end))
        else:
            union.append((start, end))
    return union


def purged_rows(cleanups: Sequence[CleanupObservation]) -> set[tuple[str, int]]:
    """The (table, id) pairs a destructive purge-and-reseed deleted."""
    gone: set[tuple[str, int]] = set()
    for obs in cleanups:
        if obs.variant == "purge":
            gone |= obs.deleted()
    return gone


#: Cleanups in the scenario on purpose (S2), whose damage to start evidence is expected.
_DAMAGING_VARIANTS = {
    "old": (
        "the old cleanup",
        "This is the old cleanup's damage: it deletes the start evidence of running resources "
        "(SPEC §0), which is why it must not outlive the rolling deploy.",
    ),
    "purge": (
        "the purge",
        "This is the destructive purge's damage; run the backfill right after a purge (B9).",
    ),
}
_START_EVIDENCE = frozenset({"TASK_STARTED", "TASK_WAS_RUNNING"})


def stops_lost_to_damage(data: CheckInput, words: Words) -> dict[str, str]:
    """Per task, why no TASK_STOPPED closes it: it ended after the old cleanup or a purge
    deleted its start evidence and before any baseline restored it, so the platform rightly
    wrote none (P2). That open bill is the damage of a cleanup the scenario runs on purpose
    (S2), not a defect of the rules. (Had evidence been on record at the end, I9 reports the
    missing stop.)"""
    damaging = [obs for obs in data.cleanups if obs.variant in _DAMAGING_VARIANTS]
    lost: dict[str, str] = {}
    for ending in data.task_endings:
        if ending.wrote_stop or not ending.was_running:
            continue
        for obs in damaging:
            deleted = [
                r
                for r in obs.before
                if r.key == ending.op.guid
                and r.state in _START_EVIDENCE
                and (r.table, r.id) in obs.deleted()
            ]
            if obs.end_step < ending.op.step and deleted:
                who = words.r(ending.op.guid, "task")
                name, damage = _DAMAGING_VARIANTS[obs.variant]
                lost[ending.op.guid] = (
                    f"{name} by {obs.actor} (step {obs.end_step}) deleted {who}'s "
                    f"#{deleted[0].id} ({deleted[0].state}); {who} ended at "
                    f"{words.t(ending.op.at)}, before a backfill restored its baseline, so the "
                    f"platform wrote no TASK_STOPPED (P2). {damage}"
                )
                break
    return lost


#: Per resource, per id of an opening row: why a bill that row opened stays open although the
#: resource stopped, when that is damage the scenario asked for (S2).
DamagedOpenings = dict[str, dict[int, str]]


def baselines_lost_to_damage(data: CheckInput, words: Words) -> DamagedOpenings:
    """The baselines the old cleanup or a purge deleted while nothing on record had closed
    them: a consumer that read such a baseline (a stale one: its resource had stopped) keeps
    the bill it opened, since the repair can no longer append its ending. The damage of a
    cleanup the scenario runs on purpose (S2)."""
    lost: DamagedOpenings = {}
    for obs in data.cleanups:
        if obs.variant not in _DAMAGING_VARIANTS:
            continue
        name, damage = _DAMAGING_VARIANTS[obs.variant]
        deleted = obs.deleted()
        for row in obs.before:
            lc = lifecycle_of_row(row)
            if (
                row.key is None
                or lc is None
                or row.state != lc.baseline
                or (row.table, row.id) not in deleted
                or row.id in lost.get(row.key, {})
            ):
                continue
            closed = any(
                r.key == row.key
                and r.table == row.table
                and r.id > row.id
                and r.state in lc.endings
                for r in obs.before
            )
            if closed:
                continue
            lost.setdefault(row.key, {})[row.id] = (
                f"{name} by {obs.actor} (step {obs.end_step}) deleted "
                f"{words.r(row.key, row.kind)}'s #{row.id} ({row.state}), the baseline the bill "
                "opened from, before a repair could close it; nothing on record closes it "
                f"since. {damage}"
            )
    return lost


def stops_undone_by_purge(data: CheckInput, words: Words) -> DamagedOpenings:
    """The purge's reseeded STARTED rows that undid a stop. The purge reads the processes
    without locking them (as operators' purges did), so a stop being committed meanwhile is
    read as STARTED: the purge reseeds a STARTED above the stop's STOPPED, which got its id
    first and which the purge's DELETE could not see. On record the process runs again, and
    the repair (B5) closes baselines only. A bill (or an open run) from that STARTED is the
    damage of a purge the scenario runs on purpose (S2), not a defect of the rules."""
    undone: DamagedOpenings = {}
    for obs in data.cleanups:
        if obs.variant != "purge" or obs.crashed:
            continue
        known = {(r.table, r.id) for r in obs.before}
        deleted = obs.deleted()
        for reseed in obs.after:
            # The purge's rows restate a run: STARTED after STARTED (actors.purge_and_reseed).
            if (
                (reseed.table, reseed.id) in known
                or reseed.state != "STARTED"
                or reseed.previous_state != "STARTED"
                or reseed.key is None
            ):
                continue
            below = [
                r
                for r in data.observed
                if r.table == reseed.table
                and r.key == reseed.key
                and r.id < reseed.id
                and (r.table, r.id) not in deleted
                and lifecycle_of_row(r) is not None
            ]
            if not below:
                continue
            stop = max(below, key=lambda r: r.id)
            lc = lifecycle_of_row(stop)
            # Only a stop in flight while the purge ran: one committed before it was deleted.
            if lc is None or stop.state not in lc.endings or stop.visible_step < obs.start_step:
                continue
            who = words.r(reseed.key, reseed.kind)
            undone.setdefault(reseed.key, {})[reseed.id] = (
                f"the purge-and-reseed by {obs.actor} (steps {obs.start_step}–{obs.end_step}) "
                f"read {who} as STARTED while its stop was being committed, and reseeded "
                f"#{reseed.id} STARTED above the stop's #{stop.id} {stop.state}, which its "
                "DELETE could not see: on record it runs again, and the repair closes baselines "
                "only (B5). This is the destructive purge's damage (S2)."
            )
    return undone


def ignored_ending(
    over: Segment, observed: Sequence[RowInfo], missed: Sequence[RowInfo]
) -> RowInfo | None:
    """An ending of `over`'s resource that the consumer read after the row that opened `over`
    and before the one that closed it, if any: C7 closes on the first ending in id order, so a
    bill still running past one is the consumer's fault, whatever damage is around it. A gap
    close (C10) has no closing row: the consumer closed the bill where its cursor was, and an
    ending it read later is one for a CLOSED resource, so such a bill is not judged here."""
    if over.gap_close:
        return None
    unread = {(r.table, r.id) for r in missed}
    upper = over.closed_by_id if over.closed_by_id is not None else float("inf")
    endings = [
        row
        for row in observed
        if row.key == over.guid
        and over.opened_by_id < row.id < upper
        and (lc := lifecycle_of_row(row)) is not None
        and lc.kind == over.kind
        and row.state in lc.endings
        and (row.table, row.id) not in unread
    ]
    return min(endings, key=lambda r: r.id, default=None)


def check_consumer(
    view: ConsumerView,
    truth: Truth,
    observed: Sequence[RowInfo],
    words: Words,
    missed: Mapping[str, Sequence[RowInfo]] | None = None,
    *,
    purged: set[tuple[str, int]] | None = None,
    lost_stops: Mapping[str, str] | None = None,
    damaged_openings: DamagedOpenings | None = None,
) -> list[Finding]:
    missed = missed or {}
    purged = purged or set()
    lost_stops = lost_stops or {}
    damaged_openings = damaged_openings or {}
    horizon = aware(truth.horizon)
    findings: list[Finding] = []
    billed_by: dict[str, list[Segment]] = {}
    for s in view.ledger.segments:
        if s.kind in ("app", "task", "service"):
            billed_by.setdefault(s.guid, []).append(s)
    guids = sorted(set(billed_by) | {s.guid for s in truth.segments})
    pruned = _pruned_windows(view, observed)

    def common(guid: str, kind: str | None) -> dict[str, object]:
        return {"consumer": view.name, "guid": guid, "label": truth.labels.get(guid), "kind": kind}

    for guid in guids:
        billed = sorted(billed_by.get(guid, []), key=lambda s: (aware(s.start), s.opened_by_id))
        true_segments = truth.segments_of(guid)
        kind = truth.kinds.get(guid) or (billed[0].kind if billed else None)
        who = words.r(guid, kind)

        def b_end(s: Segment) -> datetime:
            return aware(s.end) if s.end is not None else horizon

        # I2: two billed segments of one resource overlap.
        for i, a in enumerate(billed):
            for b in billed[i + 1 :]:
                lo = max(aware(a.start), aware(b.start))
                hi = min(b_end(a), b_end(b))
                if lo < hi:
                    findings.append(
                        Finding(
                            "I2",
                            Severity.INVALID,
                            f"{who} is billed twice from {words.t(lo)} to {words.t(hi)}: "
                            f"{words.seg(a)} overlaps {words.seg(b)}.",
                            start=lo,
                            end=hi,
                            size_seconds=(hi - lo).total_seconds(),
                            event_ids=(a.opened_by_id, b.opened_by_id),
                            **common(guid, kind),  # type: ignore[arg-type]
                        )
                    )
        points = {horizon}
        for t in true_segments:
            points.add(aware(t.start))
            points.add(aware(t.end) if t.end is not None else horizon)
        for s in billed:
            points.add(aware(s.start))
            points.add(b_end(s))
        lost_rows = missed.get(guid, ())
        excused = excused_windows(lost_rows, observed, horizon)
        purge_lost = [r for r in lost_rows if (r.table, r.id) in purged]
        by_purge_windows = excused_windows(purge_lost, observed, horizon) if purge_lost else []
        for lo_, hi_ in excused:
            points.update((lo_, hi_))
        ordered = sorted(p for p in points if p <= horizon)
        pieces: list[_Piece] = []
        for lo, hi in itertools.pairwise(ordered):
            true_fp = next(
                (
                    t.footprint
                    for t in true_segments
                    if aware(t.start) <= lo and (t.end is None or lo < aware(t.end))
                ),
                None,
            )
            covering = [s for s in billed if aware(s.start) <= lo < b_end(s)]
            if true_fp is not None and not covering:
                pieces.append(_Piece(lo, hi, "uncovered", None, true_fp))
            for s in covering:
                if true_fp is None:
                    pieces.append(_Piece(lo, hi, "overbilled", s, None))
                elif not same_footprint(s.footprint, true_fp):
                    pieces.append(_Piece(lo, hi, "footprint", s, true_fp))

        def pruned_away(p: _Piece, excused: list[tuple[datetime, datetime]] = excused) -> bool:
            """Whether this stretch of the bill may differ because its rows were pruned before
            the consumer read them. Never a bill still open after the final repair for a
            stopped resource: reading the later rows would have closed it (I3)."""
            if p.category == "overbilled" and p.segment is not None and p.segment.end is None:
                return False
            return p.start >= words.start and any(
                lo_ <= p.start and p.end <= hi_ for lo_, hi_ in excused
            )

        merged: list[_Piece] = []
        for p in pieces:
            last = merged[-1] if merged else None
            if (
                last is not None
                and last.category == p.category
                and last.segment == p.segment
                and last.end == p.start
                and pruned_away(last) == pruned_away(p)
            ):
                merged[-1] = attrs.evolve(last, end=p.end)
            else:
                merged.append(p)
        for p in merged:
            size = (p.end - p.start).total_seconds()
            base = {"start": p.start, "end": p.end, "size_seconds": size, **common(guid, kind)}
            if pruned_away(p):
                ids = tuple(sorted(r.id for r in lost_rows if aware(r.created_at) <= p.end))
                invariant = {"uncovered": "I1", "overbilled": "I3", "footprint": "I5"}[p.category]
                by_purge = any((r.table, r.id) in purged for r in lost_rows)
                findings.append(
                    Finding(
                        invariant,
                        Severity.DEVIATION,
                        f"{who}: from {words.t(p.start)} to {words.t(p.end)} the bill differs "
                        f"from what ran ({p.category}, {words.span(size)}) because "
                        + ("the purge-and-reseed" if by_purge else "cleanup")
                        + f" deleted event(s) #{', #'.join(str(i) for i in ids[:5])} before "
                        f"consumer {view.name} read them"
                        + ("." if by_purge else ": it was further behind than the cutoff (C10)."),
                        deviation="purged before read" if by_purge else "pruned before read",
                        event_ids=ids[:5],
                        **base,  # type: ignore[arg-type]
                    )
                )
                continue
            if p.category == "uncovered":
                after = next((s for s in billed if aware(s.start) == p.end), None)
                before = next((s for s in billed if b_end(s) == p.start), None)
                # Not after a bill that an ending closed: the consumer read that run, and an
                # ending while it ran (a repair that closed a restart) is a lost interval.
                if after is not None and after.start_is_lower_bound and before is None:
                    findings.append(
                        Finding(
                            "I1",
                            Severity.DEVIATION,
                            f"{who} ran from {words.t(p.start)} but is billed only from "
                            f"{words.t(p.end)}: its start was no longer on record and "
                            f"{words.seg(after)} is a lower bound ({words.span(size)} unbilled).",
                            deviation="lower-bound start",
                            event_ids=(after.opened_by_id,),
                            **base,  # type: ignore[arg-type]
                        )
                    )
                elif before is not None and before.gap_close:
                    findings.append(
                        Finding(
                            "I1",
                            Severity.DEVIATION,
                            f"{who} ran on after {words.t(p.start)}, where {words.seg(before)} "
                            f"was closed because its history was pruned (C10).",
                            deviation="gap close",
                            **base,  # type: ignore[arg-type]
                        )
                    )
                elif p.start < words.start:
                    findings.append(
                        Finding(
                            "I1",
                            Severity.DEVIATION,
                            f"{who} ran from {words.t(p.start)}, before the run began, and its "
                            "start had been pruned by the old cleanup; nothing on record covers it "
                            f"until {words.t(p.end)}, so no consumer could bill it.",
                            deviation="start pruned before the run",
                            **base,  # type: ignore[arg-type]
                        )
                    )
                elif any(lo <= p.start and p.end <= hi for lo, hi in pruned):
                    findings.append(
                        Finding(
                            "I1",
                            Severity.DEVIATION,
                            f"{who} ran from {words.t(p.start)} to {words.t(p.end)} while this "
                            "consumer was further behind than the cutoff; retention pruned those "
                            "rows before it read them (C10).",
                            deviation="fell behind retention",
                            **base,  # type: ignore[arg-type]
                        )
                    )
                else:
                    findings.append(
                        Finding(
                            "I1",
                            Severity.INVALID,
                            f"{who} really ran at {fp_words(p.truth or Footprint())} from "
                            f"{words.t(p.start)} to {words.t(p.end)}, but consumer {view.name} "
                            f"billed nothing for it ({words.span(size)} lost)"
                            + (f"; the bill before it is {words.seg(before)}" if before else "")
                            + (f"; the bill after it is {words.seg(after)}" if after else "")
                            + ".",
                            **base,  # type: ignore[arg-type]
                        )
                    )
            elif p.category == "overbilled":
                over = p.segment
                assert over is not None
                ids = (over.opened_by_id,) + ((over.closed_by_id,) if over.closed_by_id else ())
                # Open, and wrong up to the end: it bills forever. An open segment whose
                # over-bill ends where the resource really runs again (a stale baseline,
                # then a restart, billed on, C4) is a bounded over-bill.
                forever = over.end is None and p.end >= horizon
                ignored = ignored_ending(over, observed, lost_rows)
                # Damage the scenario asked for that explains why this bill stays open.
                damage = damaged_openings.get(guid, {}).get(over.opened_by_id)
                if ignored is not None:
                    findings.append(
                        Finding(
                            "I3",
                            Severity.INVALID,
                            f"{who} was not running from {words.t(p.start)} to "
                            f"{words.t(p.end)}, yet consumer {view.name} kept billing "
                            f"{words.seg(over)} past #{ignored.id} ({ignored.state}), which it "
                            "read (C7 closes on the first ending).",
                            event_ids=(*ids, ignored.id),
                            **base,  # type: ignore[arg-type]
                        )
                    )
                elif guid in truth.cancelled_before_running and over.start_is_lower_bound:
                    findings.append(
                        Finding(
                            "I4",
                            Severity.DEVIATION,
                            f"{who} was cancelled while PENDING and never ran, but it was "
                            "CANCELING, which B1 counts as running: a baseline opened "
                            f"{words.seg(over)} ({words.span(size)}). The table cannot tell a "
                            "cancelled pending task from a cancelled running one.",
                            deviation="cancelled before running",
                            event_ids=ids,
                            **base,  # type: ignore[arg-type]
                        )
                    )
                elif not truth.ever_ran(guid):
                    findings.append(
                        Finding(
                            "I4",
                            Severity.INVALID,
                            f"{who} never ran, yet consumer {view.name} billed "
                            f"{words.seg(over)} ({words.span(size)}).",
                            event_ids=ids,
                            **base,  # type: ignore[arg-type]
                        )
                    )
                elif over.end_is_repaired or over.gap_close:
                    reason = "repaired end" if over.end_is_repaired else "gap close"
                    findings.append(
                        Finding(
                            "I3",
                            Severity.DEVIATION,
                            f"{who} stopped by {words.t(p.start)}; {words.seg(over)} kept billing "
                            f"until the {reason} at {words.t(p.end)} ({words.span(size)}).",
                            deviation=f"{reason} after true stop",
                            event_ids=ids,
                            **base,  # type: ignore[arg-type]
                        )
                    )
                elif over.end is None and (lost_stops.get(guid) or damage) is not None:
                    findings.append(
                        Finding(
                            "I3",
                            Severity.EXPECTED,
                            f"{who} is not running since {words.t(p.start)}, but "
                            f"{words.seg(over)} is still open for consumer {view.name}: "
                            f"{lost_stops.get(guid) or damage}",
                            event_ids=ids,
                            **base,  # type: ignore[arg-type]
                        )
                    )
                elif over.end is None and any(
                    lo_ <= p.start and p.end <= hi_ for lo_, hi_ in by_purge_windows
                ):
                    ids = tuple(sorted(r.id for r in purge_lost))[:5]
                    findings.append(
                        Finding(
                            "I3",
                            Severity.EXPECTED,
                            f"{who} is not running since {words.t(p.start)}, but "
                            f"{words.seg(over)} is still open for consumer {view.name}: the "
                            f"purge-and-reseed deleted event(s) #{', #'.join(map(str, ids))} "
                            "before it read them, and nothing on record closes it since. This "
                            "is the destructive purge's damage (S2).",
                            event_ids=ids,
                            **base,  # type: ignore[arg-type]
                        )
                    )
                elif forever:
                    findings.append(
                        Finding(
                            "I3",
                            Severity.INVALID,
                            f"{who} is not running since {words.t(p.start)}, but after the "
                            f"final repair {words.seg(over)} is still open: it bills forever.",
                            event_ids=ids,
                            **base,  # type: ignore[arg-type]
                        )
                    )
                elif over.start_is_lower_bound:
                    findings.append(
                        Finding(
                            "I3",
                            Severity.DEVIATION,
                            f"{who} was not running from {words.t(p.start)} to {words.t(p.end)}"
                            f", but a baseline seeded after its stop opened {words.seg(over)}; the "
                            f"over-bill ended at {words.t(p.end)} ({words.span(size)}).",
                            deviation="baseline after stop",
                            event_ids=ids,
                            **base,  # type: ignore[arg-type]
                        )
                    )
                else:
                    findings.append(
                        Finding(
                            "I4",
                            Severity.INVALID,
                            f"{who} was not running from {words.t(p.start)} to {words.t(p.end)}"
                            f", yet consumer {view.name} billed {words.seg(over)}.",
                            event_ids=ids,
                            **base,  # type: ignore[arg-type]
                        )
                    )
            else:
                wrong = p.segment
                assert wrong is not None and p.truth is not None
                ids = (wrong.opened_by_id,)
                if wrong.approximate_size:
                    findings.append(
                        Finding(
                            "I5",
                            Severity.DEVIATION,
                            f"{who} ran at {fp_words(p.truth)} from {words.t(p.start)} to "
                            f"{words.t(p.end)}; {words.seg(wrong)} is flagged approximate.",
                            deviation="approximate size",
                            event_ids=ids,
                            **base,  # type: ignore[arg-type]
                        )
                    )
                else:
                    findings.append(
                        Finding(
                            "I5",
                            Severity.INVALID,
                            f"{who} ran at {fp_words(p.truth)} from {words.t(p.start)} to "
                            f"{words.t(p.end)}, but consumer {view.name} billed it at "
                            f"{fp_words(wrong.footprint)} in {words.seg(wrong)}.",
                            event_ids=ids,
                            **base,  # type: ignore[arg-type]
                        )
                    )
    return findings


# --- I6: retention safety ----------------------------------------------------------------------


def lifecycle_of_row(row: RowInfo) -> Lifecycle | None:
    for lc in LIFECYCLES:
        if lc.table == row.table and row.state in lc.states:
            return lc
    return None


def _runs(rows: Sequence[RowInfo]) -> list[tuple[list[RowInfo], RowInfo | None]]:
    """One key's rows in id order, cut into runs: openings, then the ending that closes them."""
    runs: list[tuple[list[RowInfo], RowInfo | None]] = []
    openings: list[RowInfo] = []
    for row in sorted(rows, key=lambda r: r.id):
        lc = lifecycle_of_row(row)
        if lc is None:
            continue
        if row.state in lc.endings:
            runs.append((openings, row))
            openings = []
        else:
            openings.append(row)
    if openings:
        runs.append((openings, None))
    return runs


def _by_key(rows: Iterable[RowInfo]) -> dict[tuple[str, str], list[RowInfo]]:
    grouped: dict[tuple[str, str], list[RowInfo]] = {}
    for row in rows:
        if row.kind is not None and row.key is not None and lifecycle_of_row(row) is not None:
            grouped.setdefault((row.kind, row.key), []).append(row)
    return grouped


def check_cleanup(obs: CleanupObservation, words: Words) -> list[Finding]:
    # The old cleanup and the purge are in the scenario on purpose: their damage is expected.
    severity = Severity.EXPECTED if obs.variant in ("old", "purge") else Severity.INVALID
    after_ids = {(r.table, r.id) for r in obs.after}
    union: dict[tuple[str, int], RowInfo] = {(r.table, r.id): r for r in obs.before}
    for r in obs.after:
        union.setdefault((r.table, r.id), r)
    deleted = obs.deleted()
    findings: list[Finding] = []
    what = f"cleanup by {obs.actor} ({obs.variant}{', crashed' if obs.crashed else ''})"
    if obs.variant == "purge":
        what = f"the purge-and-reseed by {obs.actor}"
    for (kind, key), rows in sorted(_by_key(union.values()).items()):
        who = words.r(key, kind)
        runs = _runs(rows)
        if runs and runs[-1][1] is None:
            openings = runs[-1][0]
            for role, row in (("first", openings[0]), ("latest", openings[-1])):
                if (row.table, row.id) in deleted:
                    findings.append(
                        Finding(
                            "I6",
                            severity,
                            f"{what} deleted event #{row.id} ({row.state} at "
                            f"{words.t(row.created_at)}), the {role} opening of the current run of "
                            f"{who}, which is still running per the table: after the cleanup the "
                            f"table no longer says when or at which size it runs.",
                            guid=key,
                            label=words.labels.get(key),
                            kind=kind,
                            start=aware(row.created_at),
                            event_ids=(row.id,),
                        )
                    )
                    if openings[0] is openings[-1]:
                        break
        for openings, ending in runs:
            if ending is None or (ending.table, ending.id) not in deleted:
                continue
            left = [o for o in openings if (o.table, o.id) in after_ids]
            if left:
                findings.append(
                    Finding(
                        "I6",
                        severity,
                        f"{what} deleted ending #{ending.id} ({ending.state}) of {who} while its "
                        f"opening #{left[0].id} ({left[0].state} at "
                        f"{words.t(left[0].created_at)}) remains: the table now says {who} "
                        "is running.",
                        guid=key,
                        label=words.labels.get(key),
                        kind=kind,
                        start=aware(left[0].created_at),
                        event_ids=(ending.id, left[0].id),
                    )
                )
    return findings


# --- I7: the backfill fixpoint ------------------------------------------------------------------


def open_on_record(rows: Iterable[RowInfo]) -> dict[tuple[str, str], RowInfo]:
    """Resources whose last lifecycle row (by id) is an opening, with that row."""
    result: dict[tuple[str, str], RowInfo] = {}
    for rid, key_rows in _by_key(rows).items():
        last = max(key_rows, key=lambda r: r.id)
        lc = lifecycle_of_row(last)
        if lc is not None and last.state in lc.openings:
            result[rid] = last
    return result


def check_fixpoint(
    data: CheckInput, words: Words, damaged: DamagedOpenings | None = None
) -> list[Finding]:
    """I7, with `damaged`: opening rows that damage the scenario asked for left last on
    record for a resource that stopped (their explanation), reported as expected."""
    damaged = damaged or {}
    findings: list[Finding] = []
    if len(data.final_backfills_added) >= 2 and data.final_backfills_added[1] != 0:
        findings.append(
            Finding(
                "I7",
                Severity.INVALID,
                f"a backfill right after a completed one added {data.final_backfills_added[1]} "
                "rows; a second run must add none (B7).",
            )
        )
    on_record = open_on_record(data.final_rows)
    open_keys = {key for (_, key) in on_record}
    for guid in sorted(data.truth.running_at_end):
        if guid not in open_keys:
            kind = data.truth.kinds.get(guid)
            findings.append(
                Finding(
                    "I7",
                    Severity.INVALID,
                    f"{words.r(guid, kind)} is running, but after the final backfill the table "
                    "has no open run for it: a consumer starting now would never bill it.",
                    guid=guid,
                    label=data.truth.labels.get(guid),
                    kind=kind,
                )
            )
    for (kind, key), row in sorted(on_record.items()):
        # A task still CANCELING that never ran is running as far as B1 can tell.
        if key not in data.truth.running_at_end and key not in data.truth.canceling_at_end:
            findings.append(
                Finding(
                    "I7",
                    Severity.EXPECTED if row.id in damaged.get(key, {}) else Severity.INVALID,
                    f"{words.r(key, kind)} is not running, but after the final backfill its last "
                    f"event is #{row.id} ({row.state} at {words.t(row.created_at)}) with no "
                    "ending after it: "
                    + damaged.get(key, {}).get(row.id, "the repair did not close it."),
                    guid=key,
                    label=data.truth.labels.get(key),
                    kind=kind,
                    event_ids=(row.id,),
                )
            )
    return findings


# --- I8: the backfill lock ----------------------------------------------------------------------


def check_lock(holds: Sequence[LockHold]) -> list[Finding]:
    findings = []
    ordered = sorted(holds, key=lambda h: (h.acquired_step, h.actor))
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            if b.acquired_step < a.released_step and a.acquired_step < b.released_step:
                findings.append(
                    Finding(
                        "I8",
                        Severity.INVALID,
                        f"{a.actor} held the backfill lock from step {a.acquired_step} to "
                        f"{a.released_step} and {b.actor} took it at step {b.acquired_step}: "
                        "two backfills at once (B8).",
                    )
                )
    return findings


# --- I9: the task stop gate ---------------------------------------------------------------------


def check_task_stops(data: CheckInput, words: Words) -> list[Finding]:
    findings: list[Finding] = []
    task_rows = [r for r in data.observed if r.kind == TASK.kind and r.key is not None]
    by_task: dict[str, list[RowInfo]] = {}
    for r in task_rows:
        by_task.setdefault(str(r.key), []).append(r)
    deleted_window: dict[tuple[str, int], tuple[int, int]] = {}
    for obs in data.cleanups:
        after = {(r.table, r.id) for r in obs.after}
        for r in obs.before:
            if (r.table, r.id) not in after:
                deleted_window.setdefault((r.table, r.id), (obs.start_step, obs.end_step))
    for task, rows in sorted(by_task.items()):
        who = words.r(task, "task")
        for stop in sorted((r for r in rows if r.state in TASK.endings), key=lambda r: r.id):
            if stop.previous_state == TASK.baseline:
                continue  # a repair (B5), not a producer stop
            evidence = [r for r in rows if r.state in TASK.openings and r.id < stop.id]
            if not evidence:
                findings.append(
                    Finding(
                        "I9",
                        Severity.INVALID,
                        f"TASK_STOPPED #{stop.id} for {who} at {words.t(stop.created_at)} was "
                        "written although no TASK_STARTED or TASK_WAS_RUNNING for it was ever on "
                        "record (P2).",
                        guid=task,
                        label=words.labels.get(task),
                        kind="task",
                        start=aware(stop.created_at),
                        event_ids=(stop.id,),
                    )
                )
    for ending in data.task_endings:
        if ending.wrote_stop or not ending.was_running:
            continue
        rows = by_task.get(ending.op.guid, [])
        stopped_before = [
            r for r in rows if r.state in TASK.endings and r.visible_step < ending.start_step
        ]
        present = []
        for r in rows:
            if r.state not in TASK.openings or r.visible_step >= ending.start_step:
                continue
            window = deleted_window.get((r.table, r.id))
            if window is not None and window[0] <= ending.op.step:
                continue
            present.append(r)
        if present and not stopped_before:
            findings.append(
                Finding(
                    "I9",
                    Severity.INVALID,
                    f"{ending.op.op} of running {who_of(words, ending.op.guid)} at "
                    f"{words.t(ending.op.at)} wrote no TASK_STOPPED although #{present[0].id} "
                    f"({present[0].state}) was on record: the task would bill forever (P2).",
                    guid=ending.op.guid,
                    label=words.labels.get(ending.op.guid),
                    kind="task",
                    start=aware(ending.op.at),
                    event_ids=(present[0].id,),
                )
            )
    return findings


def who_of(words: Words, guid: str) -> str:
    return words.r(guid, "task")


# --- I10: rows visible below a cursor -------------------------------------------------------------


def check_visibility(
    view: ConsumerView, observed: Sequence[RowInfo], words: Words
) -> list[Finding]:
    findings: list[Finding] = []
    moves_by_table: dict[str, list[CursorMove]] = {}
    for m in view.moves:
        moves_by_table.setdefault(m.table, []).append(m)
    for row in sorted(observed, key=lambda r: (r.table, r.id)):
        moves = moves_by_table.get(row.table, [])
        passed = next(
            (m for m in moves if m.step < row.visible_step and m.position >= row.id), None
        )
        if passed is not None:
            findings.append(
                Finding(
                    "I10",
                    Severity.INVALID,
                    f"event #{row.id} ({row.state} of {words.r(row.key, row.kind)}) committed at "
                    f"step {row.visible_step}, after consumer {view.name} had moved its "
                    f"{row.table} cursor to {passed.position} at step {passed.step}: it will "
                    "never read it.",
                    consumer=view.name,
                    guid=row.key,
                    label=words.labels.get(row.key or ""),
                    kind=row.kind,
                    start=aware(row.created_at),
                    event_ids=(row.id,),
                )
            )
    return findings


# --- the whole check ----------------------------------------------------------------------------


def _replayable_order(f: Finding) -> tuple[Any, ...]:
    return (
        f.invariant,
        f.consumer or "",
        f.kind or "",
        f.label or "",
        f.start.timestamp() if f.start is not None else float("-inf"),
        f.end.timestamp() if f.end is not None else float("-inf"),
        f.event_ids,
        f.deviation,
    )


def check(data: CheckInput) -> CheckReport:
    """Run every invariant; the verdict is invalid if any finding is, unknown if the outcome
    could not be resolved (a consumer not drained, a stuck schedule), valid otherwise."""
    words = Words(aware(data.start), data.truth.labels)
    findings: list[Finding] = []
    unknown: dict[str, str] = {}
    purged = purged_rows(data.cleanups)
    # Why a resource's bill stays open although it stopped: damage the scenario asked for.
    lost_stops = stops_lost_to_damage(data, words)
    undone = stops_undone_by_purge(data, words)
    damaged_openings = baselines_lost_to_damage(data, words)
    for key, rows in undone.items():
        damaged_openings.setdefault(key, {}).update(rows)
    for view in data.consumers:
        if not view.drained:
            for inv in CONSUMER_INVARIANTS:
                unknown[inv] = f"consumer {view.name} was not drained"
        missed = pruned_before_read(view, data.cleanups)
        findings += check_consumer(
            view,
            data.truth,
            data.observed,
            words,
            missed,
            purged=purged,
            lost_stops=lost_stops,
            damaged_openings=damaged_openings,
        )
        findings += check_visibility(view, data.observed, words)
    for obs in data.cleanups:
        findings += check_cleanup(obs, words)
    findings += check_fixpoint(data, words, undone)
    findings += check_lock(data.lock_holds)
    findings += check_task_stops(data, words)
    if data.outcome_unknown:
        for inv in INVARIANTS:
            unknown.setdefault(inv, data.outcome_unknown)
    # The checks walk resources by guid, which is a fresh UUID on every run: order the
    # findings by what a replay reproduces (S1), the resource's label, times and event ids.
    findings.sort(key=_replayable_order)
    results = []
    for inv in INVARIANTS:
        mine = [f for f in findings if f.invariant == inv]
        invalid = sum(1 for f in mine if f.severity is Severity.INVALID)
        if invalid:
            verdict = Verdict.INVALID
        elif inv in unknown:
            verdict = Verdict.UNKNOWN
        else:
            verdict = Verdict.VALID
        results.append(
            InvariantResult(
                invariant=inv,
                verdict=verdict,
                invalid=invalid,
                deviations=sum(1 for f in mine if f.severity is Severity.DEVIATION),
                expected=sum(1 for f in mine if f.severity is Severity.EXPECTED),
                note=unknown.get(inv, ""),
            )
        )
    if any(r.verdict is Verdict.INVALID for r in results):
        overall = Verdict.INVALID
    elif any(r.verdict is Verdict.UNKNOWN for r in results):
        overall = Verdict.UNKNOWN
    else:
        overall = Verdict.VALID
    return CheckReport(overall, tuple(results), tuple(findings))


def total_seconds(findings: Iterable[Finding]) -> float:
    return sum(f.size_seconds for f in findings)


ZERO = timedelta(0)
