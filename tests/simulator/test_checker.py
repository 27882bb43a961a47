"""S6: the checker over hand-written values — each invariant I1–I10 fails with a witness in
plain words when broken, and known bounded deviations are reported with their size."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs

from usageledger.reconstruct.billing import Footprint, Ledger, Segment
from usageledger.simulator.checker import (
    CheckInput,
    CleanupObservation,
    ConsumerView,
    CursorMove,
    LockHold,
    RowInfo,
    Severity,
    TaskEnding,
    Verdict,
    check,
)
from usageledger.simulator.truth import CommittedOp, InitialSize, build_truth

T0 = datetime(2026, 1, 1, tzinfo=UTC)
APP = "app_usage_events"
P = "11111111-aaaa"


def day(n: float) -> datetime:
    return T0 + timedelta(days=n)


def fp(instances: int = 1, memory: int = 256) -> Footprint:
    return Footprint(instance_count=instances, memory_in_mb_per_instance=memory)


def seg(
    start: float,
    end: float | None,
    footprint: Footprint | None = None,
    *,
    start_is_lower_bound: bool = False,
    end_is_repaired: bool = False,
    approximate_size: bool = False,
) -> Segment:
    return Segment(
        kind="app",
        guid=P,
        start=day(start),
        end=None if end is None else day(end),
        footprint=footprint or fp(),
        opened_by_id=1,
        opened_by_guid="e1",
        closed_by_id=None if end is None else 2,
        start_is_lower_bound=start_is_lower_bound,
        end_is_repaired=end_is_repaired,
        approximate_size=approximate_size,
    )


def ops(*items: tuple[str, float, dict[str, int]]) -> list[CommittedOp]:
    return [
        CommittedOp(i + 1, "producer-1", "app", P, "proc-1", name, day(at), **extra)  # type: ignore[arg-type]
        for i, (name, at, extra) in enumerate(items)
    ]


def data(
    segments: list[Segment],
    committed: list[CommittedOp],
    *,
    horizon: float = 10,
    **overrides: object,
) -> CheckInput:
    truth = build_truth({P: ("app", "proc-1", InitialSize())}, committed, day(horizon))
    view = ConsumerView("c1", "reference", Ledger(tuple(segments), (), ()), drained=True)
    values: dict[str, object] = {
        "truth": truth,
        "consumers": (view,),
        "observed": (),
        "cleanups": (),
        "final_rows": (),
        "final_backfills_added": (0, 0),
        "lock_holds": (),
        "task_endings": (),
        "start": T0,
    }
    values.update(overrides)
    return CheckInput(**values)  # type: ignore[arg-type]


RUN_1_TO_5 = ops(("start_process", 1, {}), ("stop_process", 5, {}))


def test_i1_exact_bill_is_valid() -> None:
    """I1–I5: a bill that matches the truth exactly is valid with no deviation."""
    report = check(data([seg(1, 5)], RUN_1_TO_5))
    assert report.verdict is Verdict.VALID
    assert not report.findings


def test_i1_lost_interval_has_a_witness() -> None:
    """I1: time the resource ran but nobody billed is invalid, with its size in the words."""
    report = check(data([seg(1, 3)], RUN_1_TO_5))
    assert report.broken() == {"I1"}
    (finding,) = report.invalid_findings()
    assert finding.size_seconds == 2 * 86_400
    assert "proc-1" in finding.witness and "billed nothing" in finding.witness


def test_i1_lower_bound_start_is_a_bounded_deviation() -> None:
    """I1: the unbilled stretch before a lower-bound start is a deviation with its size."""
    report = check(data([seg(2, 5, start_is_lower_bound=True)], RUN_1_TO_5))
    assert report.verdict is Verdict.VALID
    assert report.deviation_totals() == {"lower-bound start": (1, 86_400.0)}


def test_i1_a_gap_after_a_closed_bill_is_lost_even_before_a_lower_bound_start() -> None:
    """I1: proc-1 ran from day 1; its bill was closed on day 3 (a repair that closed a run in
    progress) and billing resumed from a lower-bound start on day 4. The consumer read that
    run, so the day between is lost (invalid), not a start that was no longer on record."""
    report = check(
        data(
            [seg(1, 3, end_is_repaired=True), seg(4, 5, start_is_lower_bound=True)],
            RUN_1_TO_5,
        )
    )
    lost = [f for f in report.findings if f.invariant == "I1"]
    assert [(f.severity, f.size_seconds) for f in lost] == [(Severity.INVALID, 86_400.0)]


def test_i2_overlapping_segments() -> None:
    """I2: two segments of one resource covering the same time are a duplicate."""
    report = check(data([seg(1, 5), seg(2, 4)], RUN_1_TO_5))
    assert "I2" in report.broken()


def test_i3_open_after_repair_and_repaired_end_deviation() -> None:
    """I3: still open after the final repair is unbounded; a repaired end is a deviation; an
    open bill from a stale baseline that runs on into a real restart is a bounded over-bill."""
    restarted = ops(("start_process", 1, {}), ("stop_process", 5, {}), ("start_process", 8, {}))
    billed_on = check(data([seg(1, 5), seg(6, None, start_is_lower_bound=True)], restarted))
    assert billed_on.of("I3").verdict is Verdict.VALID
    assert billed_on.deviation_totals() == {"baseline after stop": (1, 2 * 86_400.0)}
    assert (
        "I3"
        in check(data([seg(1, 5), seg(6, None, start_is_lower_bound=True)], RUN_1_TO_5)).broken()
    )
    repaired = check(data([seg(1, 7, end_is_repaired=True)], RUN_1_TO_5))
    assert repaired.verdict is Verdict.VALID
    assert repaired.deviation_totals()["repaired end after true stop"][1] == 2 * 86_400


def test_i4_phantom_charge() -> None:
    """I4: a bill for a resource that never ran."""
    report = check(data([seg(1, 2)], []))
    assert report.broken() == {"I4"}


def test_i5_wrong_footprint_unless_flagged_approximate() -> None:
    """I5: a wrong size is invalid; flagged approximate it is a deviation."""
    committed = ops(
        ("start_process", 1, {}), ("scale_process", 3, {"instances": 2}), ("stop_process", 5, {})
    )
    assert check(data([seg(1, 5)], committed)).broken() == {"I5"}
    flagged = check(data([seg(1, 5, approximate_size=True)], committed))
    assert flagged.verdict is Verdict.VALID and "approximate size" in flagged.deviation_totals()


def row(
    id: int, state: str, at: float, *, key: str = P, kind: str = "app", step: int = 0
) -> RowInfo:
    return RowInfo(APP, id, state, kind, key, day(at), visible_step=step)


def test_i6_running_resource_loses_its_opening() -> None:
    """I6: deleting the first opening of a running resource is invalid (expected for the old
    cleanup), and deleting an ending while its opening remains is invalid."""
    before = (row(1, "STARTED", 1), row(2, "STARTED", 2), row(3, "STARTED", 3))
    current = CleanupObservation("cleanup", "current", 1, 2, day(0), before, before[1:])
    report = check(data([], [], cleanups=(current,)))
    assert "I6" in report.broken()
    old = CleanupObservation("old-cleanup", "old", 1, 2, day(0), before, before[1:])
    expected = check(data([], [], cleanups=(old,)))
    assert expected.of("I6").verdict is Verdict.VALID and expected.of("I6").expected == 1
    closed = (row(1, "STARTED", 1), row(2, "STOPPED", 2))
    orphaned = CleanupObservation(
        "cleanup", "crash_between_passes", 1, 2, day(0), closed, closed[:1]
    )
    (finding,) = check(data([], [], cleanups=(orphaned,))).invalid_findings()
    assert "ending #2" in finding.witness and "opening #1" in finding.witness


def test_i6_other_cleanups_deletions_are_not_blamed() -> None:
    """I6: rows another cleanup deleted meanwhile are not this cleanup's doing."""
    before = (row(1, "STARTED", 1), row(2, "STARTED", 3))
    obs = CleanupObservation(
        "cleanup", "current", 1, 2, day(0), before, before[1:], attempted=frozenset()
    )
    assert check(data([], [], cleanups=(obs,))).verdict is Verdict.VALID


def test_i7_fixpoint_and_record_matches_truth() -> None:
    """I7: a second backfill adding rows, or a stopped resource still open on record."""
    report = check(data([seg(1, 5)], RUN_1_TO_5, final_backfills_added=(3, 1)))
    assert "I7" in report.broken()
    stale = (row(1, "STARTED", 1), row(2, "STOPPED", 5), row(3, "WAS_RUNNING", 6))
    report = check(data([seg(1, 5)], RUN_1_TO_5, final_rows=stale))
    assert "I7" in report.broken()


def test_i8_two_lock_holders() -> None:
    """I8: two backfills holding the lock over overlapping steps."""
    holds = (LockHold("backfill-1", 10, 20), LockHold("backfill-2", 15, 30))
    assert check(data([], [], lock_holds=holds)).broken() == {"I8"}
    apart = (LockHold("backfill-1", 10, 20), LockHold("backfill-2", 20, 30))
    assert check(data([], [], lock_holds=apart)).verdict is Verdict.VALID


def test_i9_task_stop_without_evidence_and_missing_with_evidence() -> None:
    """I9: a TASK_STOPPED with no start on record, and a running task's end that wrote none."""
    task = "t-1"
    stray = (row(5, "TASK_STOPPED", 2, key=task, kind="task", step=3),)
    assert "I9" in check(data([], [], observed=stray)).broken()
    started = (row(4, "TASK_STARTED", 1, key=task, kind="task", step=2),)
    end = CommittedOp(9, "producer-1", "task", task, "task-1", "succeed_task", day(2))
    ending = TaskEnding(op=end, start_step=5, wrote_stop=False, was_running=True)
    assert "I9" in check(data([], [], observed=started, task_endings=(ending,))).broken()


def test_i10_row_visible_below_cursor() -> None:
    """I10: a row that commits after a consumer's cursor moved past its id."""
    late = (row(1, "STARTED", 1, step=9), row(2, "STARTED", 1, key="other", step=5))
    moves = (CursorMove("c1", APP, 7, 2),)
    view = ConsumerView("c1", "naive", Ledger((), (), ()), drained=True, moves=moves)
    report = check(data([], [], observed=late, consumers=(view,)))
    assert "I10" in report.broken()
    (finding,) = [f for f in report.findings if f.invariant == "I10"]
    assert "#1" in finding.witness and finding.severity is Severity.INVALID


def test_s6_unknown_when_a_consumer_was_not_drained() -> None:
    """S6: unknown, not valid, when a consumer never caught up."""
    view = ConsumerView("c1", "reference", Ledger((seg(1, 5),), (), ()), drained=False)
    report = check(data([], RUN_1_TO_5, consumers=(view,)))
    assert report.verdict is Verdict.UNKNOWN


def test_i3_task_end_lost_to_a_purge_is_expected_not_invalid() -> None:
    """S2/I3: a task whose TASK_STARTED a purge deleted, and which ended before any baseline
    restored it, has no TASK_STOPPED (P2): its open bill is the purge's damage (expected). The
    same open bill without the purge, or with the purge after the end, stays invalid."""
    task = "22222222-bbbb"
    committed = [
        CommittedOp(1, "producer-1", "task", task, "task-1", "run_task", day(1)),
        CommittedOp(10, "producer-1", "task", task, "task-1", "succeed_task", day(5)),
    ]
    truth = build_truth({task: ("task", "task-1", InitialSize(1, 128))}, committed, day(10))
    open_bill = Segment(
        kind="task",
        guid=task,
        start=day(1),
        end=None,
        footprint=fp(1, 128),
        opened_by_id=1,
        opened_by_guid="e1",
    )
    view = ConsumerView(
        "c1",
        "reference",
        Ledger((open_bill,), (), ()),
        drained=True,
        moves=(CursorMove("c1", APP, 3, 1),),  # it read the start before any purge
    )
    started = RowInfo(APP, 1, "TASK_STARTED", "task", task, day(1), "PENDING", 2)
    ending = TaskEnding(committed[1], start_step=9, wrote_stop=False, was_running=True)

    def verdict_with(purge_steps: tuple[int, int] | None) -> tuple[Verdict, list[str]]:
        cleanups: tuple[CleanupObservation, ...] = ()
        if purge_steps is not None:
            cleanups = (
                CleanupObservation(
                    "purge", "purge", purge_steps[0], purge_steps[1], day(3), (started,), ()
                ),
            )
        report = check(
            CheckInput(
                truth=truth,
                consumers=(view,),
                observed=(started,),
                cleanups=cleanups,
                final_rows=(),
                final_backfills_added=(0, 0),
                lock_holds=(),
                task_endings=(ending,),
                start=T0,
            )
        )
        i3 = [f.severity.value for f in report.findings if f.invariant == "I3"]
        return report.of("I3").verdict, i3

    assert verdict_with(None) == (Verdict.INVALID, ["invalid"])
    assert verdict_with((5, 6)) == (Verdict.VALID, ["expected"])
    assert verdict_with((11, 12)) == (Verdict.INVALID, ["invalid"])


def test_i3_i7_purge_reseed_above_a_stop_in_flight_is_expected_only_then() -> None:
    """S2/I3/I7: proc-1 stopped on day 5; its STOPPED #2 was in flight during a purge, which
    deleted #1 and reseeded STARTED #3 above #2. The open bill and the open run are the purge's
    damage (expected). Had the purge deleted that STOPPED (it was committed before), or had
    there been no purge, the same bill and run stay invalid."""
    started = row(1, "STARTED", 1, step=2)
    stop = row(2, "STOPPED", 5, step=12)
    reseed = attrs.evolve(row(3, "STARTED", 5, step=11), previous_state="STARTED")
    open_bill = attrs.evolve(seg(5, None, start_is_lower_bound=True), opened_by_id=3)

    def verdicts(before: tuple[RowInfo, ...] | None) -> dict[str, list[str]]:
        cleanups: tuple[CleanupObservation, ...] = ()
        if before is not None:
            cleanups = (CleanupObservation("purge", "purge", 10, 11, day(5), before, (reseed,)),)
        report = check(
            data(
                [seg(1, 5), open_bill],
                RUN_1_TO_5,
                observed=(started, stop, reseed),
                cleanups=cleanups,
                final_rows=(stop, reseed) if before != (started, stop) else (reseed,),
            )
        )
        return {
            inv: [f.severity.value for f in report.findings if f.invariant == inv]
            for inv in ("I3", "I7")
        }

    assert verdicts((started,)) == {"I3": ["expected"], "I7": ["expected"]}
    assert verdicts(None) == {"I3": ["invalid"], "I7": ["invalid"]}
    assert verdicts((started, stop)) == {"I3": ["invalid"], "I7": ["invalid"]}


def test_i3_bill_from_a_stale_baseline_that_damage_deleted_is_expected() -> None:
    """S2/I3: proc-1 stopped on day 5 (#2); a stale baseline #3 followed, and the consumer
    opened a bill from it. The purge (or the old cleanup) deleted #3 before a repair closed it:
    the open bill is that cleanup's damage (expected). The current cleanup deleting it, or no
    deletion at all, leaves the same bill invalid."""
    stop = row(2, "STOPPED", 5, step=1)
    stale = row(3, "WAS_RUNNING", 5.5, step=1)
    open_bill = attrs.evolve(seg(5.5, None, start_is_lower_bound=True), opened_by_id=3)

    def i3(variant: str | None) -> list[str]:
        cleanups: tuple[CleanupObservation, ...] = ()
        if variant is not None:
            cleanups = (CleanupObservation(variant, variant, 10, 11, day(6), (stop, stale), ()),)
        report = check(
            data([seg(1, 5), open_bill], RUN_1_TO_5, observed=(stop, stale), cleanups=cleanups)
        )
        return [f.severity.value for f in report.findings if f.invariant == "I3"]

    assert i3("purge") == ["expected"]
    assert i3("old") == ["expected"]
    assert i3("current") == ["invalid"]
    assert i3(None) == ["invalid"]


def test_i3_a_bill_kept_past_an_ending_the_consumer_read_is_invalid_whatever_the_damage() -> None:
    """I3/C7: a legacy proc-1's baseline #1 opened a bill; the consumer read the real STOPPED
    #2 and kept billing. That stays invalid even when the old cleanup later deletes both rows
    (no damage excuses an ending the consumer read), and when the process restarts, which would
    otherwise bound the over-bill."""
    legacy = ops(("start_process", -30, {}), ("stop_process", 3, {}))
    baseline, stop = row(1, "WAS_RUNNING", 0.5, step=1), row(2, "STOPPED", 3, step=3)
    open_bill = attrs.evolve(seg(0.5, None, start_is_lower_bound=True), opened_by_id=1)
    read_both = (CursorMove("c1", APP, 5, 2),)
    old = CleanupObservation("old-cleanup", "old", 10, 11, day(8), (baseline, stop), ())
    restarted = ops(("start_process", -30, {}), ("stop_process", 3, {}), ("start_process", 4, {}))
    start = attrs.evolve(row(3, "STARTED", 4, step=4), previous_state="STOPPED")
    for committed, observed, cleanups in (
        (legacy, (baseline, stop), (old,)),
        (restarted, (baseline, stop, start), ()),
    ):
        view = ConsumerView("c1", "reference", Ledger((open_bill,), (), ()), True, read_both)
        report = check(data([], committed, consumers=(view,), observed=observed, cleanups=cleanups))
        i3 = [f for f in report.findings if f.invariant == "I3"]
        assert [f.severity for f in i3] == [Severity.INVALID]
        assert "past #2 (STOPPED), which it read" in i3[0].witness


def test_i3_i7_the_purge_excuses_only_its_reseed_above_a_stop_in_flight() -> None:
    """S2/I3/I7: proc-1's earlier run (#1, #2) was pruned long before a purge reseeded #9 for
    its second run (#5, which the purge deleted); it stopped later (#12). #2 was not in flight
    during the purge, so nothing is the purge's damage: a bill kept open past #12, or no ending
    on record at all, stays invalid."""
    runs = ops(
        ("start_process", 1, {}),
        ("stop_process", 2, {}),
        ("start_process", 3, {}),
        ("stop_process", 6, {}),
    )
    first = (row(1, "STARTED", 1, step=1), row(2, "STOPPED", 2, step=2))
    second = attrs.evolve(row(5, "STARTED", 3, step=3), previous_state="STOPPED")
    reseed = attrs.evolve(row(9, "STARTED", 4, step=11), previous_state="STARTED")
    stop = row(12, "STOPPED", 6, step=20)
    cleanups = (
        CleanupObservation("cleanup", "current", 5, 6, day(2.5), first, ()),
        CleanupObservation("purge", "purge", 10, 11, day(4), (second,), (reseed,)),
    )
    closed_first = attrs.evolve(seg(1, 2), opened_by_id=1, closed_by_id=2)
    read_all = (CursorMove("c1", APP, 50, 12),)

    def broken(second_bill: Segment, final: tuple[RowInfo, ...]) -> frozenset[str]:
        view = ConsumerView(
            "c1", "reference", Ledger((closed_first, second_bill), (), ()), True, read_all
        )
        observed = (*first, second, reseed, *final[1:])
        return check(
            data(
                [],
                runs,
                consumers=(view,),
                observed=observed,
                cleanups=cleanups,
                final_rows=final,
            )
        ).broken()

    kept_open = attrs.evolve(seg(3, None), opened_by_id=5)
    assert "I3" in broken(kept_open, (reseed, stop))
    assert "I7" in broken(attrs.evolve(seg(3, 6), opened_by_id=5), (reseed,))


def test_i7_an_unrepaired_task_baseline_is_invalid_even_after_the_old_cleanup() -> None:
    """I7/B5: the old cleanup deleted task-1's TASK_STARTED, so its end wrote no TASK_STOPPED
    (P2, the old cleanup's damage); but a TASK_WAS_RUNNING seeded meanwhile and left without
    its repaired ending is the backfill's fault, not that damage."""
    task = "22222222-bbbb"
    run = CommittedOp(1, "producer-1", "task", task, "task-1", "run_task", day(1))
    end = CommittedOp(9, "producer-1", "task", task, "task-1", "succeed_task", day(6))
    started = RowInfo(APP, 1, "TASK_STARTED", "task", task, day(1), visible_step=1)
    baseline = RowInfo(APP, 3, "TASK_WAS_RUNNING", "task", task, day(5.9), visible_step=10)
    report = check(
        CheckInput(
            truth=build_truth({task: ("task", "task-1", InitialSize())}, [run, end], day(10)),
            consumers=(),
            observed=(started, baseline),
            cleanups=(CleanupObservation("old-cleanup", "old", 4, 5, day(4), (started,), ()),),
            final_rows=(baseline,),
            final_backfills_added=(0, 0),
            lock_holds=(),
            task_endings=(TaskEnding(end, 9, wrote_stop=False, was_running=True),),
            start=T0,
        )
    )
    assert [f.severity for f in report.findings if f.invariant == "I7"] == [Severity.INVALID]


def _pruned_first_run(segments: list[Segment]) -> CheckInput:
    """proc-1 ran day 1–5 and again day 6–8. A cleanup deleted the first run's rows (#7
    STARTED, #8 STOPPED) before the consumer read them; it read the second run's (#9, #10)."""
    committed = ops(
        ("start_process", 1, {}),
        ("stop_process", 5, {}),
        ("start_process", 6, {}),
        ("stop_process", 8, {}),
    )
    first = (row(7, "STARTED", 1, step=2), row(8, "STOPPED", 5, step=3))
    second = (row(9, "STARTED", 6, step=20), row(10, "STOPPED", 8, step=21))
    pruned = CleanupObservation("cleanup", "current", 10, 12, day(1), before=first, after=())
    return data(segments, committed, observed=first + second, cleanups=(pruned,))


def test_i3_pruned_before_read_does_not_excuse_a_later_bill_forever() -> None:
    """I3/C10: rows of an earlier run pruned before the consumer read them excuse only the
    time they cover; a later run billed forever (open after the final repair) stays invalid."""
    report = check(_pruned_first_run([seg(6, None)]))
    assert report.broken() == {"I3"}, [f.witness for f in report.findings]
    (finding,) = report.invalid_findings()
    assert finding.start == day(8) and "past #10 (STOPPED), which it read" in finding.witness
    # The first run's missing bill is still the bounded, excused deviation.
    assert report.deviation_totals() == {"pruned before read": (1, 4 * 86_400.0)}


def test_i1_pruned_before_read_does_not_excuse_a_later_lost_interval() -> None:
    """I1/C10: the consumer read the second run's rows; losing that run is not excused by an
    earlier run's pruned rows."""
    report = check(_pruned_first_run([]))
    assert report.broken() == {"I1"}
    (finding,) = report.invalid_findings()
    assert (finding.start, finding.end) == (day(6), day(8))


def test_i1_run_wholly_pruned_before_read_is_a_deviation() -> None:
    """I1/C10: a run whose every row retention pruned before the consumer read it is
    unbillable: a deviation with its size, and the rest of the bill is exact."""
    report = check(_pruned_first_run([seg(6, 8)]))
    assert report.verdict is Verdict.VALID, [f.witness for f in report.findings]
    assert report.deviation_totals() == {"pruned before read": (1, 4 * 86_400.0)}
    (finding,) = report.findings
    assert finding.invariant == "I1" and finding.event_ids == (7, 8)
