"""The CLI skeleton and `usageledger db …`: JSON output, exit codes, one-line errors, masked
passwords (SPEC §9)."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from usageledger import db, migrations
from usageledger.cli import cli
from usageledger.cli.root import run


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = run(cli, list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _url(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def test_db_upgrade_current_downgrade_json(
    empty_db_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    """§9: `db upgrade`, `db current` and `db downgrade` print one JSON document with --json."""
    url = _url(empty_db_url)
    code, out, _ = _run(capsys, "db", "upgrade", "--db", url, "--json")
    assert code == 0
    assert json.loads(out)["revision"] == migrations.head_revision()

    code, out, _ = _run(capsys, "db", "current", "--db", url, "--json")
    assert code == 0
    document = json.loads(out)
    assert document["up_to_date"] is True
    assert document["revision"] == document["head"]

    code, out, _ = _run(capsys, "db", "downgrade", "base", "--db", url, "--json")
    assert code == 0
    assert json.loads(out)["revision"] is None

    code, out, _ = _run(capsys, "db", "current", "--db", url, "--json")
    assert json.loads(out) == {
        "database": db.display_url(empty_db_url),
        "revision": None,
        "head": migrations.head_revision(),
        "up_to_date": False,
        "known_revision": True,
    }


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["db", "current", "--db", "nonsense"], "cannot parse the database URL"),
        (
            ["db", "current", "--db", "postgresql+psycopg://u:hunter2@127.0.0.1:port/db"],
            "cannot parse the database URL",
        ),
        (["db", "current", "--db", "u:hunter2@127.0.0.1/db"], "cannot parse the database URL"),
        (
            ["db", "current", "--db", "postgresql+psycopg//u:hunter2@127.0.0.1/db"],
            "cannot parse the database URL",
        ),
        (
            # An unencoded @ in the password: its tail would become the host.
            ["db", "current", "--db", "postgresql+psycopg://u:x@hunter2@127.0.0.1:9/db"],
            "percent-encoded as %40",
        ),
        (
            ["db", "current", "--db", "mariadb+pymysql://root:hunter2@127.0.0.1:3306/x?foo=1"],
            "the driver refused the URL's options",
        ),
        (["db", "current", "--db", "foo://x/y"], "unsupported database URL scheme"),
        (
            ["db", "current", "--db", "postgresql+psycopg://postgres:hunter2@127.0.0.1:9/x"],
            "cannot connect",
        ),
        (
            ["db", "upgrade", "--db", "mariadb+pymysql://root:hunter2@127.0.0.1:9/x", "--json"],
            "cannot connect",
        ),
        (["db", "downgrade"], "Missing argument"),
        (["db", "current", "--no-such-option"], "No such option"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """§9: bad usage or input exits 2 with one `error: …` line, no traceback, no password."""
    code, out, err = _run(capsys, *args)
    assert code == 2
    assert out == ""
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and needle in errors[0]
    assert "Traceback" not in err
    assert "hunter2" not in err


def test_missing_sqlite_database_is_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """§9: `db current` on a path with no database says to run `db upgrade` and creates nothing."""
    target = tmp_path / "absent.db"
    code, _, err = _run(capsys, "db", "current", "--db", f"sqlite:///{target}")
    assert code == 2
    assert "usageledger db upgrade" in err
    assert not target.exists()


def test_db_downgrade_unknown_revision(db_url: URL, capsys: pytest.CaptureFixture[str]) -> None:
    """§9: an unknown revision is bad input (exit 2) and the schema stays at head."""
    code, _, err = _run(capsys, "db", "downgrade", "nope", "--db", _url(db_url))
    assert code == 2
    assert err.startswith("error: ")
    engine = db.make_engine(db_url)
    try:
        assert migrations.current(engine).up_to_date
    finally:
        engine.dispose()


def test_console_script_and_module_entry_points(tmp_path: Path) -> None:
    """§9 entry points: the one console script `usageledger` and `python -m usageledger` both
    run the CLI; without `--db` or USAGELEDGER_DB the database is a SQLite file in the working
    directory."""
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    module = subprocess.run(
        [sys.executable, "-m", "usageledger", "db", "upgrade", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert module.returncode == 0, module.stderr
    assert (tmp_path / "usageledger.db").exists()
    script = Path(sys.executable).parent / "usageledger"
    current = subprocess.run(
        [str(script), "db", "current", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert current.returncode == 0, current.stderr
    assert json.loads(current.stdout)["up_to_date"] is True


@pytest.mark.parametrize("command", [["cleanup"], ["backfill"], ["reconstruct", "current-state"]])
def test_empty_sqlite_file_is_refused_and_left_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """§9 bad input: a command on an empty SQLite file says the schema is missing and writes
    nothing, not even the WAL header: exit 2, one line, the file still 0 bytes."""
    path = tmp_path / "empty.db"
    path.touch()
    code, out, err = _run(capsys, *command, "--db", f"sqlite:///{path}")
    assert (code, out) == (2, "")
    assert err.startswith("error: ") and "usageledger db upgrade" in err and err.count("\n") == 1
    assert path.stat().st_size == 0


def test_non_empty_sqlite_file_without_the_schema_is_left_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """§9 nothing written: a SQLite file holding someone else's tables is refused (exit 2)
    without switching it to WAL (which would rewrite its header); `db current` reads it."""
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
        conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    before = hashlib.sha1(path.read_bytes()).hexdigest()
    for command in (["cleanup"], ["reconstruct", "current-state"], ["backfill"]):
        code, out, err = _run(capsys, *command, "--db", f"sqlite:///{path}")
        assert (code, out) == (2, ""), err
        assert err.startswith("error: ")
    # `db current` only reports that the schema is missing; it reads, and writes nothing either.
    assert _run(capsys, "db", "current", "--db", f"sqlite:///{path}")[0] == 0
    assert hashlib.sha1(path.read_bytes()).hexdigest() == before
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_upgrade_refuses_a_database_that_already_has_our_table_names(
    empty_db_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    """§9: `db upgrade` on a database that already holds a table usageledger would create, with
    no usageledger revision (Cloud Controller's own database, or a first upgrade that failed
    half-way on MariaDB, whose DDL is not transactional) is bad input: exit 2, one line naming
    the table, and nothing created."""
    engine = db.make_engine(empty_db_url, create=True)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE service_usage_events (id INTEGER PRIMARY KEY)"))
        code, out, err = _run(capsys, "db", "upgrade", "--db", _url(empty_db_url))
        assert (code, out) == (2, ""), err
        assert err.startswith("error: ") and err.count("\n") == 1
        assert "service_usage_events" in err and "empty database" in err
        assert set(sa.inspect(engine).get_table_names()) == {"service_usage_events"}
    finally:
        engine.dispose()


def test_a_revision_from_a_newer_release_is_named_as_such(
    db_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    """§9: a database migrated by a newer usageledger (a revision this release does not ship)
    is refused with a remedy that works (use that release), not `run db upgrade`, which would
    then fail; `db current` says the same. Nothing is written."""
    engine = db.make_engine(db_url)
    head = migrations.head_revision()
    version = sa.table("alembic_version", sa.column("version_num"))
    try:
        with engine.begin() as conn:
            conn.execute(version.update().values(version_num="9999_from_the_future"))
        for command in (["cleanup"], ["db", "upgrade"]):
            code, out, err = _run(capsys, *command, "--db", _url(db_url))
            assert (code, out) == (2, ""), err
            assert "newer usageledger" in err and "db upgrade`" not in err
        code, out, _ = _run(capsys, "db", "current", "--db", _url(db_url), "--json")
        assert code == 0 and json.loads(out)["known_revision"] is False
        assert migrations.current(engine).current == "9999_from_the_future"
    finally:
        with engine.begin() as conn:
            conn.execute(version.update().values(version_num=head))
        engine.dispose()
