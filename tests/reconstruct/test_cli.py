"""`usageledger consume` and `usageledger reconstruct current-state` on the command line (§9)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from tests.reconstruct.histories import app_row, insert_app, insert_service, service_row
from usageledger import db
from usageledger.cli.root import cli, run
from usageledger.schema import app_usage_events, ledger_metadata


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


def _ledger_rows(ledger: Engine) -> dict[str, int]:
    """How many rows each ledger table holds."""
    with ledger.connect() as conn:
        return {
            t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            for t in ledger_metadata.sorted_tables
        }


def _tables_in(url: URL) -> set[str]:
    """The tables of the database at `url`; none for a SQLite file that does not exist."""
    if db.backend_of(url) is db.Backend.SQLITE:
        path = db.sqlite_path(url)
        if path is not None and not path.exists():
            return set()
    engine = db.make_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "option", [("--grace-seconds", "-1"), ("--batch-size", "0"), ("--consumer", "")]
)
def test_bad_consume_options_exit_2_and_consume_nothing(
    engine: Engine,
    ledger: Engine,
    db_url: URL,
    empty_db_url: URL,
    capsys: pytest.CaptureFixture[str],
    option: tuple[str, str],
) -> None:
    """§9 bad input (options of C1/C2): a bad option value exits 2 with one `error:` line and
    nothing is consumed although there are events to read: the ledger beside the platform's
    tables keeps no cursor, segment, resource or finding, and a `--ledger-db` named with the bad
    value is not even created."""
    _history(engine)
    code, out, err = invoke(capsys, "consume", "--db", _url(db_url), *option)
    assert (code, out) == (2, "") and err.startswith("error: ") and err.count("\n") == 1, err
    assert _ledger_rows(ledger) == dict.fromkeys(_ledger_rows(ledger), 0)
    code, out, err = invoke(
        capsys, "consume", "--db", _url(db_url), "--ledger-db", _url(empty_db_url), *option
    )
    assert (code, out) == (2, "") and err.startswith("error: "), err
    assert _tables_in(empty_db_url) == set()


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


#: Statements that only read: SELECT without a locking or writing clause, SHOW, DESCRIBE, SET
#: (session or transaction settings), a PRAGMA query (`PRAGMA x = y` may rewrite the file), and
#: a plain BEGIN (SQLite's deferred BEGIN takes no write lock; its writers' BEGIN IMMEDIATE does).
_WRITES_INSIDE_SELECT = re.compile(
    r"\b(FOR UPDATE|FOR SHARE|LOCK IN SHARE MODE|INTO|INSERT|UPDATE|DELETE|NEXTVAL|GET_LOCK"
    r"|PG_ADVISORY_\w*)\b",
    re.IGNORECASE,
)


def _is_read(statement: str) -> bool:
    head = statement.split(" ", 1)[0].upper()
    if head in ("SELECT", "WITH"):
        return _WRITES_INSIDE_SELECT.search(statement) is None
    if head in ("SHOW", "DESCRIBE", "SET"):
        return True
    if head == "PRAGMA":
        return "=" not in statement
    return statement.upper() in ("BEGIN", "BEGIN DEFERRED", "COMMIT", "ROLLBACK")


@contextmanager
def _statements_sent() -> Iterator[list[str]]:
    """Every statement any engine sends through SQLAlchemy meanwhile (what the driver sends on
    its own when it connects or pings is not seen), whitespace collapsed."""
    sent: list[str] = []

    def record(
        _conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, _many: bool
    ) -> None:
        sent.append(" ".join(statement.split()))

    sa.event.listen(Engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sa.event.remove(Engine, "before_cursor_execute", record)


@pytest.mark.parametrize("method", ["sql", "fold"])
def test_cs4_current_state_sends_only_reads(
    engine: Engine,
    db_url: URL,
    backend: db.Backend,
    capsys: pytest.CaptureFixture[str],
    method: str,
) -> None:
    """CS4: `reconstruct current-state --verify` opens only read-only transactions and needs
    only SELECT rights: every statement it sends on any connection, its checks of the
    connection and the schema included, is a read (SELECT, SHOW, DESCRIBE, SET, a PRAGMA query
    or a plain BEGIN); a write anywhere, even an `UPDATE … SET state = state` that changes
    nothing, fails this. Its work runs in a transaction declared read-only (SET TRANSACTION
    READ ONLY; on SQLite a plain BEGIN)."""
    _history(engine)
    real = db.transaction
    read_only: list[bool] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        read_only.append(bool(kwargs.get("read_only")))
        return real(*args, **kwargs)

    with _statements_sent() as sent, mock.patch.object(db, "transaction", side_effect=spy):
        code, out, err = invoke(
            capsys,
            "reconstruct",
            "current-state",
            "--db",
            _url(db_url),
            "--verify",
            "--method",
            method,
        )
    assert code == 1 and "p1" in out, err  # drift: the resource tables know none of them
    assert read_only and all(read_only), read_only
    declared = "BEGIN" if backend is db.Backend.SQLITE else "SET TRANSACTION READ ONLY"
    assert declared in sent, sent
    writes = [s for s in sent if not _is_read(s)]
    assert writes == [], writes


@contextmanager
def _select_only_login(engine: Engine, url: URL) -> Iterator[URL]:
    """`url` with a login of its own that may SELECT from every table of that database and do
    nothing else; dropped afterwards."""
    name = f"ul_test_reader_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    if db.backend_of(engine) is db.Backend.POSTGRESQL:
        grant = [
            f"CREATE ROLE {name} LOGIN PASSWORD '{password}'",
            f"GRANT USAGE ON SCHEMA public TO {name}",
            f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {name}",
        ]
        revoke = [f"DROP OWNED BY {name}", f"DROP ROLE {name}"]
    else:
        grant = [
            f"CREATE USER '{name}'@'%' IDENTIFIED BY '{password}'",
            f"GRANT SELECT ON `{url.database}`.* TO '{name}'@'%'",
        ]
        revoke = [f"DROP USER '{name}'@'%'"]
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as admin:
        admin.execute(sa.text(grant[0]))
        try:
            for statement in grant[1:]:
                admin.execute(sa.text(statement))
            yield url.set(username=name, password=password)
        finally:
            for statement in revoke:
                admin.execute(sa.text(statement))


def test_cs4_current_state_runs_with_select_rights_only(
    engine: Engine, db_url: URL, backend: db.Backend, capsys: pytest.CaptureFixture[str]
) -> None:
    """CS4: on PostgreSQL and MariaDB, a login granted SELECT and nothing else runs
    `reconstruct current-state --verify` and gets the same document as the owner."""
    if backend is db.Backend.SQLITE:
        pytest.skip("SQLite has no logins; see test_cs4_current_state_sends_only_reads")
    _history(engine)
    args = ("reconstruct", "current-state", "--verify")
    owner = invoke_json(capsys, *args, "--db", _url(db_url))
    with _select_only_login(engine, db_url) as reader_url:
        reader = invoke_json(capsys, *args, "--db", _url(reader_url))
    assert reader == owner and owner[0] == 1


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
