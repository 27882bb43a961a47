"""The billing state machine (SPEC C3–C9, C11, C13): pure Python over plain values.

Events go in (`UsageEvent`), billed `Segment`s and `Finding`s come out. Nothing here touches a
database, so the forward reader, the ledger store, `reconstruct current-state` and the
simulator's checker all share exactly one definition of how usage events become bills:
`transition`. The forward reader runs it through `RowFold` (at the end), which writes out its
three everyday cases over row tuples for speed and is tested to give the same ledger.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

import attrs

from usageledger.lifecycles import (
    APP_USAGE_EVENTS,
    LIFECYCLES,
    SERVICE_USAGE_EVENTS,
    AppEventState,
    Lifecycle,
    ServiceEventState,
    known_states,
    lifecycles_of,
)

#: The pseudo-kind of staging intervals (C13); staging belongs to no lifecycle (SPEC §2).
STAGING = "staging"

#: States that restate a run with a new size when seen while OPEN (C4). STARTED counts only with
#: previous_state STARTED; UPDATED always.
RESIZE_STATES: dict[str, frozenset[str]] = {
    APP_USAGE_EVENTS: frozenset({AppEventState.STARTED.value}),
    SERVICE_USAGE_EVENTS: frozenset({ServiceEventState.UPDATED.value}),
}
STAGING_STATES = frozenset(
    {AppEventState.STAGING_STARTED.value, AppEventState.STAGING_STOPPED.value}
)
IGNORED_STATES = frozenset({AppEventState.BUILDPACK_SET.value})  # C13

#: (table, state) -> the lifecycle the state belongs to, read once from the lifecycle table.
_LIFECYCLE_OF_STATE: dict[tuple[str, str], Lifecycle] = {
    (lc.table, state): lc for lc in LIFECYCLES for state in lc.states
}


class Role(StrEnum):
    """What an event means to the consumer (C4, C11, C13)."""

    START = "start"  # a real start: STARTED (previous_state ≠ STARTED), TASK_STARTED, CREATED
    BASELINE = "baseline"  # WAS_RUNNING, TASK_WAS_RUNNING (C5)
    RESIZE = "resize"  # STARTED with previous_state STARTED, UPDATED (C6, C8)
    ENDING = "ending"  # STOPPED, TASK_STOPPED, DELETED (C7)
    STAGING_START = "staging_start"
    STAGING_STOP = "staging_stop"
    IGNORED = "ignored"  # BUILDPACK_SET (C13)
    UNKNOWN = "unknown"  # quarantined (C11)


class FindingCode(StrEnum):
    """Kinds of things the consumer reports instead of billing (C7, C11, C6, C5, C10)."""

    DUPLICATE_ENDING = "duplicate_ending"  # an ending for a resource already CLOSED (C7)
    ORPHAN_ENDING = "orphan_ending"  # an ending for a resource never seen open (C7)
    MISSED_START = "missed_start"  # a resize for a CLOSED resource (C6)
    QUARANTINED_STATE = "quarantined_state"  # an unknown state (C11)
    MISSING_KEY = "missing_key"  # a lifecycle row without its resource key (C11)
    FOOTPRINT_MISMATCH = "footprint_mismatch"  # previous_* disagree with the open footprint
    BASELINE_RESIZE = "baseline_resize"  # a baseline restated a different size (C5)
    FELL_BEHIND_RETENTION = "fell_behind_retention"  # C10, with the gap bounds in detail
    GAP_CLOSE = "gap_close"  # an OPEN resource closed because its history was pruned (C10)
    MISSED_ENDING = "missed_ending"  # a real start for a resource already OPEN (C4)


@attrs.frozen(kw_only=True)
class UsageEvent:
    """One row of `app_usage_events` or `service_usage_events`, as the consumer needs it.

    Fields mirror the table columns; columns a table does not have keep their defaults.
    `kind`, `key` and `role` are derived from `table` and `state`, via the lifecycle table.
    """

    table: str
    id: int
    guid: str
    created_at: datetime
    state: str
    app_guid: str = ""
    app_name: str = ""
    task_guid: str | None = None
    task_name: str | None = None
    parent_app_guid: str | None = None
    package_guid: str | None = None
    instance_count: int = 0
    memory_in_mb_per_instance: int = 0
    previous_state: str | None = None
    previous_instance_count: int | None = None
    previous_memory_in_mb_per_instance: int | None = None
    service_instance_guid: str = ""
    service_instance_name: str = ""
    service_plan_guid: str | None = None
    space_guid: str = ""
    org_guid: str = ""

    @property
    def lifecycle(self) -> Lifecycle | None:
        return meaning_of(self).lifecycle

    @property
    def kind(self) -> str | None:
        """`app`, `task`, `service`, `staging`, or None for ignored and unknown states."""
        return meaning_of(self).kind

    @property
    def key(self) -> str | None:
        """The resource key: process, task or service instance guid; for staging (C13)
        `parent_app_guid/package_guid`. None when the row lacks it."""
        return key_of(self, meaning_of(self))

    @property
    def role(self) -> Role:
        return meaning_of(self).role

    @property
    def name(self) -> str:
        if self.table == SERVICE_USAGE_EVENTS:
            return self.service_instance_name
        if meaning_of(self).kind == "task":
            return self.task_name or ""
        return self.app_name

    @property
    def footprint(self) -> Footprint:
        """What this event says the resource costs now (C8)."""
        if self.table == SERVICE_USAGE_EVENTS:
            return Footprint(service_plan_guid=self.service_plan_guid)
        return Footprint(
            instance_count=self.instance_count,
            memory_in_mb_per_instance=self.memory_in_mb_per_instance,
        )


@attrs.frozen
class Meaning:
    """What an event's (table, state, previous_state) mean, independent of its resource:
    worked out once per combination and cached, as the consumer asks for every event."""

    lifecycle: Lifecycle | None
    kind: str | None
    role: Role


def _work_out_meaning(table: str, state: str, restated: bool) -> Meaning:
    """The rules of C4, C11 and C13 for one (table, state); `restated` is previous_state ==
    state, which turns an app STARTED into a resize (C6, C8)."""
    lc = _LIFECYCLE_OF_STATE.get((table, state))
    if lc is not None:
        if state in lc.endings:
            role = Role.ENDING
        elif state == lc.baseline:
            role = Role.BASELINE
        elif state in RESIZE_STATES.get(table, ()) and (table == SERVICE_USAGE_EVENTS or restated):
            role = Role.RESIZE
        else:
            role = Role.START
        return Meaning(lc, lc.kind, role)
    if table == APP_USAGE_EVENTS:
        if state == AppEventState.STAGING_STARTED:
            return Meaning(None, STAGING, Role.STAGING_START)
        if state == AppEventState.STAGING_STOPPED:
            return Meaning(None, STAGING, Role.STAGING_STOP)
        if state in IGNORED_STATES:
            return Meaning(None, None, Role.IGNORED)
    return Meaning(None, None, Role.UNKNOWN)


#: Every known (table, state, restated) worked out once at import; unknown states are worked
#: out on each call (they are quarantined, C11, and rare).
_MEANINGS: dict[tuple[str, str, bool], Meaning] = {
    (table, state, restated): _work_out_meaning(table, state, restated)
    for table in (APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS)
    for state in known_states(table)
    for restated in (False, True)
}


def meaning_of(event: UsageEvent) -> Meaning:
    """The event's lifecycle, kind and role."""
    return _meaning(event.table, event.state, event.previous_state)


def _meaning(table: str, state: str, previous_state: str | None) -> Meaning:
    index = (table, state, previous_state == state)
    found = _MEANINGS.get(index)
    return found if found is not None else _work_out_meaning(*index)


def role_of(table: str, state: str, previous_state: str | None) -> Role:
    """What a row with this state and previous_state means to the consumer (C4)."""
    return _meaning(table, state, previous_state).role


def key_of(event: UsageEvent, meaning: Meaning) -> str | None:
    """The event's resource key given its meaning (see `UsageEvent.key`)."""
    lc = meaning.lifecycle
    if lc is not None:
        value = getattr(event, lc.key_column)
        return value if isinstance(value, str) else None
    if meaning.kind == STAGING:
        if event.parent_app_guid is None or event.package_guid is None:
            return None
        return staging_key(event.parent_app_guid, event.package_guid)
    return None


def staging_key(parent_app_guid: str, package_guid: str) -> str:
    """The key of a staging interval (C13)."""
    return f"{parent_app_guid}/{package_guid}"


def start_is_lower_bound(event: UsageEvent) -> bool:
    """Whether a run opened by `event` starts at a lower bound (C5 baseline, C6 resize)."""
    return event.role in (Role.BASELINE, Role.RESIZE)


@attrs.frozen(kw_only=True)
class Footprint:
    """What a resource costs per unit of time: instances × memory, or a service plan (C8)."""

    instance_count: int | None = None
    memory_in_mb_per_instance: int | None = None
    service_plan_guid: str | None = None


@attrs.frozen(kw_only=True)
class Segment:
    """One billed interval of one resource at one footprint, with its provenance (C9).

    `end` is None while the segment is open. `closed_by_*` is None for an open segment and for a
    gap close (C10). Flags: `start_is_lower_bound` (opened by a baseline or by a resize for a
    CLOSED resource, C5/C6), `end_is_repaired` (closed by a backfill repair, C7), `gap_close`
    (closed because the history was pruned, C10), `approximate_size` (the footprint changed at an
    unknown moment around this segment: a baseline restating a different size, or previous_*
    fields disagreeing with what was billed).
    """

    kind: str
    guid: str
    start: datetime
    end: datetime | None
    footprint: Footprint
    opened_by_id: int
    opened_by_guid: str
    closed_by_id: int | None = None
    closed_by_guid: str | None = None
    start_is_lower_bound: bool = False
    end_is_repaired: bool = False
    gap_close: bool = False
    approximate_size: bool = False
    name: str = ""
    space_guid: str = ""
    org_guid: str = ""

    @property
    def is_open(self) -> bool:
        return self.end is None


@attrs.frozen(kw_only=True)
class Finding:
    """Something the consumer noticed and did not bill (C7, C11) or billed with a caveat."""

    code: FindingCode
    table: str
    event_id: int | None
    event_guid: str | None
    kind: str | None
    guid: str | None
    state: str | None
    detail: str = ""


@attrs.frozen(kw_only=True)
class ResourceState:
    """What the consumer keeps per resource (C3): CLOSED, or OPEN with run and segment starts.

    `run_*` describe the current run (the first opening after the last ending: what
    current-state reports, CS1); `segment_*` describe the open segment, which a resize replaces
    (C8). `ever_opened` separates a duplicate ending from an orphan one (C7). `last_end` is where
    the resource's last segment ended: a later run never starts before it, so that one resource's
    segments never overlap even when created_at disagrees with id order.
    """

    kind: str
    guid: str
    is_open: bool
    ever_opened: bool
    last_event_id: int
    run_start: datetime | None = None
    run_start_is_lower_bound: bool = False
    run_opened_by_id: int | None = None
    run_opened_by_guid: str | None = None
    segment_start: datetime | None = None
    segment_start_is_lower_bound: bool = False
    segment_opened_by_id: int | None = None
    segment_opened_by_guid: str | None = None
    segment_approximate_size: bool = False
    footprint: Footprint = Footprint()
    name: str = ""
    space_guid: str = ""
    org_guid: str = ""
    last_end: datetime | None = None

    def open_segment(self) -> Segment | None:
        """The segment being billed now, with `end` None; None when CLOSED."""
        if not self.is_open:
            return None
        assert self.segment_start is not None and self.segment_opened_by_id is not None
        return Segment(
            kind=self.kind,
            guid=self.guid,
            start=self.segment_start,
            end=None,
            footprint=self.footprint,
            opened_by_id=self.segment_opened_by_id,
            opened_by_guid=self.segment_opened_by_guid or "",
            start_is_lower_bound=self.segment_start_is_lower_bound,
            approximate_size=self.segment_approximate_size,
            name=self.name,
            space_guid=self.space_guid,
            org_guid=self.org_guid,
        )

    def closed_segment(
        self,
        end: datetime,
        *,
        closed_by: UsageEvent | None,
        repaired: bool = False,
        gap_close: bool = False,
        approximate_size: bool = False,
    ) -> Segment:
        """The open segment, closed at max(end, segment start) (C7)."""
        assert self.is_open
        assert self.segment_start is not None and self.segment_opened_by_id is not None
        # Built directly rather than by evolving `open_segment()`: the consumer closes a
        # segment for every ending and resize, and attrs.evolve costs several times more.
        return Segment(
            kind=self.kind,
            guid=self.guid,
            start=self.segment_start,
            end=end if end > self.segment_start else self.segment_start,
            footprint=self.footprint,
            opened_by_id=self.segment_opened_by_id,
            opened_by_guid=self.segment_opened_by_guid or "",
            closed_by_id=closed_by.id if closed_by is not None else None,
            closed_by_guid=closed_by.guid if closed_by is not None else None,
            start_is_lower_bound=self.segment_start_is_lower_bound,
            end_is_repaired=repaired,
            gap_close=gap_close,
            approximate_size=self.segment_approximate_size or approximate_size,
            name=self.name,
            space_guid=self.space_guid,
            org_guid=self.org_guid,
        )

    def seen(self, event_id: int) -> ResourceState:
        """The same state with `last_event_id` moved to `event_id` (an event that changes
        nothing else: a duplicate ending, a restated staging start)."""
        return ResourceState(
            kind=self.kind,
            guid=self.guid,
            is_open=self.is_open,
            ever_opened=self.ever_opened,
            last_event_id=event_id,
            run_start=self.run_start,
            run_start_is_lower_bound=self.run_start_is_lower_bound,
            run_opened_by_id=self.run_opened_by_id,
            run_opened_by_guid=self.run_opened_by_guid,
            segment_start=self.segment_start,
            segment_start_is_lower_bound=self.segment_start_is_lower_bound,
            segment_opened_by_id=self.segment_opened_by_id,
            segment_opened_by_guid=self.segment_opened_by_guid,
            segment_approximate_size=self.segment_approximate_size,
            footprint=self.footprint,
            name=self.name,
            space_guid=self.space_guid,
            org_guid=self.org_guid,
            last_end=self.last_end,
        )


@attrs.frozen
class Step:
    """What applying one event produced: segments it closed, findings, the resource's new state
    (None when the event touches no resource: ignored, quarantined or keyless)."""

    closed: tuple[Segment, ...]
    findings: tuple[Finding, ...]
    state: ResourceState | None


ResourceId = tuple[str, str]
"""(kind, guid) of a resource, the key of the consumer's per-resource state."""


def _finding(code: FindingCode, event: UsageEvent, detail: str = "") -> Finding:
    meaning = meaning_of(event)
    return Finding(
        code=code,
        table=event.table,
        event_id=event.id,
        event_guid=event.guid,
        kind=meaning.kind,
        guid=key_of(event, meaning),
        state=event.state,
        detail=detail,
    )


def _opened(
    event: UsageEvent,
    *,
    kind: str,
    guid: str,
    lower_bound: bool,
    before: ResourceState | None,
) -> ResourceState:
    last_end = before.last_end if before is not None else None
    start = max(event.created_at, last_end) if last_end is not None else event.created_at
    return ResourceState(
        kind=kind,
        guid=guid,
        is_open=True,
        ever_opened=True,
        last_event_id=event.id,
        run_start=event.created_at,
        run_start_is_lower_bound=lower_bound,
        run_opened_by_id=event.id,
        run_opened_by_guid=event.guid,
        segment_start=start,
        segment_start_is_lower_bound=lower_bound,
        segment_opened_by_id=event.id,
        segment_opened_by_guid=event.guid,
        footprint=event.footprint,
        name=event.name,
        space_guid=event.space_guid,
        org_guid=event.org_guid,
        last_end=last_end,
    )


def _previous_footprint_disagrees(event: UsageEvent, state: ResourceState) -> bool:
    """Whether an app row's previous_* contradict the footprint being billed (a missed resize)."""
    if meaning_of(event).kind != "app":
        return False
    if event.previous_instance_count is None or event.previous_memory_in_mb_per_instance is None:
        return False
    return (
        event.previous_instance_count != state.footprint.instance_count
        or event.previous_memory_in_mb_per_instance != state.footprint.memory_in_mb_per_instance
    )


def _footprint_of(event: UsageEvent, state: ResourceState) -> Footprint:
    """`event.footprint`, reusing the state's own value when they are equal (most restatements),
    so an unchanged resource keeps one Footprint object."""
    footprint = state.footprint
    if event.table == SERVICE_USAGE_EVENTS:
        same = (
            footprint.service_plan_guid == event.service_plan_guid
            and footprint.instance_count is None
            and footprint.memory_in_mb_per_instance is None
        )
    else:
        same = (
            footprint.instance_count == event.instance_count
            and footprint.memory_in_mb_per_instance == event.memory_in_mb_per_instance
            and footprint.service_plan_guid is None
        )
    return footprint if same else event.footprint


def transition(state: ResourceState | None, event: UsageEvent) -> Step:
    """Apply one event to its resource's state (None = never seen). The heart of C3–C9, C13.

    Events of one resource must arrive in id order; `created_at` never decides order.
    """
    meaning = meaning_of(event)
    role = meaning.role
    if role is Role.IGNORED:
        return Step((), (), None)
    if role is Role.UNKNOWN:  # C11: quarantined, reported, never fatal
        return Step((), (_finding(FindingCode.QUARANTINED_STATE, event),), None)
    kind, guid = meaning.kind, key_of(event, meaning)
    if kind is None or guid is None:
        return Step((), (_finding(FindingCode.MISSING_KEY, event),), None)

    if role is Role.ENDING or role is Role.STAGING_STOP:
        if state is None or not state.is_open:
            code = (
                FindingCode.DUPLICATE_ENDING
                if state is not None and state.ever_opened
                else FindingCode.ORPHAN_ENDING
            )
            # C7: counted and ignored; never a negative amount.
            after = (
                state.seen(event.id)
                if state is not None
                else ResourceState(
                    kind=kind, guid=guid, is_open=False, ever_opened=False, last_event_id=event.id
                )
            )
            return Step((), (_finding(code, event),), after)
        findings: tuple[Finding, ...] = ()
        mismatch = _previous_footprint_disagrees(event, state)
        if mismatch:
            findings = (_finding(FindingCode.FOOTPRINT_MISMATCH, event, "at ending"),)
        lc = meaning.lifecycle
        repaired = (
            lc is not None
            and event.previous_state is not None
            and event.previous_state == lc.baseline
        )
        segment = state.closed_segment(
            event.created_at, closed_by=event, repaired=repaired, approximate_size=mismatch
        )
        closed = ResourceState(
            kind=kind,
            guid=guid,
            is_open=False,
            ever_opened=True,
            last_event_id=event.id,
            last_end=segment.end,
        )
        return Step((segment,), findings, closed)

    if role is Role.STAGING_START:
        if state is not None and state.is_open:
            # A restated staging start changes nothing: the interval is already running.
            return Step((), (), state.seen(event.id))
        return Step((), (), _opened(event, kind=kind, guid=guid, lower_bound=False, before=state))

    # Openings: START, BASELINE, RESIZE.
    if state is None or not state.is_open:
        lower_bound = role is Role.BASELINE or role is Role.RESIZE  # C5, C6
        missed = (
            (_finding(FindingCode.MISSED_START, event, "opened at the resize, lower bound"),)
            if role is Role.RESIZE
            else ()
        )
        return Step(
            (),
            missed,
            _opened(event, kind=kind, guid=guid, lower_bound=lower_bound, before=state),
        )

    # The resource is OPEN: this event restates the run. C5: a baseline never opens a second
    # segment; any opening only resizes (C8) when the footprint differs.
    new_footprint = _footprint_of(event, state)
    mismatch = role is Role.RESIZE and _previous_footprint_disagrees(event, state)
    findings_list: list[Finding] = []
    if role is Role.START and (meaning.kind != "app" or event.previous_state is not None):
        # A real start says the resource was not running: its ending was never read (pruned
        # unread, or behind a gap the cursor passed). When it stopped is unknown, so the run
        # goes on as one (an over-bill bounded by this event), and the finding says so. A
        # legacy STARTED without previous_state may be a scale: no finding.
        findings_list.append(
            _finding(FindingCode.MISSED_ENDING, event, "a real start while open; billed on")
        )
    if mismatch:
        findings_list.append(_finding(FindingCode.FOOTPRINT_MISMATCH, event, "at resize"))
    if new_footprint is state.footprint:
        segment_start = state.segment_start
        segment_start_is_lower_bound = state.segment_start_is_lower_bound
        segment_opened_by_id = state.segment_opened_by_id
        segment_opened_by_guid = state.segment_opened_by_guid
        segment_approximate_size = state.segment_approximate_size
        closed_segments: tuple[Segment, ...] = ()
    else:
        approximate = role is Role.BASELINE or mismatch
        if role is Role.BASELINE:
            findings_list.append(_finding(FindingCode.BASELINE_RESIZE, event))
        segment = state.closed_segment(
            event.created_at, closed_by=event, approximate_size=approximate
        )
        # C7/C8: the new segment starts where the old one ended, never before it.
        assert segment.end is not None
        segment_start = segment.end
        segment_start_is_lower_bound = False
        segment_opened_by_id = event.id
        segment_opened_by_guid = event.guid
        segment_approximate_size = approximate
        closed_segments = (segment,)
    restated = ResourceState(
        kind=state.kind,
        guid=state.guid,
        is_open=state.is_open,
        ever_opened=state.ever_opened,
        last_event_id=event.id,
        run_start=state.run_start,
        run_start_is_lower_bound=state.run_start_is_lower_bound,
        run_opened_by_id=state.run_opened_by_id,
        run_opened_by_guid=state.run_opened_by_guid,
        segment_start=segment_start,
        segment_start_is_lower_bound=segment_start_is_lower_bound,
        segment_opened_by_id=segment_opened_by_id,
        segment_opened_by_guid=segment_opened_by_guid,
        segment_approximate_size=segment_approximate_size,
        footprint=new_footprint,
        name=event.name,
        space_guid=event.space_guid,
        org_guid=event.org_guid,
        last_end=state.last_end,
    )
    return Step(closed_segments, tuple(findings_list), restated)


def gap_close(state: ResourceState, at: datetime) -> Step:
    """Close an OPEN resource whose opening and ending were both pruned (C10), flagged."""
    segment = state.closed_segment(at, closed_by=None, gap_close=True)
    finding = Finding(
        code=FindingCode.GAP_CLOSE,
        table=table_of_kind(state.kind),
        event_id=None,
        event_guid=None,
        kind=state.kind,
        guid=state.guid,
        state=None,
        detail=f"closed at {segment.end.isoformat() if segment.end else at.isoformat()}",
    )
    closed = ResourceState(
        kind=state.kind,
        guid=state.guid,
        is_open=False,
        ever_opened=True,
        last_event_id=state.last_event_id,
        last_end=segment.end,
    )
    return Step((segment,), (finding,), closed)


def table_of_kind(kind: str) -> str:
    for table in (APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS):
        if any(lc.kind == kind for lc in lifecycles_of(table)):
            return table
    if kind == STAGING:
        return APP_USAGE_EVENTS
    raise KeyError(kind)


class BillingStateMachine:
    """Per-resource states plus everything produced so far; feed events with `apply`.

    Start it from the states of the resources a batch touches (the ledger store does that) or
    empty (the fold). Not thread-safe; one machine per consumer run.
    """

    def __init__(self, states: Mapping[ResourceId, ResourceState] | None = None) -> None:
        self.states: dict[ResourceId, ResourceState] = dict(states or {})
        self.closed: list[Segment] = []
        self.findings: list[Finding] = []
        self.touched: set[ResourceId] = set()

    def apply(self, event: UsageEvent) -> Step:
        meaning = meaning_of(event)
        kind, guid = meaning.kind, key_of(event, meaning)
        state = self.states.get((kind, guid)) if kind is not None and guid is not None else None
        # Looked up on the module at each call, so that the simulator's mutants can replace it.
        step = transition(state, event)
        self._record(step)
        return step

    def close_for_gap(self, rid: ResourceId, at: datetime) -> Step:
        step = gap_close(self.states[rid], at)
        self._record(step)
        return step

    def _record(self, step: Step) -> None:
        if step.closed:
            self.closed.extend(step.closed)
        if step.findings:
            self.findings.extend(step.findings)
        if step.state is not None:
            rid = (step.state.kind, step.state.guid)
            self.states[rid] = step.state
            self.touched.add(rid)

    def ledger(self) -> Ledger:
        return Ledger(
            segments=tuple(self.closed)
            + tuple(
                s
                for _, state in sorted(self.states.items())
                if (s := state.open_segment()) is not None
            ),
            findings=tuple(self.findings),
            resources=tuple(state for _, state in sorted(self.states.items())),
        )


@attrs.frozen
class Ledger:
    """A consumer's whole output: closed segments in closing order followed by the open ones
    (sorted by kind and guid), findings in event order, and every resource's final state."""

    segments: tuple[Segment, ...]
    findings: tuple[Finding, ...]
    resources: tuple[ResourceState, ...]

    def open_resources(self, kind: str | None = None) -> tuple[ResourceState, ...]:
        return tuple(r for r in self.resources if r.is_open and (kind is None or r.kind == kind))

    def segments_of(self, guid: str) -> tuple[Segment, ...]:
        return tuple(s for s in self.segments if s.guid == guid)

    def canonical(self) -> Ledger:
        """The same ledger in a fixed order (segments by resource and opening event, findings by
        event), so that ledgers built batch by batch and table by table compare equal (C12)."""
        return Ledger(
            segments=tuple(
                sorted(self.segments, key=lambda s: (s.kind, s.guid, s.opened_by_id, s.start))
            ),
            findings=tuple(
                sorted(
                    self.findings,
                    key=lambda f: (f.table, f.event_id or 0, f.code.value, f.guid or ""),
                )
            ),
            resources=tuple(sorted(self.resources, key=lambda r: (r.kind, r.guid))),
        )


def fold(events: Iterable[UsageEvent]) -> Ledger:
    """The ledger a consumer builds from `events`, applied per table in id order (C12).

    The two tables hold disjoint resources, so interleaving them does not change the result.
    """
    machine = BillingStateMachine()
    for event in sorted(events, key=lambda e: (e.table, e.id)):
        machine.apply(event)
    return machine.ledger()


# --- the consumer's batch fold over rows ------------------------------------------------------
#
# The forward reader folds every event, so it does not build a `UsageEvent`, a `ResourceState`
# and a `Step` per event: it works on the database's own row tuples and keeps each resource's
# state as one mutable list laid out like a `ledger_resources` row. The rules are `transition`'s
# and only the three common cases are written out again below (a start of a CLOSED resource, a
# restatement or resize of an OPEN one, an ending of an OPEN one, each without a finding);
# every other event (baselines, findings, staging, ignored and unknown states, missing keys)
# goes through `transition` itself. tests/reconstruct/test_row_fold.py checks that both give
# the same ledger. Times stay as the rows give them (naive UTC from the consumer's reads).

#: The columns the forward reader selects from each table, in this order; the names match
#: `UsageEvent`'s fields.
APP_ROW_FIELDS = (
    "id",
    "guid",
    "created_at",
    "state",
    "app_guid",
    "app_name",
    "task_guid",
    "task_name",
    "parent_app_guid",
    "package_guid",
    "instance_count",
    "memory_in_mb_per_instance",
    "previous_state",
    "previous_instance_count",
    "previous_memory_in_mb_per_instance",
    "space_guid",
    "org_guid",
)
SERVICE_ROW_FIELDS = (
    "id",
    "guid",
    "created_at",
    "state",
    "service_instance_guid",
    "service_instance_name",
    "service_plan_guid",
    "space_guid",
    "org_guid",
)
ROW_FIELDS: dict[str, tuple[str, ...]] = {
    APP_USAGE_EVENTS: APP_ROW_FIELDS,
    SERVICE_USAGE_EVENTS: SERVICE_ROW_FIELDS,
}
_ID, _GUID, _CREATED_AT, _STATE = 0, 1, 2, 3  # the same in both layouts
_APP_INSTANCES, _APP_MEMORY, _APP_PREVIOUS_STATE = 10, 11, 12
_APP_PREVIOUS_INSTANCES, _APP_PREVIOUS_MEMORY, _APP_SPACE, _APP_ORG = 13, 14, 15, 16
_SERVICE_PLAN, _SERVICE_SPACE, _SERVICE_ORG = 6, 7, 8


def event_from_row(table: str, row: Sequence[Any]) -> UsageEvent:
    """A UsageEvent from a row of `ROW_FIELDS[table]` (legacy NULL names become ''); columns
    after those are ignored."""
    fields = ROW_FIELDS[table]
    values = dict(zip(fields, row[: len(fields)], strict=True))
    for name in ("app_name", "service_instance_name", "space_guid", "org_guid", "app_guid"):
        if name in values and values[name] is None:
            values[name] = ""
    return UsageEvent(table=table, **values)


#: A resource's state as a list in the column order of `ledger_resources` (without the
#: consumer): what `StateRow` indexes name.
STATE_ROW_FIELDS = (
    "kind",
    "guid",
    "is_open",
    "ever_opened",
    "last_event_id",
    "run_start",
    "run_start_is_lower_bound",
    "run_opened_by_id",
    "run_opened_by_guid",
    "segment_start",
    "segment_start_is_lower_bound",
    "segment_opened_by_id",
    "segment_opened_by_guid",
    "segment_approximate_size",
    "instance_count",
    "memory_in_mb_per_instance",
    "service_plan_guid",
    "name",
    "space_guid",
    "org_guid",
    "last_end",
)
(
    S_KIND,
    S_GUID,
    S_IS_OPEN,
    S_EVER_OPENED,
    S_LAST_EVENT_ID,
    S_RUN_START,
    S_RUN_LOWER_BOUND,
    S_RUN_OPENED_BY_ID,
    S_RUN_OPENED_BY_GUID,
    S_SEGMENT_START,
    S_SEGMENT_LOWER_BOUND,
    S_SEGMENT_OPENED_BY_ID,
    S_SEGMENT_OPENED_BY_GUID,
    S_SEGMENT_APPROXIMATE,
    S_INSTANCES,
    S_MEMORY,
    S_PLAN,
    S_NAME,
    S_SPACE,
    S_ORG,
    S_LAST_END,
) = range(len(STATE_ROW_FIELDS))

StateRow = list[Any]
"""A resource's state laid out as `STATE_ROW_FIELDS`."""

#: A closed segment as a row: the columns of `ledger_segments` without id and consumer.
SEGMENT_ROW_FIELDS = (
    "kind",
    "guid",
    "start",
    "end",
    "instance_count",
    "memory_in_mb_per_instance",
    "service_plan_guid",
    "opened_by_id",
    "opened_by_guid",
    "closed_by_id",
    "closed_by_guid",
    "start_is_lower_bound",
    "end_is_repaired",
    "gap_close",
    "approximate_size",
    "name",
    "space_guid",
    "org_guid",
)


def state_to_row(state: ResourceState) -> StateRow:
    f = state.footprint
    return [
        state.kind,
        state.guid,
        state.is_open,
        state.ever_opened,
        state.last_event_id,
        state.run_start,
        state.run_start_is_lower_bound,
        state.run_opened_by_id,
        state.run_opened_by_guid,
        state.segment_start,
        state.segment_start_is_lower_bound,
        state.segment_opened_by_id,
        state.segment_opened_by_guid,
        state.segment_approximate_size,
        f.instance_count,
        f.memory_in_mb_per_instance,
        f.service_plan_guid,
        state.name,
        state.space_guid,
        state.org_guid,
        state.last_end,
    ]


def state_from_row(row: Sequence[Any]) -> ResourceState:
    return ResourceState(
        kind=row[S_KIND],
        guid=row[S_GUID],
        is_open=bool(row[S_IS_OPEN]),
        ever_opened=bool(row[S_EVER_OPENED]),
        last_event_id=int(row[S_LAST_EVENT_ID]),
        run_start=row[S_RUN_START],
        run_start_is_lower_bound=bool(row[S_RUN_LOWER_BOUND]),
        run_opened_by_id=row[S_RUN_OPENED_BY_ID],
        run_opened_by_guid=row[S_RUN_OPENED_BY_GUID],
        segment_start=row[S_SEGMENT_START],
        segment_start_is_lower_bound=bool(row[S_SEGMENT_LOWER_BOUND]),
        segment_opened_by_id=row[S_SEGMENT_OPENED_BY_ID],
        segment_opened_by_guid=row[S_SEGMENT_OPENED_BY_GUID],
        segment_approximate_size=bool(row[S_SEGMENT_APPROXIMATE]),
        footprint=Footprint(
            instance_count=row[S_INSTANCES],
            memory_in_mb_per_instance=row[S_MEMORY],
            service_plan_guid=row[S_PLAN],
        ),
        name=row[S_NAME],
        space_guid=row[S_SPACE],
        org_guid=row[S_ORG],
        last_end=row[S_LAST_END],
    )


def segment_to_row(s: Segment) -> tuple[Any, ...]:
    f = s.footprint
    return (
        s.kind,
        s.guid,
        s.start,
        s.end,
        f.instance_count,
        f.memory_in_mb_per_instance,
        f.service_plan_guid,
        s.opened_by_id,
        s.opened_by_guid,
        s.closed_by_id,
        s.closed_by_guid,
        s.start_is_lower_bound,
        s.end_is_repaired,
        s.gap_close,
        s.approximate_size,
        s.name,
        s.space_guid,
        s.org_guid,
    )


@attrs.frozen
class _RowMeaning:
    """What the row fold needs of a `Meaning` it handles itself: where the row keeps the key
    and the name, whether previous_* are checked (C8, app processes only), and the baseline
    state (an ending restating it is a repair, C7)."""

    kind: str
    role: Role
    key_index: int
    name_index: int
    checks_previous: bool
    baseline: str | None


def _row_meanings(table: str) -> dict[tuple[str, bool], _RowMeaning]:
    """(state, previous_state == state) -> how the row fold treats it, for the roles it
    handles itself (START, RESIZE, ENDING); absent means "ask `transition`"."""
    fields = ROW_FIELDS[table]
    found: dict[tuple[str, bool], _RowMeaning] = {}
    for (t, state, restated), meaning in _MEANINGS.items():
        lc = meaning.lifecycle
        if t != table or lc is None or meaning.role not in (Role.START, Role.RESIZE, Role.ENDING):
            continue
        name_field = {"task": "task_name", "service": "service_instance_name"}.get(
            lc.kind, "app_name"
        )
        found[(state, restated)] = _RowMeaning(
            kind=lc.kind,
            role=meaning.role,
            key_index=fields.index(lc.key_column),
            name_index=fields.index(name_field),
            checks_previous=lc.kind == "app",
            baseline=lc.baseline,
        )
    return found


_ROW_MEANINGS: dict[str, dict[tuple[str, bool], _RowMeaning]] = {
    table: _row_meanings(table) for table in ROW_FIELDS
}


def resources_of_rows(table: str, rows: Iterable[Sequence[Any]]) -> set[ResourceId]:
    """The resources the rows of `table` touch (as `BillingStateMachine` would key them)."""
    meanings = _ROW_MEANINGS[table]
    app = table == APP_USAGE_EVENTS
    found: set[ResourceId] = set()
    for row in rows:
        state = row[_STATE]
        fast = meanings.get((state, app and row[_APP_PREVIOUS_STATE] == state))
        key = row[fast.key_index] if fast is not None else None
        if fast is not None and isinstance(key, str):
            found.add((fast.kind, key))
            continue
        event = event_from_row(table, row)
        meaning = meaning_of(event)
        if meaning.kind is not None and (key := key_of(event, meaning)) is not None:
            found.add((meaning.kind, key))
    return found


def _close_segment(
    segments: list[tuple[Any, ...]],
    state: list[Any],
    created_at: datetime,
    event_id: int,
    event_guid: str,
    repair: bool,
) -> datetime:
    """Append the closed segment of an OPEN `state` (laid out like its ledger row) and return
    its end: max(created_at, the segment's start) (C7, C8)."""
    start = state[S_SEGMENT_START]
    end = created_at if created_at > start else start
    segments.append(
        (
            state[S_KIND],
            state[S_GUID],
            start,
            end,
            state[S_INSTANCES],
            state[S_MEMORY],
            state[S_PLAN],
            state[S_SEGMENT_OPENED_BY_ID],
            state[S_SEGMENT_OPENED_BY_GUID] or "",
            event_id,
            event_guid,
            state[S_SEGMENT_LOWER_BOUND],
            repair,
            False,
            state[S_SEGMENT_APPROXIMATE],
            state[S_NAME],
            state[S_SPACE],
            state[S_ORG],
        )
    )
    return end


class RowFold:
    """`BillingStateMachine` for one batch of one table's rows (see the section comment).

    `states` holds the stored states of the resources the batch touches (as `StateRow`s, as
    taken out of the ledger) and receives new ones; after `apply_rows` all of them are to be
    stored again. `segments` are the closed segments as `SEGMENT_ROW_FIELDS` rows, `findings`
    the findings, in event order.
    """

    def __init__(self, table: str, states: dict[ResourceId, StateRow]) -> None:
        self.table = table
        self.states = states
        self.segments: list[tuple[Any, ...]] = []
        self.findings: list[Finding] = []

    def apply_rows(self, rows: Iterable[Sequence[Any]]) -> None:
        meanings = _ROW_MEANINGS[self.table]
        app = self.table == APP_USAGE_EVENTS
        states = self.states
        segments = self.segments
        for row in rows:
            state_name = row[_STATE]
            previous_state = row[_APP_PREVIOUS_STATE] if app else None
            fast = meanings.get((state_name, previous_state == state_name))
            key = row[fast.key_index] if fast is not None else None
            if fast is None or not isinstance(key, str):
                self._by_transition(row)
                continue
            kind = fast.kind
            rid = (kind, key)
            state = states.get(rid)
            role = fast.role
            event_id = row[_ID]
            created_at = row[_CREATED_AT]
            if app:
                instances, memory, plan = row[_APP_INSTANCES], row[_APP_MEMORY], None
                space, org = row[_APP_SPACE], row[_APP_ORG]
            else:
                instances, memory, plan = None, None, row[_SERVICE_PLAN]
                space, org = row[_SERVICE_SPACE], row[_SERVICE_ORG]
            is_open = state is not None and state[S_IS_OPEN]
            # previous_* contradicting the billed footprint is a finding: `transition` does it.
            if (
                is_open
                and fast.checks_previous
                and role is not Role.START
                and row[_APP_PREVIOUS_INSTANCES] is not None
                and row[_APP_PREVIOUS_MEMORY] is not None
                and (
                    row[_APP_PREVIOUS_INSTANCES] != state[S_INSTANCES]  # type: ignore[index]
                    or row[_APP_PREVIOUS_MEMORY] != state[S_MEMORY]  # type: ignore[index]
                )
            ):
                self._by_transition(row)
                continue
            if role is Role.ENDING:
                if not is_open:  # a duplicate or orphan ending (C7): a finding
                    self._by_transition(row)
                    continue
                assert state is not None
                # C7: closed at max(created_at, segment start); a repair if it restates the
                # baseline.
                repair = previous_state is not None and previous_state == fast.baseline
                end = _close_segment(segments, state, created_at, event_id, row[_GUID], repair)
                states[rid] = _closed_row(kind, key, event_id, end)
                continue
            name = row[fast.name_index] or ""
            space = space or ""
            org = org or ""
            if not is_open:
                if role is Role.RESIZE:  # a resize of a CLOSED resource (C6): a finding
                    self._by_transition(row)
                    continue
                # A real start (C4): a new run, never starting before the last segment's end.
                last_end = state[S_LAST_END] if state is not None else None
                start = created_at if last_end is None or created_at > last_end else last_end
                guid = row[_GUID]
                states[rid] = [
                    kind,
                    key,
                    True,
                    True,
                    event_id,
                    created_at,
                    False,
                    event_id,
                    guid,
                    start,
                    False,
                    event_id,
                    guid,
                    False,
                    instances,
                    memory,
                    plan,
                    name,
                    space,
                    org,
                    last_end,
                ]
                continue
            assert state is not None
            if role is Role.START and (kind != "app" or previous_state is not None):
                self._by_transition(row)  # a real start while OPEN: a missed ending, a finding
                continue
            # OPEN: a restatement; a different footprint closes the segment and opens the next
            # one where it ended (C8).
            if (
                state[S_INSTANCES] != instances
                or state[S_MEMORY] != memory
                or state[S_PLAN] != plan
            ):
                guid = row[_GUID]
                end = _close_segment(segments, state, created_at, event_id, guid, False)
                state[S_SEGMENT_START] = end
                state[S_SEGMENT_LOWER_BOUND] = False
                state[S_SEGMENT_OPENED_BY_ID] = event_id
                state[S_SEGMENT_OPENED_BY_GUID] = guid
                state[S_SEGMENT_APPROXIMATE] = False
                state[S_INSTANCES] = instances
                state[S_MEMORY] = memory
                state[S_PLAN] = plan
            state[S_LAST_EVENT_ID] = event_id
            state[S_NAME] = name
            state[S_SPACE] = space
            state[S_ORG] = org

    def _by_transition(self, row: Sequence[Any]) -> None:
        """Every case the fold does not write out: `transition` on the reference values.
        Looked up on the module at each call, so that the simulator's mutants replace it."""
        event = event_from_row(self.table, row)
        meaning = meaning_of(event)
        kind, key = meaning.kind, key_of(event, meaning)
        before = self.states.get((kind, key)) if kind is not None and key is not None else None
        step = transition(state_from_row(before) if before is not None else None, event)
        self.segments.extend(segment_to_row(s) for s in step.closed)
        self.findings.extend(step.findings)
        if step.state is not None:
            self.states[(step.state.kind, step.state.guid)] = state_to_row(step.state)


def _closed_row(kind: str, guid: str, event_id: int, end: datetime) -> StateRow:
    """A CLOSED resource's state after an ending (as `transition` builds it)."""
    return [
        kind,
        guid,
        False,
        True,
        event_id,
        None,
        False,
        None,
        None,
        None,
        False,
        None,
        None,
        False,
        None,
        None,
        None,
        "",
        "",
        "",
        end,
    ]
