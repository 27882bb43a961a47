"""Known-wrong variants of the real functions (SPEC S8), applied by patching in a test. Each
returns nothing and uses pytest's monkeypatch, so the patch ends with the test."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import sqlalchemy as sa

from usageledger import db, retention, schema
from usageledger.backfill import kinds, repair, run
from usageledger.backfill.window import NOW, in_window
from usageledger.lifecycles import TASK
from usageledger.producer import tasks
from usageledger.reconstruct import billing

cleanup_module = importlib.import_module(retention.prune_superseded_openings.__module__)
seed_module = importlib.import_module("usageledger.backfill.seed")

Mutant = Callable[[pytest.MonkeyPatch], None]


def reversed_deletion_order(mp: pytest.MonkeyPatch) -> None:
    """Pass 2 (endings and other non-openings) before pass 1 (superseded openings), R7."""
    first = cleanup_module.prune_superseded_openings
    second = cleanup_module.prune_non_openings
    mp.setattr(cleanup_module, "prune_superseded_openings", second)
    mp.setattr(cleanup_module, "prune_non_openings", first)


def task_baselines_named_was_running(mp: pytest.MonkeyPatch) -> None:
    """Task baselines written as WAS_RUNNING (the app state) instead of TASK_WAS_RUNNING, §2."""
    mp.setattr(kinds, "TASK", attrs.evolve(TASK, baseline="WAS_RUNNING"))


def no_repair(mp: pytest.MonkeyPatch) -> None:
    """The backfill seeds but never repairs stale baselines (B5)."""
    walk = run._walk

    def seed_only(engine: Any, lock: Any, kind: Any, phase: Any, **kw: Any) -> Any:
        if phase is run.Phase.REPAIR:
            return iter(())
        return walk(engine, lock, kind, phase, **kw)

    mp.setattr(run, "_walk", seed_only)


def repair_deletes_baseline(mp: pytest.MonkeyPatch) -> None:
    """The repair deletes a stale baseline instead of appending its ending (against B6)."""

    def deleting(kind: Any, bind: Any) -> Any:
        events = kind.events
        baseline = events.alias("baseline")
        stale = (
            sa.select(baseline.c.id)
            .where(
                in_window(baseline.c.id),
                repair.stale_baseline(kind, events, baseline),
                NOW.is_not(None),
            )
            .subquery("stale_ids")  # a derived table: MySQL cannot delete from what it reads
        )
        return sa.delete(events).where(events.c.id.in_(sa.select(stale.c.id)))

    mp.setattr(run, "repair_statement", deleting)


def seed_without_guard(mp: pytest.MonkeyPatch) -> None:
    """The seed ignores B2: a resource whose run is on record gets another baseline."""
    mp.setattr(seed_module, "current_run_on_record", lambda *a, **k: sa.false())


def ungated_task_stop(mp: pytest.MonkeyPatch) -> None:
    """TASK_STOPPED written on destroy (and every end) without looking for start evidence, P2."""
    mp.setattr(
        tasks,
        "task_stop_evidence",
        lambda conn, guid: tasks.TaskStopEvidence(stopped=False, started=True),
    )


def canceling_running_for_seed_only(mp: pytest.MonkeyPatch) -> None:
    """Seed counts a CANCELING task as running, repair does not (B5: one definition)."""
    for name in ("runs_in_snapshot", "runs_once_locked"):
        original = getattr(kinds.ResourceKind, name)

        def narrowed(self: Any, guid: Any, original: Any = original) -> Any:
            if self.name == "task":
                self = attrs.evolve(self, running=schema.tasks.c.state.in_(("RUNNING",)))
            return original(self, guid)

        mp.setattr(kinds.ResourceKind, name, narrowed)


def repair_without_its_locking_read(mp: pytest.MonkeyPatch) -> None:
    """The repair re-checks "still stopped" from its snapshot only, without the share lock
    that waits for a restart in flight (B5): it closes a run that has just begun."""
    mp.setattr(kinds.ResourceKind, "runs_once_locked", kinds.ResourceKind.runs_in_snapshot)


def second_interval_on_baseline(mp: pytest.MonkeyPatch) -> None:
    """A consumer that opens a second interval when a baseline arrives for an OPEN resource
    (against C5): both intervals bill until the ending."""
    transition = billing.transition

    def doubled(state: Any, event: billing.UsageEvent) -> billing.Step:
        if event.role is billing.Role.BASELINE and state is not None and state.is_open:
            kept = state.closed_segment(event.created_at, closed_by=event)
            # The first interval is billed up to the baseline and restarted from its start:
            # the stretch from the start to the baseline is billed twice.
            again = attrs.evolve(state, segment_start=state.segment_start, last_event_id=event.id)
            return billing.Step((kept,), (), again)
        return transition(state, event)

    mp.setattr(billing, "transition", doubled)


def lock_that_does_not_exclude(mp: pytest.MonkeyPatch) -> None:
    """A backfill lock that every caller gets at once (against B8): a lock object holding
    nothing, so two backfills run together."""

    def always(engine: Any, name: str) -> db.RunLock:
        return db.RunLock(name, db.backend_of(engine))

    mp.setattr(db, "try_run_lock", always)


MUTANTS: dict[str, Mutant] = {
    "reversed_deletion_order": reversed_deletion_order,
    "task_baselines_named_was_running": task_baselines_named_was_running,
    "no_repair": no_repair,
    "repair_deletes_baseline": repair_deletes_baseline,
    "seed_without_guard": seed_without_guard,
    "ungated_task_stop": ungated_task_stop,
    "canceling_running_for_seed_only": canceling_running_for_seed_only,
    "repair_without_its_locking_read": repair_without_its_locking_read,
    "second_interval_on_baseline": second_interval_on_baseline,
    "lock_that_does_not_exclude": lock_that_does_not_exclude,
}
