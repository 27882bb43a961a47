"""`usageledger cleanup` (SPEC §9, R1–R8 through the command line): JSON, summary, bad input,
the dry run."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from tests.retention.history import Event, load, remaining_ids
from usageledger.cli import cli
from usageledger.cli.root import run
from usageledger.lifecycles import APP_USAGE_EVENTS, SERVICE_USAGE_EVENTS
from usageledger.schema import usage_event_retention


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(cli, list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _load_both(engine: Engine) -> tuple[datetime, list[int], list[int]]:
    """Histories relative to the real clock: the command uses the database's time (R1)."""
    now = datetime.now(UTC)
    old, fresh = now - timedelta(days=40), now - timedelta(days=1)
    app = load(
        engine,
        APP_USAGE_EVENTS,
        [
            Event("STARTED", "p1", old),
            Event("STARTED", "p1", old),
            Event("STARTED", "p1", old),
            Event("STARTED", "p2", old),
            Event("STOPPED", "p2", old),
            Event("TASK_STARTED", "t1", old),
            Event("TASK_STOPPED", "t1", old),
            Event("STAGING_STARTED", "b1", old),
            Event("STARTED", "p3", fresh),
        ],
    )
    service = load(
        engine,
        SERVICE_USAGE_EVENTS,
        [
            Event("CREATED", "s1", old),
            Event("UPDATED", "s1", old),
            Event("UPDATED", "s1", old),
            Event("CREATED", "s9", fresh),
        ],
    )
    return now, [a.id for a in app], [s.id for s in service]


def test_r7_r8_cleanup_json_reports_per_pass_and_lifecycle(
    db_url: URL, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    """R7/R8 via §9: `cleanup --json` prints one document with counts per pass and lifecycle."""
    now, app, service = _load_both(engine)
    url = db_url.render_as_string(hide_password=False)
    code, out, err = _run(capsys, "cleanup", "--db", url, "--json", "--batch-size", "2")
    assert code == 0, err
    document = json.loads(out)
    app_doc = document["tables"][APP_USAGE_EVENTS]
    assert app_doc["passes"]["superseded_openings"]["deleted"] == {"app": 2, "task": 1}
    assert app_doc["passes"]["non_openings"]["deleted"] == {"app": 1, "task": 1, "other": 1}
    assert document["tables"][SERVICE_USAGE_EVENTS]["deleted"] == 1
    assert document["deleted"] == 7
    cutoff = datetime.fromisoformat(document["cutoff"].replace("Z", "+00:00"))
    assert abs(cutoff - (now - timedelta(days=31))) < timedelta(minutes=5)
    assert remaining_ids(engine, APP_USAGE_EVENTS) == {app[0], app[2], app[8]}
    assert remaining_ids(engine, SERVICE_USAGE_EVENTS) == {service[0], service[2], service[3]}
    # R10 through the command line: the second run deletes nothing.
    code, out, _ = _run(capsys, "cleanup", "--db", url, "--json")
    assert code == 0 and json.loads(out)["deleted"] == 0


def test_r3_cleanup_command_table_and_no_keep_running_records(
    db_url: URL, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    """R3 via §9: `--table app --no-keep-running-records` empties the old app rows only."""
    _, app, service = _load_both(engine)
    url = db_url.render_as_string(hide_password=False)
    code, out, err = _run(
        capsys, "cleanup", "--table", "app", "--no-keep-running-records", "--db", url
    )
    assert code == 0, err
    assert "deleted 8 rows" in out
    assert remaining_ids(engine, APP_USAGE_EVENTS) == {app[8]}
    assert remaining_ids(engine, SERVICE_USAGE_EVENTS) == set(service)


def test_r1_r8_bad_cleanup_options_exit_2_and_write_nothing(
    db_url: URL, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    """§9: negative cutoff, batch size below 1, unknown table: exit 2, nothing deleted."""
    _, app, service = _load_both(engine)
    url = db_url.render_as_string(hide_password=False)
    for bad in (
        ["--cutoff-age-in-days", "-1"],
        ["--batch-size", "0"],
        ["--batch-size", "many"],
        ["--table", "tasks"],
    ):
        code, out, err = _run(capsys, "cleanup", "--db", url, *bad)
        assert code == 2, bad
        assert out == ""
        assert [line for line in err.splitlines() if line.startswith("error: ")], bad
    assert remaining_ids(engine, APP_USAGE_EVENTS) == set(app)
    assert remaining_ids(engine, SERVICE_USAGE_EVENTS) == set(service)


def _without(document: object, keys: set[str]) -> object:
    """The document with `keys` removed at every level (what differs between two runs)."""
    if isinstance(document, dict):
        return {k: _without(v, keys) for k, v in document.items() if k not in keys}
    return document


def _watermarks(engine: Engine) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.select(usage_event_retention))]


def test_r7_r8_cleanup_dry_run_json_has_the_real_runs_keys_and_counts(
    db_url: URL, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    """R7/R8 via §9: `cleanup --dry-run --json` exits 0 and prints `"dry_run": true` and the
    document of a real run, key for key, with the counts the real run then deletes; it deletes
    nothing and records no watermark."""
    _, app, service = _load_both(engine)
    url = db_url.render_as_string(hide_password=False)
    code, out, err = _run(
        capsys, "cleanup", "--db", url, "--json", "--batch-size", "2", "--dry-run"
    )
    assert code == 0, err
    dry = json.loads(out)
    assert dry["dry_run"] is True
    assert dry["deleted"] == 7
    app_doc = dry["tables"][APP_USAGE_EVENTS]
    assert app_doc["passes"]["superseded_openings"]["deleted"] == {"app": 2, "task": 1}
    assert app_doc["passes"]["non_openings"]["deleted"] == {"app": 1, "task": 1, "other": 1}
    assert remaining_ids(engine, APP_USAGE_EVENTS) == set(app)
    assert remaining_ids(engine, SERVICE_USAGE_EVENTS) == set(service)
    assert _watermarks(engine) == []

    code, out, err = _run(capsys, "cleanup", "--db", url, "--json", "--batch-size", "2")
    assert code == 0, err
    real = json.loads(out)
    assert real["dry_run"] is False
    # Same keys at every level, same counts and batches; only times differ.
    differing = {"dry_run", "cutoff", "elapsed_seconds"}
    assert _without(dry, differing) == _without(real, differing)
    assert _watermarks(engine) != []


def test_r3_cleanup_dry_run_human_summary_says_nothing_was_deleted(
    db_url: URL,
    engine: Engine,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """R3/R8 via §9: the human summary of `--dry-run` says "dry run: would delete N rows" and
    that nothing was deleted, its count column is "would delete", exit 0; the rows are still
    there, with and without `--no-keep-running-records`."""
    monkeypatch.setenv("COLUMNS", "200")  # table cells unwrapped
    _, app, service = _load_both(engine)
    url = db_url.render_as_string(hide_password=False)
    for extra, would in (([], 7), (["--table", "app", "--no-keep-running-records"], 8)):
        code, out, err = _run(capsys, "cleanup", "--db", url, "--dry-run", *extra)
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].startswith("cleanup dry run: rows created before "), out
        assert "would delete" in lines[2], out
        assert lines[-1].startswith(f"dry run: would delete {would} rows; nothing was deleted ")
        assert not [line for line in lines if line.startswith("deleted ")], out
    assert remaining_ids(engine, APP_USAGE_EVENTS) == set(app)
    assert remaining_ids(engine, SERVICE_USAGE_EVENTS) == set(service)
