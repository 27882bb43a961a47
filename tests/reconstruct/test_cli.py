"""`usageledger consume` and `usageledger reconstruct current-state` on the command line (§9)."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import pytest
from sqlalchemy.engine import URL, Engine

from tests.reconstruct.histories import app_row, insert_app, insert_service, service_row
from usageledger.cli.root import cli, run
from usageledger.schema import app_usage_events


def _url(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def invoke(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run(cli, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def invoke_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code, out, err = invoke(capsys, *argv, "--json")
    assert out, err
    return code, json.loads(out)


def _history(engine: Engine) -> None:
    insert_app(
        engine,
        app_row("STARTED", app_guid="p1", minute=0, previous_state="STOPPED", name="web"),
        app_row("STARTED", app_guid="p1", minute=5, instances=2, previous_state="STARTED"),
        app_row("WAS_RUNNING", app_guid="p2", minute=6),
        app_row("TASK_STARTED", task_guid="t1", minute=7),
    )
    insert_service(engine, service_row("CREATED", instance="s1", minute=1))


def test_c1_consume_json_reports_the_run_and_a_rerun_applies_nothing(
    engine: Engine, ledger: Engine, db_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    """C1 via the CLI: one JSON document; the cursor is kept, so a second run reads nothing."""
    _history(engine)
    code, doc = invoke_json(capsys, "consume", "--db", _url(db_url), "--grace-seconds", "0")
    assert code == 0
    assert doc["events_applied"] == 5 and doc["segments_closed"] == 1
    assert doc["positions"] == {"app_usage_events": 4, "service_usage_events": 1}
    assert doc["fell_behind"] == [] and doc["interrupted"] is False
    code, again = invoke_json(capsys, "consume", "--db", _url(db_url))
    assert code == 0 and again["events_applied"] == 0


def test_c9_show_prints_segments_with_provenance(
    engine: Engine, ledger: Engine, db_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    """C9: `consume --show GUID` answers "why was I charged this" with event ids and flags."""
    _history(engine)
    assert invoke(capsys, "consume", "--db", _url(db_url), "--grace-seconds", "0")[0] == 0
    code, doc = invoke_json(capsys, "consume", "--db", _url(db_url), "--show", "p1")
    assert code == 0 and doc["guid"] == "p1"
    first, second = doc["segments"]
    assert (first["opened_by_id"], first["closed_by_id"], first["instance_count"]) == (1, 2, 1)
    assert (second["opened_by_id"], second["end"], second["instance_count"]) == (2, None, 2)
    assert first["start"] == "2026-01-01T00:00:00Z"
    code, out, _ = invoke(capsys, "consume", "--db", _url(db_url), "--show", "p2")
    assert code == 0 and "lower-bound start" in out and "#3" in out


def test_c10_consume_exits_4_when_it_fell_behind_retention(
    engine: Engine, ledger: Engine, db_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    """C10 / §9: a run-once consumer that fell behind retention exits 4 and says so."""
    insert_app(engine, app_row("STARTED", app_guid="p1", previous_state="STOPPED"))
    assert invoke(capsys, "consume", "--db", _url(db_url), "--grace-seconds", "0")[0] == 0
    insert_app(
        engine,
        app_row("STOPPED", app_guid="p1", minute=1),
        app_row("STARTED", app_guid="p2", minute=2, previous_state="STOPPED"),
    )
    with engine.begin() as conn:
        conn.execute(app_usage_events.delete().where(app_usage_events.c.id <= 2))
    code, out, err = invoke(
        capsys, "consume", "--db", _url(db_url), "--grace-seconds", "0", "--json"
    )
    assert code == 4
    assert json.loads(out)["fell_behind"] == [
        {"table": "app_usage_events", "first_id": 2, "last_id": 2, "gap_closed": 1}
    ]
    assert "error: consumer 'reference' fell behind retention" in err


def test_c14_consume_into_a_separate_ledger_database(
    engine: Engine,
    db_url: URL,
    empty_db_url: URL,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """C14: `--ledger-db` keeps the ledger elsewhere, creating its tables on first use."""
    _history(engine)
    code, doc = invoke_json(
        capsys,
        "consume",
        "--db",
        _url(db_url),
        "--ledger-db",
        _url(empty_db_url),
        "--grace-seconds",
        "0",
    )
    assert code == 0 and doc["events_applied"] == 5
    code, shown = invoke_json(
        capsys,
        "consume",
        "--db",
        _url(db_url),
        "--ledger-db",
        _url(empty_db_url),
        "--show",
        "s1",
    )
    assert code == 0 and len(shown["segments"]) == 1


@pytest.mark.parametrize(
    "option", [("--grace-seconds", "-1"), ("--batch-size", "0"), ("--consumer", "")]
)
def test_c2_bad_consume_options_exit_2(
    db_url: URL, capsys: pytest.CaptureFixture[str], option: tuple[str, str]
) -> None:
    """§9: bad option values are exit 2 with one `error:` line; nothing is consumed."""
    code, out, err = invoke(capsys, "consume", "--db", _url(db_url), *option)
    assert code == 2 and out == "" and "error:" in err


def test_c1_follow_stops_cleanly_on_ctrl_c(
    engine: Engine, ledger: Engine, db_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    """C1: `--follow` polls until interrupted; Ctrl-C between polls keeps every batch done."""
    _history(engine)
    with mock.patch("usageledger.reconstruct.consumer.time.sleep", side_effect=KeyboardInterrupt):
        code, doc = invoke_json(
            capsys, "consume", "--db", _url(db_url), "--follow", "--grace-seconds", "0"
        )
    assert code == 0 and doc["interrupted"] is True and doc["events_applied"] == 5


def test_cs4_current_state_json_document(
    engine: Engine, db_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    """CS4: the JSON document's shape, per-kind totals, and the same answer by the fold."""
    _history(engine)
    code, doc = invoke_json(capsys, "reconstruct", "current-state", "--db", _url(db_url))
    assert code == 0 and doc["schema_version"] == 1
    assert doc["totals"] == {"app": 2, "task": 1, "service": 1}
    assert set(doc["running"][0]) == {
        "kind",
        "guid",
        "name",
        "space_guid",
        "org_guid",
        "started_at",
        "start_is_lower_bound",
        "instance_count",
        "memory_in_mb_per_instance",
        "service_plan_guid",
        "last_event_id",
    }
    p1 = doc["running"][0]
    assert (p1["guid"], p1["started_at"], p1["instance_count"], p1["last_event_id"]) == (
        "p1",
        "2026-01-01T00:00:00Z",
        2,
        2,
    )
    assert "drift" not in doc
    code, by_fold = invoke_json(
        capsys, "reconstruct", "current-state", "--db", _url(db_url), "--method", "fold"
    )
    assert by_fold == doc
    code, apps_only = invoke_json(
        capsys, "reconstruct", "current-state", "--db", _url(db_url), "--kind", "app"
    )
    assert [r["kind"] for r in apps_only["running"]] == ["app", "app"]


def test_cs3_verify_exits_1_on_drift_and_lists_it(
    engine: Engine, db_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    """CS3/CS4: events say p1 runs, the resource tables know no such process: drift, exit 1."""
    _history(engine)
    code, doc = invoke_json(
        capsys, "reconstruct", "current-state", "--db", _url(db_url), "--verify"
    )
    assert code == 1
    assert {(d["guid"], d["problem"]) for d in doc["drift"]} == {
        ("p1", "open_run_not_running"),
        ("p2", "open_run_not_running"),
        ("t1", "open_run_not_running"),
        ("s1", "open_run_not_running"),
    }
    # B5: only a run a baseline opened (p2's WAS_RUNNING) is the repair's; a real start's
    # missing ending is not, and the remedy must not send the operator to backfill for ever.
    remedies = {d["guid"]: d["remedy"] for d in doc["drift"]}
    assert "usageledger backfill" in remedies["p2"]
    assert all("ending is missing" in remedies[g] for g in ("p1", "t1", "s1"))
    code, out, _ = invoke(capsys, "reconstruct", "current-state", "--db", _url(db_url))
    assert code == 0 and "totals: app 2, task 1, service 1" in out


def test_cs4_current_state_reads_in_read_only_transactions(
    engine: Engine, db_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    """CS4: the command opens only read-only transactions (it needs SELECT rights only)."""
    from usageledger import db

    real = db.transaction
    seen: list[bool] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(bool(kwargs.get("read_only")))
        return real(*args, **kwargs)

    with mock.patch.object(db, "transaction", side_effect=spy):
        code, _out, _err = invoke(
            capsys, "reconstruct", "current-state", "--db", _url(db_url), "--verify"
        )
    assert code == 0 and seen == [True]


def test_c14_consume_on_a_database_without_schema_exits_2(
    db_url: URL, empty_db_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    """§9: a source without the platform schema, or `--show` on a ledger never created, is
    exit 2 with one line naming the remedy."""
    code, out, err = invoke(capsys, "consume", "--db", _url(empty_db_url))
    assert code == 2 and out == "" and "usageledger db upgrade" in err
    code, out, err = invoke(
        capsys, "consume", "--db", _url(db_url), "--ledger-db", _url(empty_db_url), "--show", "x"
    )
    assert code == 2 and out == "" and err.startswith("error: ")
    assert "no consumer ledger" in err or "no SQLite database" in err
