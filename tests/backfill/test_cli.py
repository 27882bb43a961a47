"""`usageledger backfill` and `db upgrade --skip-was-running-backfill` (SPEC §9, B3, B8, B10)."""

from __future__ import annotations

import json
import threading

import pytest
from sqlalchemy.engine import URL, Engine

from tests.backfill.platform import (
    app_rows,
    forget_history,
    make_app,
    running_task,
    snapshot,
    spy_on_lock_wait,
    started_process,
)
from usageledger import db, migrations
from usageledger.backfill import BACKFILL_LOCK
from usageledger.cli import cli
from usageledger.cli.root import run


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(cli, list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _url(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def _forgotten_platform(engine: Engine) -> None:
    app = make_app(engine)
    started_process(engine, app)
    started_process(engine, app)
    running_task(engine, app)
    forget_history(engine)


def test_b10_backfill_json_document(
    engine: Engine, db_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    """B10, §9: --json prints B10's document and nothing else on stdout."""
    _forgotten_platform(engine)

    code, out, _ = _run(capsys, "backfill", "--batch-size", "1", "--db", _url(db_url), "--json")

    assert code == 0
    document = json.loads(out)
    assert set(document) == {"app", "task", "service", "elapsed_seconds"}
    assert document["app"] == {"seeded": 2, "repaired": 0, "batches": 4}
    assert document["task"] == {"seeded": 1, "repaired": 0, "batches": 2}
    assert document["service"] == {"seeded": 0, "repaired": 0, "batches": 0}
    assert isinstance(document["elapsed_seconds"], float)


def test_b10_backfill_summary_table(
    engine: Engine, db_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    """B10: without --json a summary table per kind on stdout; a rerun adds nothing (B7)."""
    _forgotten_platform(engine)

    code, out, _ = _run(capsys, "backfill", "--db", _url(db_url))
    assert code == 0
    assert "baselines seeded" in out and "endings repaired" in out
    assert "app processes" in out and "tasks" in out and "service instances" in out

    code, out, _ = _run(capsys, "backfill", "--db", _url(db_url), "--json")
    assert code == 0
    assert json.loads(out)["app"]["seeded"] == 0


def test_b3_bad_batch_size_exits_2_and_writes_nothing(
    engine: Engine, db_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    """B3, §9: a bad --batch-size is one `error:` line, exit 2, nothing written."""
    _forgotten_platform(engine)

    for size in ("0", "-1", "abc", "1.5"):
        code, out, err = _run(
            capsys, "backfill", "--batch-size", size, "--db", _url(db_url), "--json"
        )
        assert code == 2, size
        assert out == ""
        assert "error:" in err and "--batch-size" in err
        assert "Traceback" not in err
    assert snapshot(engine) == {}


def test_b8_lock_held_by_another_run_exits_3(
    engine: Engine, db_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    """B8, §9: another run holds the lock: exit 3 with a clear message, nothing written."""
    _forgotten_platform(engine)
    with db.run_lock(engine, BACKFILL_LOCK, wait=False):
        code, out, err = _run(capsys, "backfill", "--db", _url(db_url), "--json")

    assert code == 3
    assert out == ""
    assert "another run holds the backfill lock" in err and "--wait" in err
    assert snapshot(engine) == {}


def test_b3_database_without_schema_exits_2(
    empty_db_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    """§9: a database without the schema is bad input naming the remedy."""
    db.make_engine(empty_db_url, create=True).dispose()

    code, out, err = _run(capsys, "backfill", "--db", _url(empty_db_url))

    assert code == 2
    assert out == ""
    assert "usageledger db upgrade" in err


def test_b9_db_upgrade_skip_was_running_backfill(
    empty_db_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    """B9: `db upgrade --skip-was-running-backfill` records every migration and seeds nothing;
    `backfill` seeds afterwards."""
    url = _url(empty_db_url)
    code, _, _ = _run(capsys, "db", "upgrade", "0002_lifecycle_indexes", "--db", url)
    assert code == 0
    engine = db.make_engine(empty_db_url)
    try:
        _forgotten_platform(engine)

        code, out, _ = _run(
            capsys, "db", "upgrade", "--skip-was-running-backfill", "--db", url, "--json"
        )
        assert code == 0
        assert json.loads(out)["revision"] == migrations.head_revision()
        assert snapshot(engine) == {}

        code, out, _ = _run(capsys, "backfill", "--db", url, "--json")
        assert code == 0
        assert json.loads(out)["app"]["seeded"] == 2
        assert len(app_rows(engine, "WAS_RUNNING")) == 2
    finally:
        engine.dispose()


def test_b8_wait_option_waits_for_the_lock_then_runs(
    engine: Engine,
    db_url: URL,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """B8, §9: `--wait` asks for the lock and blocks, printing and writing nothing, until the
    other run releases it; then it does the work."""
    _forgotten_platform(engine)
    lock = db.run_lock(engine, BACKFILL_LOCK, wait=False)
    waits = spy_on_lock_wait(monkeypatch, BACKFILL_LOCK)
    codes: list[int] = []
    command = threading.Thread(
        target=lambda: codes.append(
            run(cli, ["backfill", "--wait", "--db", _url(db_url), "--json"])
        )
    )
    command.start()
    try:
        waits.assert_waiting()
        assert command.is_alive() and codes == []
        assert snapshot(engine) == {}
        assert capsys.readouterr().out == ""
    finally:
        lock.release()
        command.join(60)  # even after a failure: no run may outlive the test
    assert not command.is_alive() and codes == [0]
    assert waits.returned.is_set()
    assert json.loads(capsys.readouterr().out)["app"]["seeded"] == 2
    assert len(app_rows(engine, "WAS_RUNNING")) == 2
