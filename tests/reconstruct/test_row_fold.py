"""The consumer's batch fold over row tuples (`billing.RowFold`) against the reference state
machine (`billing.transition`, `billing.fold`): the same rules, so the same ledger (C3-C9, C11,
C13), whatever the batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from unittest import mock

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import examples
from tests.reconstruct.histories import (
    app_events,
    app_row,
    app_table_rows,
    service_events,
    service_row,
    service_table_rows,
)
from usageledger.lifecycles import APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS
from usageledger.reconstruct import billing, ledger_store
from usageledger.reconstruct.billing import (
    ROW_FIELDS,
    SEGMENT_ROW_FIELDS,
    STATE_ROW_FIELDS,
    Footprint,
    Ledger,
    ResourceId,
    RowFold,
    Segment,
    StateRow,
    UsageEvent,
    fold,
    resources_of_rows,
    state_from_row,
    state_to_row,
)
from usageledger.schema import ledger_resources, ledger_segments


def rows_of(table: str, rows: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """The tuples the forward reader fetches for `rows` stored with ids 1, 2, …: the table's
    raw values (NULL names stay None), then the table's highest id, as `source.fetch_rows`."""
    fields = ROW_FIELDS[table]
    return [
        (*(i if name == "id" else row.get(name) for name in fields), len(rows))
        for i, row in enumerate(rows, start=1)
    ]


def segment_from_row(row: Sequence[Any]) -> Segment:
    v = dict(zip(SEGMENT_ROW_FIELDS, row, strict=True))
    footprint = Footprint(
        instance_count=v.pop("instance_count"),
        memory_in_mb_per_instance=v.pop("memory_in_mb_per_instance"),
        service_plan_guid=v.pop("service_plan_guid"),
    )
    return Segment(footprint=footprint, **v)


def row_fold_ledger(tables: dict[str, list[tuple[Any, ...]]], batch: int) -> Ledger:
    """What the consumer stores, batch by batch: each batch takes the states of the resources
    it touches out of the "ledger" and puts every one back (as `take_states`/`put_states`)."""
    stored: dict[ResourceId, StateRow] = {}
    segments: list[Segment] = []
    findings = []
    for table, rows in tables.items():
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            taken = {r: stored.pop(r) for r in resources_of_rows(table, chunk) if r in stored}
            step = RowFold(table, taken)
            step.apply_rows(chunk)
            stored.update(step.states)
            segments.extend(segment_from_row(s) for s in step.segments)
            findings.extend(step.findings)
    states = [state_from_row(stored[rid]) for rid in sorted(stored)]
    return Ledger(
        segments=tuple(segments) + tuple(s for r in states if (s := r.open_segment())),
        findings=tuple(findings),
        resources=tuple(states),
    ).canonical()


def test_row_layouts_match_the_ledger_tables_and_the_events() -> None:
    """The row layouts the fold writes are the ledger's columns in order (C9), and the rows it
    reads carry UsageEvent's own fields."""
    assert len(ledger_store._STATE_COLUMNS) == len(STATE_ROW_FIELDS) + 1
    assert sorted(ledger_store._STATE_COLUMNS) == sorted(c.name for c in ledger_resources.columns)
    assert len(ledger_store._SEGMENT_COLUMNS) == len(SEGMENT_ROW_FIELDS) + 1
    assert [c.name for c in ledger_segments.columns][1:] == ledger_store._SEGMENT_COLUMNS
    names = {f.name for f in attrs.fields(UsageEvent)}
    assert all(set(fields) <= names for fields in ROW_FIELDS.values())


#: Names a row may carry instead of its own (renames, moves, legacy NULLs).
_NAMES = st.sampled_from([None, "", "a", "b"])


@st.composite
def renamed(draw: st.DrawFn, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` with some names, spaces and orgs changed: the state keeps the latest ones."""
    out = []
    for row in rows:
        row = dict(row)
        for key in ("app_name", "task_name", "service_instance_name", "space_guid", "org_guid"):
            if key in row and draw(st.booleans()):
                row[key] = draw(_NAMES)
        out.append(row)
    return out


@settings(max_examples=examples(300), deadline=None)
@given(
    apps=app_table_rows(max_size=40).flatmap(renamed),
    services=service_table_rows(max_size=20).flatmap(renamed),
    batch=st.integers(1, 12),
)
def test_c3_c13_row_fold_equals_the_reference_fold(
    apps: list[dict[str, Any]], services: list[dict[str, Any]], batch: int
) -> None:
    """C3-C9, C11, C13: the consumer's row fold, in batches of any size, builds exactly the
    ledger of `billing.fold` over the same events (as the reader decodes them)."""
    expected = fold([decoded(e) for e in app_events(*apps) + service_events(*services)]).canonical()
    tables = {
        APP_USAGE_EVENTS: rows_of(APP_USAGE_EVENTS, apps),
        SERVICE_USAGE_EVENTS: rows_of(SERVICE_USAGE_EVENTS, services),
    }
    assert row_fold_ledger(tables, batch) == expected


def decoded(event: UsageEvent) -> UsageEvent:
    """`event` as the reader decodes its row: legacy NULL names read as ''."""
    return billing.event_from_row(
        event.table, [getattr(event, name) for name in ROW_FIELDS[event.table]]
    )


def test_c4_c7_c8_common_events_take_the_written_out_path() -> None:
    """C4, C7, C8: starts, resizes and endings without findings are folded without calling
    `transition` (else the equality above would only test `transition` against itself)."""
    apps = [
        app_row("STARTED", app_guid="p1", minute=0, previous_state="STOPPED"),
        app_row(
            "STARTED",
            app_guid="p1",
            minute=1,
            instances=2,
            previous_state="STARTED",
            previous_instances=1,
            previous_memory=256,
        ),
        app_row("TASK_STARTED", task_guid="t1", minute=2),
        app_row("TASK_STOPPED", task_guid="t1", minute=3),
        app_row("STOPPED", app_guid="p1", minute=4, previous_instances=2, previous_memory=256),
    ]
    services = [
        service_row("CREATED", instance="s1", minute=0, plan="small"),
        service_row("UPDATED", instance="s1", minute=1, plan="large"),
        service_row("DELETED", instance="s1", minute=2, plan="large"),
    ]
    tables = {
        APP_USAGE_EVENTS: rows_of(APP_USAGE_EVENTS, apps),
        SERVICE_USAGE_EVENTS: rows_of(SERVICE_USAGE_EVENTS, services),
    }
    with mock.patch.object(billing, "transition", side_effect=AssertionError("not written out")):
        ledger = row_fold_ledger(tables, batch=100)
    assert ledger == fold(app_events(*apps) + service_events(*services)).canonical()
    assert len(ledger.segments) == 5


@pytest.mark.parametrize(
    "rows",
    [
        # C5: a baseline for an OPEN resource (the simulator's mutants replace `transition`).
        [
            app_row("STARTED", app_guid="p1", minute=0, previous_state="STOPPED"),
            app_row("WAS_RUNNING", app_guid="p1", minute=5),
        ],
        # C7: an orphan ending.
        [app_row("STOPPED", app_guid="p1", minute=0)],
        # C6: a resize for a CLOSED resource.
        [app_row("STARTED", app_guid="p1", minute=0, previous_state="STARTED")],
        # C11: an unknown state; C13: staging.
        [app_row("MYSTERY", app_guid="p1", minute=0)],
        [app_row("STAGING_STARTED", parent_app_guid="a1", package_guid="k1", minute=0)],
    ],
)
def test_c5_c6_c7_c11_c13_other_events_go_through_transition(
    rows: list[dict[str, Any]],
) -> None:
    """Baselines, findings, unknown states and staging are `transition`'s alone: the row fold
    calls it for them (so a change to `transition` reaches the consumer)."""
    calls = []
    original = billing.transition

    def spy(state: Any, event: UsageEvent) -> billing.Step:
        calls.append(event.state)
        return original(state, event)

    with mock.patch.object(billing, "transition", spy):
        ledger = row_fold_ledger({APP_USAGE_EVENTS: rows_of(APP_USAGE_EVENTS, rows)}, batch=10)
    assert calls[-1] == rows[-1]["state"]
    assert ledger == fold(app_events(*rows)).canonical()


def test_state_rows_round_trip() -> None:
    """A stored state row and a ResourceState convert both ways unchanged (C3)."""
    machine = billing.BillingStateMachine()
    for event in app_events(
        app_row("STARTED", app_guid="p1", minute=0, previous_state="STOPPED", name="web"),
        app_row("STOPPED", app_guid="p2", minute=1),
    ):
        machine.apply(event)
    for state in machine.states.values():
        assert state_from_row(state_to_row(state)) == state
