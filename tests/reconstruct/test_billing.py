"""The billing state machine over hand-written sequences (C3–C9, C11, C13), no database."""

from __future__ import annotations

from datetime import timedelta

from tests.reconstruct.histories import (
    app_events,
    app_row,
    at,
    service_events,
    service_row,
)
from usageledger.reconstruct.billing import (
    Finding,
    FindingCode,
    Footprint,
    ResourceState,
    Role,
    Segment,
    fold,
)
from usageledger.reconstruct.gaps import IdRange, KnownGap, plan_read


def _codes(findings: tuple[Finding, ...]) -> list[str]:
    return [f.code.value for f in findings]


def _only(segments: tuple[Segment, ...]) -> Segment:
    assert len(segments) == 1, segments
    return segments[0]


def test_c4_roles_follow_the_lifecycle_table() -> None:
    """C4: openings, resizes and endings per state and previous_state; C11/C13 for the rest."""
    events = app_events(
        app_row("STARTED", app_guid="p", previous_state="STOPPED"),
        app_row("STARTED", app_guid="p", previous_state="STARTED"),
        app_row("STARTED", app_guid="p", previous_state=None),
        app_row("WAS_RUNNING", app_guid="p"),
        app_row("STOPPED", app_guid="p"),
        app_row("TASK_STARTED", task_guid="t"),
        app_row("TASK_WAS_RUNNING", task_guid="t"),
        app_row("TASK_STOPPED", task_guid="t"),
        app_row("STAGING_STARTED", parent_app_guid="a", package_guid="k"),
        app_row("STAGING_STOPPED", parent_app_guid="a", package_guid="k"),
        app_row("BUILDPACK_SET", parent_app_guid="a", package_guid="k"),
        app_row("SOMETHING_NEW", app_guid="p"),
    )
    assert [e.role for e in events] == [
        Role.START,
        Role.RESIZE,
        Role.START,
        Role.BASELINE,
        Role.ENDING,
        Role.START,
        Role.BASELINE,
        Role.ENDING,
        Role.STAGING_START,
        Role.STAGING_STOP,
        Role.IGNORED,
        Role.UNKNOWN,
    ]
    services = service_events(
        service_row("CREATED", instance="s"),
        service_row("UPDATED", instance="s"),
        service_row("WAS_RUNNING", instance="s"),
        service_row("DELETED", instance="s"),
    )
    assert [e.role for e in services] == [Role.START, Role.RESIZE, Role.BASELINE, Role.ENDING]
    assert [e.kind for e in events[:8]] == ["app"] * 5 + ["task"] * 3
    assert events[8].key == "a/k"


def test_c3_c9_start_stop_yields_one_segment_with_provenance() -> None:
    """C3, C7, C9: an exact start and its ending make one closed segment naming both events."""
    events = app_events(
        app_row(
            "STARTED",
            app_guid="p",
            minute=0,
            instances=2,
            memory=512,
            previous_state="STOPPED",
            name="web",
        ),
        app_row("STOPPED", app_guid="p", minute=10, previous_instances=2, previous_memory=512),
    )
    ledger = fold(events)
    segment = _only(ledger.segments)
    assert segment.kind == "app" and segment.guid == "p" and segment.name == "web"
    assert (segment.start, segment.end) == (at(0), at(10))
    assert segment.footprint == Footprint(instance_count=2, memory_in_mb_per_instance=512)
    assert (segment.opened_by_id, segment.closed_by_id) == (1, 2)
    assert (segment.opened_by_guid, segment.closed_by_guid) == (events[0].guid, events[1].guid)
    assert not (segment.start_is_lower_bound or segment.end_is_repaired or segment.gap_close)
    assert ledger.findings == ()
    assert ledger.open_resources() == ()


def test_c5_baseline_after_a_real_start_opens_no_second_interval() -> None:
    """C5: a WAS_RUNNING for an OPEN resource with the same size changes nothing."""
    ledger = fold(
        app_events(
            app_row("STARTED", app_guid="p", minute=0, previous_state="STOPPED"),
            app_row("WAS_RUNNING", app_guid="p", minute=30),
        )
    )
    segment = _only(ledger.segments)
    assert segment.is_open and segment.start == at(0) and not segment.start_is_lower_bound
    assert segment.opened_by_id == 1
    assert ledger.findings == ()


def test_c5_baseline_with_a_different_size_is_a_flagged_resize() -> None:
    """C5: a baseline restating another size for an OPEN resource resizes, flagged."""
    ledger = fold(
        app_events(
            app_row("STARTED", app_guid="p", minute=0, instances=1, previous_state="STOPPED"),
            app_row("WAS_RUNNING", app_guid="p", minute=30, instances=3),
        )
    )
    first, second = ledger.segments
    assert (first.start, first.end, first.footprint.instance_count) == (at(0), at(30), 1)
    assert first.approximate_size and second.approximate_size
    assert second.is_open and second.start == at(30) and second.footprint.instance_count == 3
    assert not second.start_is_lower_bound
    assert _codes(ledger.findings) == ["baseline_resize"]
    assert ledger.resources[0].run_start == at(0)


def test_c5_baseline_for_a_closed_resource_opens_at_a_lower_bound() -> None:
    """C5: a baseline for a CLOSED (never seen) resource opens at its created_at, lower bound."""
    ledger = fold(app_events(app_row("WAS_RUNNING", app_guid="p", minute=7)))
    segment = _only(ledger.segments)
    assert segment.is_open and segment.start == at(7) and segment.start_is_lower_bound
    assert ledger.resources[0].run_start_is_lower_bound


def test_c5_task_baseline_opens_a_task_not_an_app() -> None:
    """C5 and SPEC §2: TASK_WAS_RUNNING keys on task_guid; no phantom app with guid ''."""
    ledger = fold(app_events(app_row("TASK_WAS_RUNNING", task_guid="t", minute=1, memory=64)))
    segment = _only(ledger.segments)
    assert (segment.kind, segment.guid, segment.start_is_lower_bound) == ("task", "t", True)
    assert segment.footprint.memory_in_mb_per_instance == 64


def test_c6_resize_for_a_closed_resource_opens_at_a_lower_bound() -> None:
    """C6: STARTED with previous_state STARTED for a CLOSED resource: its start was missed."""
    ledger = fold(
        app_events(
            app_row("STARTED", app_guid="p", minute=3, instances=4, previous_state="STARTED")
        )
    )
    segment = _only(ledger.segments)
    assert segment.start == at(3) and segment.start_is_lower_bound
    assert segment.footprint.instance_count == 4
    assert _codes(ledger.findings) == ["missed_start"]


def test_c8_started_to_started_is_a_resize() -> None:
    """C8: a scale closes the segment and opens one with the new footprint at the same moment."""
    ledger = fold(
        app_events(
            app_row(
                "STARTED", app_guid="p", minute=0, instances=1, memory=256, previous_state="STOPPED"
            ),
            app_row(
                "STARTED",
                app_guid="p",
                minute=5,
                instances=2,
                memory=256,
                previous_state="STARTED",
                previous_instances=1,
                previous_memory=256,
            ),
            app_row("STOPPED", app_guid="p", minute=9, previous_instances=2, previous_memory=256),
        )
    )
    first, second = ledger.segments
    assert (first.start, first.end, first.footprint.instance_count) == (at(0), at(5), 1)
    assert (first.closed_by_id, second.opened_by_id) == (2, 2)
    assert (second.start, second.end, second.footprint.instance_count) == (at(5), at(9), 2)
    assert not second.start_is_lower_bound
    assert ledger.findings == ()


def test_c8_resize_with_unchanged_footprint_does_not_split() -> None:
    """C8: an UPDATED that only renames keeps one segment (and takes the new name)."""
    ledger = fold(
        service_events(
            service_row("CREATED", instance="s", minute=0, name="old"),
            service_row("UPDATED", instance="s", minute=4, name="new"),
        )
    )
    assert _only(ledger.segments).name == "new"


def test_c8_service_plan_change_splits_segments() -> None:
    """C8: an UPDATED with another plan closes one segment and opens the next."""
    ledger = fold(
        service_events(
            service_row("CREATED", instance="s", minute=0, plan="small"),
            service_row("UPDATED", instance="s", minute=60, plan="large"),
            service_row("DELETED", instance="s", minute=90, plan="large"),
        )
    )
    first, second = ledger.segments
    assert (first.footprint.service_plan_guid, first.end) == ("small", at(60))
    assert (second.footprint.service_plan_guid, second.start, second.end) == (
        "large",
        at(60),
        at(90),
    )


def test_c6_updated_for_a_closed_service_opens_at_a_lower_bound() -> None:
    """C6: an UPDATED for a service never seen created opens it, lower bound."""
    ledger = fold(service_events(service_row("UPDATED", instance="s", minute=2)))
    assert _only(ledger.segments).start_is_lower_bound


def test_c7_duplicate_endings_are_counted_and_ignored() -> None:
    """C7: only the first ending closes; further endings are findings, never amounts."""
    ledger = fold(
        app_events(
            app_row("TASK_STARTED", task_guid="t", minute=0),
            app_row("TASK_STOPPED", task_guid="t", minute=5),
            app_row("TASK_STOPPED", task_guid="t", minute=8),
        )
    )
    segment = _only(ledger.segments)
    assert segment.end == at(5) and segment.closed_by_id == 2
    assert _codes(ledger.findings) == ["duplicate_ending"]


def test_c7_orphan_ending_is_noise() -> None:
    """C7: an ending for a resource never seen open bills nothing and is reported."""
    ledger = fold(app_events(app_row("STOPPED", app_guid="p", minute=5)))
    assert ledger.segments == ()
    assert _codes(ledger.findings) == ["orphan_ending"]


def test_c7_close_never_before_the_segment_start() -> None:
    """C7: an ending whose created_at is before the start closes at the start (zero length)."""
    ledger = fold(
        app_events(
            app_row("STARTED", app_guid="p", minute=10, previous_state="STOPPED"),
            app_row("STOPPED", app_guid="p", minute=4),
        )
    )
    segment = _only(ledger.segments)
    assert segment.start == segment.end == at(10)


def test_c7_repaired_ending_is_a_flagged_close() -> None:
    """C7: a repair's STOPPED (previous_state = the baseline state) closes the baseline's run."""
    ledger = fold(
        app_events(
            app_row("WAS_RUNNING", app_guid="p", minute=0),
            app_row("STOPPED", app_guid="p", minute=20, previous_state="WAS_RUNNING"),
            app_row("TASK_WAS_RUNNING", task_guid="t", minute=0),
            app_row("TASK_STOPPED", task_guid="t", minute=3, previous_state="TASK_WAS_RUNNING"),
        )
    )
    app, task = ledger.segments
    assert app.end_is_repaired and app.start_is_lower_bound and app.end == at(20)
    assert task.end_is_repaired and task.kind == "task"


def test_c7_ordinary_ending_is_not_flagged_repaired() -> None:
    """C7: STOPPED after STARTED is a plain close."""
    ledger = fold(
        app_events(
            app_row("STARTED", app_guid="p", previous_state="STOPPED"),
            app_row("STOPPED", app_guid="p", minute=1, previous_state="STARTED"),
        )
    )
    assert not _only(ledger.segments).end_is_repaired


def test_c7_runs_of_one_resource_never_overlap_when_created_at_goes_back() -> None:
    """C7, C9: a restart whose created_at precedes the previous close starts at that close."""
    ledger = fold(
        app_events(
            app_row("STARTED", app_guid="p", minute=0, previous_state="STOPPED"),
            app_row("STOPPED", app_guid="p", minute=20),
            app_row("STARTED", app_guid="p", minute=15, previous_state="STOPPED"),
        )
    )
    first, second = ledger.segments
    assert first.end == at(20) and second.start == at(20)
    assert ledger.resources[0].run_start == at(15)  # CS1 reports the opening's own time


def test_c9_footprint_mismatch_against_previous_fields_is_reported() -> None:
    """C9: a scale whose previous_* disagree with the billed size flags approximate size."""
    ledger = fold(
        app_events(
            app_row("STARTED", app_guid="p", minute=0, instances=1, previous_state="STOPPED"),
            app_row(
                "STARTED",
                app_guid="p",
                minute=5,
                instances=3,
                previous_state="STARTED",
                previous_instances=2,
                previous_memory=256,
            ),
        )
    )
    first, _second = ledger.segments
    assert first.approximate_size
    assert _codes(ledger.findings) == ["footprint_mismatch"]


def test_c11_unknown_states_are_quarantined_not_fatal() -> None:
    """C11: an unknown state is reported and the fold carries on."""
    ledger = fold(
        app_events(
            app_row("HIBERNATED", app_guid="p", minute=0),
            app_row("STARTED", app_guid="p", minute=1, previous_state="STOPPED"),
        )
        + service_events(service_row("SUSPENDED", instance="s"))
    )
    assert _only(ledger.segments).opened_by_id == 2
    assert sorted(_codes(ledger.findings)) == ["quarantined_state", "quarantined_state"]


def test_c11_lifecycle_row_without_its_key_is_quarantined() -> None:
    """C11: a TASK_STARTED without task_guid cannot be billed; it is reported."""
    ledger = fold(app_events(app_row("TASK_STARTED", task_guid=None)))
    # task_guid None with a TASK_ state: app_row puts the name under app_name; key is None.
    assert ledger.segments == ()
    assert _codes(ledger.findings) == ["missing_key"]


def test_c13_staging_intervals_and_buildpack_set_ignored() -> None:
    """C13: STAGING_STARTED..STAGING_STOPPED is an interval keyed by (parent app, package);
    BUILDPACK_SET bills nothing and reports nothing."""
    ledger = fold(
        app_events(
            app_row("STAGING_STARTED", parent_app_guid="a", package_guid="k1", minute=0),
            app_row("STAGING_STARTED", parent_app_guid="a", package_guid="k2", minute=1),
            app_row("BUILDPACK_SET", parent_app_guid="a", package_guid="k3", minute=2),
            app_row("STAGING_STOPPED", parent_app_guid="a", package_guid="k1", minute=3),
        )
    )
    closed = [s for s in ledger.segments if not s.is_open]
    assert [(s.kind, s.guid, s.start, s.end) for s in closed] == [("staging", "a/k1", at(0), at(3))]
    assert [s.guid for s in ledger.segments if s.is_open] == ["a/k2"]
    assert ledger.findings == ()


def test_c12_fold_is_deterministic_and_ignores_table_interleaving() -> None:
    """C12: the same rows give the same ledger, whatever order the tables are interleaved in."""
    apps = app_events(
        app_row("STARTED", app_guid="p", previous_state="STOPPED"),
        app_row("STOPPED", app_guid="p", minute=3),
    )
    services = service_events(service_row("CREATED", instance="s"))
    assert fold(apps + services) == fold(services + apps) == fold(list(reversed(apps + services)))


def test_c3_state_after_close_remembers_it_was_open() -> None:
    """C3: the CLOSED state keeps enough to tell a duplicate ending from an orphan one."""
    ledger = fold(
        app_events(
            app_row("STARTED", app_guid="p", previous_state="STOPPED"),
            app_row("STOPPED", app_guid="p", minute=1),
        )
    )
    (state,) = ledger.resources
    assert isinstance(state, ResourceState)
    assert (state.is_open, state.ever_opened, state.last_event_id) == (False, True, 2)


# --- C2: gaps and the grace period, as pure decisions ---------------------------------------

GRACE = timedelta(seconds=60)


def test_c2_cursor_waits_at_a_new_gap() -> None:
    """C2: ids 1, 3 visible: apply 1, record gap 2 as open, do not pass it."""
    now = at(0)
    plan = plan_read(0, [1, 3], [], now=now, grace=GRACE)
    assert (plan.apply, plan.position, plan.blocked_by) == (1, 1, IdRange(2, 2))
    assert plan.new_gaps == (IdRange(2, 2),)


def test_c2_gap_passes_after_the_grace_period_on_the_consumer_clock() -> None:
    """C2: once the gap is older than the grace period it becomes permanent and is passed."""
    seen = at(0)
    known = [KnownGap(2, 2, seen)]
    early = plan_read(1, [3], known, now=seen + timedelta(seconds=59), grace=GRACE)
    assert early.apply == 0 and early.position == 1
    late = plan_read(1, [3], known, now=seen + GRACE, grace=GRACE)
    assert (late.apply, late.position, late.passed) == (1, 3, (KnownGap(2, 2, seen),))


def test_c2_partly_filled_gap_keeps_its_first_sighting() -> None:
    """C2: a gap 2..4 where 3 arrived: 2 and 4 are judged by when 2..4 was first seen."""
    seen = at(0)
    plan = plan_read(1, [3, 5], [KnownGap(2, 4, seen)], now=seen + GRACE, grace=GRACE)
    assert plan.apply == 2 and plan.position == 5
    assert [(g.first, g.last) for g in plan.passed] == [(2, 2), (4, 4)]


def test_c2_gaps_ahead_are_recorded_together() -> None:
    """C2: when blocked, holes ahead (batch and lookahead) start their grace period now."""
    plan = plan_read(0, [2, 4], [], now=at(0), grace=GRACE, lookahead=[2, 4, 7])
    assert plan.apply == 0
    assert plan.new_gaps == (IdRange(1, 1), IdRange(3, 3), IdRange(5, 6))


def test_c2_zero_grace_passes_every_gap_at_once() -> None:
    """C2: a grace period of 0 (a single-writer database) never waits."""
    plan = plan_read(0, [2, 5], [], now=at(0), grace=timedelta(0))
    assert (plan.apply, plan.position) == (2, 5)
    assert [(g.first, g.last) for g in plan.passed] == [(1, 1), (3, 4)]
    assert plan.new_gaps == ()


def test_c9_c11_findings_codes_are_stable() -> None:
    """C9/C11: finding codes are part of the ledger's contract."""
    assert {c.value for c in FindingCode} >= {
        "duplicate_ending",
        "orphan_ending",
        "missed_start",
        "quarantined_state",
        "footprint_mismatch",
        "fell_behind_retention",
        "gap_close",
    }


def test_c4_a_real_start_while_open_reports_the_missed_ending() -> None:
    """C4: STARTED with previous_state STOPPED, a second TASK_STARTED or a second CREATED for
    an OPEN resource says its ending was never read: the run goes on (the stop time is
    unknown) and a missed_ending finding says so. A legacy STARTED without previous_state may
    be a scale: no finding."""
    apps = fold(
        app_events(
            app_row("STARTED", app_guid="p", minute=0, previous_state="STOPPED"),
            app_row("STARTED", app_guid="p", minute=5, previous_state=None),
            app_row("STARTED", app_guid="p", minute=9, previous_state="STOPPED"),
            app_row("TASK_STARTED", task_guid="t", minute=1),
            app_row("TASK_STARTED", task_guid="t", minute=2),
        )
    )
    assert sorted((f.code.value, f.event_id) for f in apps.findings) == [
        ("missed_ending", 3),
        ("missed_ending", 5),
    ]
    assert all(s.is_open for s in apps.segments) and len(apps.segments) == 2
    services = fold(
        service_events(
            service_row("CREATED", instance="s", minute=0),
            service_row("CREATED", instance="s", minute=3),
        )
    )
    assert [(f.code.value, f.event_id) for f in services.findings] == [("missed_ending", 2)]
    assert _only(services.segments).start == at(0)
