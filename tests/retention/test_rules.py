"""Every retention rule by name (SPEC R1–R10), on every backend, with hand-written histories."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from typing import Any, TypeVar
from unittest import mock

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.retention.history import (
    CUTOFF,
    CUTOFF_DAYS,
    FRESH,
    NOW,
    OLD,
    Event,
    audit_table,
    clock,
    days_ago,
    load,
    remaining_ids,
)
from tests.retention.model import kept_after_cleanup, safety_violations
from usageledger.errors import BadInputError
from usageledger.lifecycles import APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS
from usageledger.reconstruct.billing import UsageEvent
from usageledger.retention import (
    ALL_OLD_ROWS,
    NO_LIFECYCLE,
    NON_OPENINGS,
    SUPERSEDED_OPENINGS,
    CleanupResult,
    cleanup,
    cleanup_tables,
    plan_cleanup,
    prune_non_openings,
    prune_superseded_openings,
)
from usageledger.retention import run as retention_run
from usageledger.schema import EVENT_TABLES, usage_event_retention

APP = APP_USAGE_EVENTS
SVC = SERVICE_USAGE_EVENTS


def ev(state: str, key: str | None, when: object = OLD) -> Event:
    assert not isinstance(when, str)
    return Event(state, key, when)  # type: ignore[arg-type]


def run(
    engine: Engine,
    table: str,
    events: Sequence[Event],
    *,
    keep: Sequence[int],
    **options: Any,
) -> CleanupResult:
    """Load `events`, clean, and check that exactly the events at positions `keep` survive,
    as the model says, and that the table stays safe (I6)."""
    stored = load(engine, table, events)
    result = cleanup(
        engine, table, cutoff_age_in_days=CUTOFF_DAYS, clock=clock(), batch_size=2, **options
    )
    remaining = remaining_ids(engine, table)
    expected = {stored[i].id for i in keep}
    assert remaining == expected, [
        (i, e.state, e.key, "kept" if s.id in remaining else "deleted")
        for i, (e, s) in enumerate(zip(events, stored, strict=True))
    ]
    assert remaining == kept_after_cleanup(stored, table, CUTOFF, **options)
    if options.get("keep_running_records", True):
        assert safety_violations(stored, table, remaining) == []
    assert result.deleted == len(events) - len(keep)
    return result


def test_r5_old_opening_without_ending_is_kept(engine: Engine) -> None:
    """R5: a running resource's only (old) opening stays."""
    run(engine, APP, [ev("STARTED", "p1"), ev("STARTED", "p2", FRESH)], keep=[0, 1])


def test_r6_old_opening_with_fresh_ending_is_kept_with_its_ending(engine: Engine) -> None:
    """R6: a fresh ending is no evidence that the run is over; both rows stay."""
    run(engine, APP, [ev("STARTED", "p1"), ev("STOPPED", "p1", FRESH)], keep=[0, 1])


def test_r5_ending_with_lower_id_does_not_close_opening(engine: Engine) -> None:
    """R5(a): only an ending with a HIGHER id closes an opening; the orphan ending goes."""
    run(
        engine,
        APP,
        [ev("STOPPED", "p1"), ev("STARTED", "p1"), ev("STARTED", "p9", FRESH)],
        keep=[1, 2],
    )


def test_r5_pairing_follows_id_not_created_at(engine: Engine) -> None:
    """R5: order is by id even when created_at says the ending came first."""
    run(
        engine,
        APP,
        [
            ev("STARTED", "p1", days_ago(50)),
            ev("STOPPED", "p1", days_ago(60)),  # older by time, later by id: it closes the run
            ev("STOPPED", "p2", days_ago(60)),
            ev("STARTED", "p2", days_ago(70)),  # later by id: p2 is running
            ev("STARTED", "p9", FRESH),
        ],
        keep=[3, 4],
    )


def test_r5_two_complete_old_runs_are_deleted_whole(engine: Engine) -> None:
    """R5(a), R7: two finished old runs of one process leave nothing behind."""
    run(
        engine,
        APP,
        [
            ev("STARTED", "p1"),
            ev("STARTED", "p1"),
            ev("STOPPED", "p1"),
            ev("STARTED", "p1"),
            ev("STOPPED", "p1"),
            ev("STARTED", "p9", FRESH),
        ],
        keep=[5],
    )


def test_r7_orphan_old_ending_is_deleted(engine: Engine) -> None:
    """R7 pass 2: an old ending with nothing to close goes."""
    run(engine, APP, [ev("STOPPED", "p1"), ev("STARTED", "p9", FRESH)], keep=[1])


def test_r5_three_old_openings_keep_first_and_latest(engine: Engine) -> None:
    """R5(b): a running process scaled twice keeps its true start and its current size."""
    result = run(
        engine,
        APP,
        [ev("STARTED", "p1"), ev("STARTED", "p1"), ev("STARTED", "p1"), ev("STARTED", "x", FRESH)],
        keep=[0, 2, 3],
    )
    superseded = result.pass_named(SUPERSEDED_OPENINGS)
    assert superseded is not None and superseded.deleted["app"] == 1


def test_r6_fresh_latest_opening_protects_old_middle_opening(engine: Engine) -> None:
    """R6: a later opening counts only when old; the old middle opening is the latest old one."""
    run(
        engine,
        APP,
        [ev("STARTED", "p1"), ev("STARTED", "p1"), ev("STARTED", "p1", FRESH)],
        keep=[0, 1, 2],
    )


def test_r5_closed_run_then_running_run_keeps_only_running_openings(engine: Engine) -> None:
    """R5: the closed pair goes; the running run keeps its first and latest opening."""
    run(
        engine,
        APP,
        [
            ev("STARTED", "p1"),
            ev("STOPPED", "p1"),
            ev("STARTED", "p1"),
            ev("STARTED", "p1"),
            ev("STARTED", "p1"),
            ev("STARTED", "x", FRESH),
        ],
        keep=[2, 4, 5],
    )


def test_r5_baselines_follow_the_same_rules(engine: Engine) -> None:
    """R5: WAS_RUNNING is an opening like STARTED: a closed baseline goes, a running one stays."""
    run(
        engine,
        APP,
        [
            ev("WAS_RUNNING", "p1"),
            ev("STOPPED", "p1"),
            ev("WAS_RUNNING", "p1"),
            ev("STARTED", "p1"),
            ev("STARTED", "p1"),
            ev("STARTED", "x", FRESH),
        ],
        keep=[2, 4, 5],
    )


def test_r9_tasks_pair_by_task_guid_only(engine: Engine) -> None:
    """R9: another task's TASK_STOPPED never closes this task; all task rows have app_guid ''."""
    run(
        engine,
        APP,
        [
            ev("TASK_STARTED", "t1"),
            ev("TASK_STARTED", "t2"),
            ev("TASK_STOPPED", "t2"),
            ev("TASK_STARTED", "t3", FRESH),
        ],
        keep=[0, 3],
    )


def test_r9_baselines_of_different_tasks_are_all_kept(engine: Engine) -> None:
    """R9: one TASK_WAS_RUNNING per running task; none supersedes another (SPEC §2)."""
    run(
        engine,
        APP,
        [ev("TASK_WAS_RUNNING", f"t{i}") for i in range(4)] + [ev("STARTED", "x", FRESH)],
        keep=[0, 1, 2, 3, 4],
    )


def test_r9_null_task_guid_ending_never_prunes_another_legacy_tasks_start(engine: Engine) -> None:
    """R9, R5(a): legacy task rows may lack task_guid; a NULL key pairs with nothing (as in SQL
    and the consumer), so one legacy task's TASK_STOPPED never prunes another's TASK_STARTED.
    The orphan NULL-key ending itself is an old non-opening and goes (R7)."""
    run(
        engine,
        APP,
        [
            ev("TASK_STARTED", None),
            ev("TASK_STOPPED", None),
            ev("TASK_WAS_RUNNING", None),
            ev("TASK_STOPPED", None),
            ev("STARTED", "x", FRESH),
        ],
        keep=[0, 2, 4],
    )


def test_r5_null_key_openings_are_never_superseded(engine: Engine) -> None:
    """R5(b): NULL-key openings are not openings of one resource; none is a "middle" one."""
    run(
        engine,
        APP,
        [
            ev("TASK_STARTED", None),
            ev("TASK_STARTED", None),
            ev("TASK_STARTED", None),
            ev("TASK_STARTED", "t1"),
            ev("TASK_STARTED", "t1"),
            ev("TASK_STARTED", "t1"),
            ev("STARTED", "x", FRESH),
        ],
        keep=[0, 1, 2, 3, 5, 6],
    )


def test_r7_null_key_ending_after_fresh_null_key_opening_is_an_orphan(engine: Engine) -> None:
    """R7: an old ending is kept only for a fresh opening of its own run; a NULL-key ending has
    no run, so it goes even after a fresh NULL-key opening (which stays: it is fresh)."""
    result = run(
        engine,
        APP,
        [ev("TASK_STARTED", None, FRESH), ev("TASK_STOPPED", None), ev("STARTED", "x", FRESH)],
        keep=[0, 2],
    )
    assert result.kept_endings == 0


def test_r3_without_keep_running_records_null_key_rows_go_too(engine: Engine) -> None:
    """R3: without keep_running_records every old row goes, NULL-key openings included."""
    run(
        engine,
        APP,
        [ev("TASK_STARTED", None), ev("TASK_WAS_RUNNING", None), ev("STARTED", "x", FRESH)],
        keep=[2],
        keep_running_records=False,
    )


def test_r9_empty_key_is_a_key_as_the_consumer_reads_it(engine: Engine) -> None:
    """R5, R9: the consumer reports only a NULL key as missing and pairs '' rows as one resource
    (billing.key_of); retention pairs them too, so what it keeps and deletes stays consistent
    with what the consumer will read (treating '' as missing would delete the endings of ''
    runs and leave their openings looking running)."""
    at = days_ago(40)
    assert UsageEvent(table=APP, id=1, guid="g", created_at=at, state="TASK_STARTED").key is None
    for state, column in (("TASK_STARTED", "task_guid"), ("STARTED", "app_guid")):
        key: dict[str, Any] = {column: ""}
        event = UsageEvent(table=APP, id=1, guid="g", created_at=at, state=state, **key)
        assert event.key == ""
    run(
        engine,
        APP,
        [
            ev("TASK_STARTED", ""),
            ev("TASK_STOPPED", ""),
            ev("STARTED", ""),
            ev("STARTED", ""),
            ev("STARTED", ""),
            ev("STARTED", "x", FRESH),
        ],
        keep=[2, 4, 5],
    )


def test_r5_service_created_updated_updated_keeps_created_and_last_updated(
    engine: Engine,
) -> None:
    """R5(b): a service instance keeps its CREATED and its latest UPDATED."""
    run(
        engine,
        SVC,
        [
            ev("CREATED", "s1"),
            ev("UPDATED", "s1"),
            ev("UPDATED", "s1"),
            ev("CREATED", "s2"),
            ev("DELETED", "s2"),
            ev("CREATED", "s9", FRESH),
        ],
        keep=[0, 2, 5],
    )


def test_r7_non_lifecycle_old_rows_go(engine: Engine) -> None:
    """R7 pass 2: staging, BUILDPACK_SET and unknown states that are old are deleted."""
    result = run(
        engine,
        APP,
        [
            ev("STAGING_STARTED", "b1"),
            ev("STAGING_STOPPED", "b1"),
            ev("BUILDPACK_SET", "b2"),
            ev("SOMETHING_NEW", "b3"),
            ev("STAGING_STARTED", "b4", FRESH),
        ],
        keep=[4],
    )
    non_openings = result.pass_named(NON_OPENINGS)
    assert non_openings is not None and non_openings.deleted[NO_LIFECYCLE] == 4


def test_r2_newest_row_survives_when_everything_is_old(engine: Engine) -> None:
    """R2: with every row old, the highest id stays (a caught-up consumer's cursor resolves)."""
    run(engine, APP, [ev("STARTED", "p1"), ev("STOPPED", "p1"), ev("STOPPED", "p2")], keep=[2])
    run(engine, SVC, [ev("CREATED", "s1"), ev("DELETED", "s1")], keep=[1])


def test_r2_without_keep_at_least_one_record_everything_old_goes(engine: Engine) -> None:
    """R2 is an option: switched off, an all-old table of finished runs empties."""
    run(
        engine,
        APP,
        [ev("STARTED", "p1"), ev("STOPPED", "p1")],
        keep=[],
        keep_at_least_one_record=False,
    )


def test_r3_without_keep_running_records_every_old_row_goes(engine: Engine) -> None:
    """R3: running resources lose their old openings too; fresh rows and the newest stay."""
    run(
        engine,
        APP,
        [
            ev("STARTED", "p1"),
            ev("TASK_STARTED", "t1"),
            ev("STARTED", "p2", FRESH),
            ev("STOPPED", "p3"),
        ],
        keep=[2, 3],
        keep_running_records=False,
    )


def test_r1_cutoff_is_clock_now_minus_age_and_old_is_strictly_before(engine: Engine) -> None:
    """R1: created_at exactly at the cutoff is not old."""
    events = [
        ev("STAGING_STARTED", "b1", CUTOFF - timedelta(microseconds=1)),
        ev("STAGING_STARTED", "b2", CUTOFF),
        ev("STAGING_STARTED", "b3", FRESH),
    ]
    result = run(engine, APP, events, keep=[1, 2])
    assert result.cutoff == NOW - timedelta(days=CUTOFF_DAYS)


def test_r1_one_cutoff_for_both_tables(engine: Engine) -> None:
    """R1: a run over both tables reads the clock once and reports the same cutoff for each."""
    load(engine, SVC, [ev("CREATED", "s1"), ev("DELETED", "s1"), ev("CREATED", "s9", FRESH)])
    load(engine, APP, [ev("STARTED", "p1"), ev("STOPPED", "p1"), ev("STARTED", "p9", FRESH)])
    results = cleanup_tables(engine, [APP, SVC], cutoff_age_in_days=CUTOFF_DAYS, clock=clock())
    assert [r.cutoff for r in results] == [CUTOFF, CUTOFF]
    assert [r.deleted for r in results] == [2, 2]


def test_r4_table_without_lifecycles_refuses_keep_running(engine: Engine) -> None:
    """R4: a table with no declared lifecycles is an error, and nothing is deleted."""
    audit = audit_table("retention_test_audit_events")
    audit.create(engine)
    try:
        with engine.begin() as conn:
            conn.execute(
                audit.insert(),
                [
                    {"id": 1, "created_at": OLD.replace(tzinfo=None), "state": "X"},
                    {"id": 2, "created_at": OLD.replace(tzinfo=None), "state": "X"},
                ],
            )
        with pytest.raises(BadInputError, match="declares no lifecycles"):
            cleanup(engine, audit, cutoff_age_in_days=CUTOFF_DAYS, clock=clock())
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(audit)).scalar() == 2
        # R3 on such a table is allowed: delete every old row but the newest.
        result = cleanup(
            engine, audit, cutoff_age_in_days=CUTOFF_DAYS, clock=clock(), keep_running_records=False
        )
        assert result.deleted == 1
    finally:
        audit.drop(engine)


def test_r10_second_run_deletes_nothing(engine: Engine) -> None:
    """R10: a second cleanup right after the first deletes nothing."""
    events = [
        ev("STARTED", "p1"),
        ev("STARTED", "p1"),
        ev("STARTED", "p1"),
        ev("STOPPED", "p2"),
        ev("STARTED", "p3"),
        ev("STOPPED", "p3", FRESH),
        ev("STAGING_STARTED", "b1"),
        ev("STARTED", "p1", FRESH),
    ]
    load(engine, APP, events)
    first = cleanup(engine, APP, cutoff_age_in_days=CUTOFF_DAYS, clock=clock(), batch_size=1)
    assert first.deleted > 0
    second = cleanup(engine, APP, cutoff_age_in_days=CUTOFF_DAYS, clock=clock(), batch_size=1)
    assert second.deleted == 0 and second.batches == 0


def test_r6_fresh_ending_between_old_openings_is_a_run_boundary(engine: Engine) -> None:
    """R6: a fresh ending (out of id order by time) separates two runs: both starts stay."""
    run(
        engine,
        APP,
        [
            ev("STARTED", "p1"),
            ev("STOPPED", "p1", FRESH),
            ev("STARTED", "p1"),
            ev("STARTED", "p1"),
        ],
        keep=[0, 1, 2, 3],
    )


def test_r7_old_ending_of_a_fresh_opening_is_kept(engine: Engine) -> None:
    """R7 invariant: an old ending whose (fresh, lower-id) opening stays is not deleted."""
    run(
        engine,
        APP,
        [ev("STARTED", "p1", FRESH), ev("STOPPED", "p1"), ev("STARTED", "x", FRESH)],
        keep=[0, 1, 2],
    )


_T = TypeVar("_T")
#: Outside any pass: the cutoff read, the plan and the watermark.
BEFORE_PASSES = ""


@contextmanager
def statements_of_cleanup(engine: Engine) -> Iterator[list[tuple[str, str]]]:
    """Every statement a cleanup sends on `engine` inside the block, as (pass name, SQL); the
    pass name is BEFORE_PASSES for the cutoff, the plan and the watermark. Statements outside
    `cleanup_tables` (loading the history, checking the result) are not recorded."""
    sent: list[tuple[str, str]] = []
    phase: list[str | None] = [None]

    def record(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        if phase[0] is not None:
            sent.append((phase[0], statement))

    def in_phase(name: str, function: Callable[..., _T]) -> Callable[..., _T]:
        def wrapper(*args: Any, **kwargs: Any) -> _T:
            outer, phase[0] = phase[0], name
            try:
                return function(*args, **kwargs)
            finally:
                phase[0] = outer

        return wrapper

    steps = {
        "cleanup_tables": BEFORE_PASSES,
        "prune_superseded_openings": SUPERSEDED_OPENINGS,
        "prune_non_openings": NON_OPENINGS,
        "prune_all_old_rows": ALL_OLD_ROWS,
    }
    patches = [
        mock.patch.object(retention_run, step, in_phase(name, getattr(retention_run, step)))
        for step, name in steps.items()
    ]
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        with ExitStack() as stack:
            for patch in patches:
                stack.enter_context(patch)
            yield sent
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def test_r8_counts_come_per_pass_and_lifecycle(engine: Engine) -> None:
    """R8: the result counts deleted rows per pass and lifecycle from the deletes themselves: no
    COUNT query is sent, and in the passes the only statements touching the table are the
    DELETEs by id. Batches respect batch_size."""
    with statements_of_cleanup(engine) as sent:
        result = run(
            engine,
            APP,
            [
                ev("STARTED", "p1"),
                ev("STOPPED", "p1"),
                ev("TASK_STARTED", "t1"),
                ev("TASK_STOPPED", "t1"),
                ev("STAGING_STARTED", "b1"),
                ev("STARTED", "x", FRESH),
            ],
            keep=[5],
        )
    superseded = result.pass_named(SUPERSEDED_OPENINGS)
    non_openings = result.pass_named(NON_OPENINGS)
    assert superseded is not None and non_openings is not None
    assert dict(superseded.deleted) == {"app": 1, "task": 1}
    assert dict(non_openings.deleted) == {"app": 1, "task": 1, NO_LIFECYCLE: 1}
    assert superseded.batches == 1  # both lifecycles together, in id order, two ids a batch
    assert non_openings.batches == 2  # three old rows, two per page
    assert [sql for _, sql in sent if re.search(r"\bcount\s*\(", sql, re.IGNORECASE)] == []
    on_table = [
        (name, sql.split(None, 1)[0].upper())
        for name, sql in sent
        if name != BEFORE_PASSES and APP in sql.lower()
    ]
    # At least one DELETE a batch, and nothing else on the table while the passes run.
    assert {verb for _, verb in on_table} == {"DELETE"}, on_table
    assert len([n for n, _ in on_table if n == SUPERSEDED_OPENINGS]) >= superseded.batches
    assert len([n for n, _ in on_table if n == NON_OPENINGS]) >= non_openings.batches


def test_r8_bad_options_are_rejected_before_any_work(engine: Engine) -> None:
    """R1/R8 inputs: a negative cutoff age or a batch size below 1 is bad input, nothing deleted."""
    stored = load(engine, APP, [ev("STARTED", "p1"), ev("STOPPED", "p1"), ev("STARTED", "x")])
    for days, size in [(-1, 10), (31, 0), (31, -5)]:
        with pytest.raises(BadInputError):
            cleanup(engine, APP, cutoff_age_in_days=days, batch_size=size, clock=clock())
    assert remaining_ids(engine, APP) == {s.id for s in stored}


def test_r8_counts_stay_exact_when_planned_rows_are_already_gone(engine: Engine) -> None:
    """R8: when rows of a planned batch were deleted meanwhile (a concurrent cleanup), the
    per-lifecycle counts still say exactly what this run deleted, and the rest goes."""
    stored = load(
        engine,
        APP,
        [
            ev("STARTED", "p1"),
            ev("STOPPED", "p1"),
            ev("TASK_STARTED", "t1"),
            ev("TASK_STOPPED", "t1"),
            ev("STAGING_STARTED", "b1"),
            ev("STAGING_STOPPED", "b1"),
            ev("STARTED", "x", FRESH),
        ],
    )
    plan = plan_cleanup(engine, APP, cutoff=CUTOFF)
    t = EVENT_TABLES[APP]
    with engine.begin() as conn:  # another cleanup got to one opening and one staging row
        conn.execute(t.delete().where(t.c.id.in_([stored[0].id, stored[5].id])))
    first = prune_superseded_openings(engine, plan, batch_size=10)
    second = prune_non_openings(engine, plan, batch_size=10)
    assert dict(first.deleted) == {"app": 0, "task": 1}
    assert dict(second.deleted) == {"app": 1, "task": 1, NO_LIFECYCLE: 1}
    assert first.batches == 1 and second.batches == 1
    assert remaining_ids(engine, APP) == {stored[6].id}


def _watermark(engine: Engine, table: str) -> int | None:
    r = usage_event_retention.c
    with engine.connect() as conn:
        value = conn.execute(
            sa.select(r.pruned_through_id).where(r.table_name == table)
        ).scalar_one_or_none()
    return int(value) if value is not None else None


def test_r7_c10_watermark_is_raised_before_any_delete_and_never_lowered(engine: Engine) -> None:
    """R7/C10: a run records the highest id it plans to delete (`usage_event_retention`)
    before its first delete, so a run that dies before deleting still leaves it; a later run
    that plans less never lowers it, and one that plans nothing writes nothing."""
    stored = load(
        engine,
        APP,
        [
            ev("STARTED", "p1"),
            ev("STOPPED", "p1"),
            ev("STARTED", "p2"),
            ev("STAGING_STARTED", None),
            ev("STARTED", "p3", FRESH),
        ],
    )
    assert _watermark(engine, APP) is None
    with (
        mock.patch.object(retention_run, "prune_superseded_openings", side_effect=RuntimeError),
        pytest.raises(RuntimeError),
    ):
        cleanup(engine, APP, cutoff_age_in_days=CUTOFF_DAYS, clock=clock())
    assert remaining_ids(engine, APP) == {s.id for s in stored}  # nothing deleted yet
    assert _watermark(engine, APP) == stored[3].id  # the staging row, the highest planned
    cleanup(engine, APP, cutoff_age_in_days=CUTOFF_DAYS, clock=clock())
    assert remaining_ids(engine, APP) == {stored[2].id, stored[4].id}
    assert _watermark(engine, APP) == stored[3].id
    with engine.begin() as conn:  # as if an earlier run had planned further
        conn.execute(
            usage_event_retention.update()
            .where(usage_event_retention.c.table_name == APP)
            .values(pruned_through_id=stored[4].id + 100)
        )
    cleanup(engine, APP, cutoff_age_in_days=CUTOFF_DAYS, clock=clock())  # plans nothing
    assert _watermark(engine, APP) == stored[4].id + 100
    assert _watermark(engine, SVC) is None
