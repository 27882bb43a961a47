"""db.py: URLs, engines, transactions, database time, fresh guids and the run lock (issue 2, B8)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from tests.conftest import HOST_TAG, pid_alive, sweep_leftover_databases
from usageledger import db
from usageledger.errors import BadInputError, DatabaseUnavailableError, LockHeldError
from usageledger.schema import organizations

LOCK = "test-run-lock"


# --- URLs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["not a url", "foo://x/y", "oracle://scott:tiger@host/db", "postgresql+asyncpg://u@h/d"],
)
def test_bad_urls_are_one_line_bad_input(url: str) -> None:
    """§9 bad input: an unparsable or unsupported URL is one line naming what to use (exit 2 on
    the command line), and a password in it is never shown."""
    with pytest.raises(BadInputError) as info:
        db.make_engine(url)
    message = str(info.value)
    assert "\n" not in message
    assert "tiger" not in message


def test_unreachable_server_masks_the_password() -> None:
    """§9 bad input: an unreachable database is one line, and the password is never shown."""
    engine = db.make_engine("postgresql+psycopg://postgres:hunter2@127.0.0.1:9/nowhere")
    with pytest.raises(DatabaseUnavailableError) as info:
        db.check_connection(engine)
    assert "hunter2" not in str(info.value)
    assert "***" in str(info.value)
    assert "\n" not in str(info.value)


def test_mysql_server_is_refused_in_one_line(db_url: URL, backend: db.Backend) -> None:
    """§9 bad input: a MySQL server is not a MariaDB one (no utf8mb4_nopad_bin collation, other
    locking), so every command stops at its connection check with one line naming the server.
    No MySQL server runs here: the dialect is told it found one, as it would after connecting
    to MySQL."""
    if backend is not db.Backend.MARIADB:
        pytest.skip("about the MariaDB/MySQL dialect")
    engine = db.make_engine(db_url)
    try:
        db.check_connection(engine)  # MariaDB itself passes
        setattr(engine.dialect, "is_mariadb", False)  # noqa: B010 (Dialect does not declare it)
        with pytest.raises(BadInputError) as raised:
            db.check_connection(engine)
    finally:
        engine.dispose()
    message = str(raised.value)
    assert "\n" not in message and "is MySQL" in message and "not MariaDB" in message


def test_missing_sqlite_file_is_not_created(tmp_path: object) -> None:
    """§9 bad input, nothing written: a SQLite path that does not exist is an error naming
    `usageledger db upgrade`, and no empty file is left."""
    path = f"{tmp_path}/absent.db"
    with pytest.raises(DatabaseUnavailableError, match="usageledger db upgrade"):
        db.make_engine(f"sqlite:///{path}")
    assert not os.path.exists(path)


def test_default_url_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """§9: `--db` beats USAGELEDGER_DB, which beats the default SQLite file in the working
    directory."""
    monkeypatch.delenv(db.ENV_DB, raising=False)
    assert db.resolve_url(None) == "sqlite:///usageledger.db"
    monkeypatch.setenv(db.ENV_DB, "postgresql://u@h/d")
    assert db.resolve_url(None) == "postgresql://u@h/d"
    assert db.resolve_url("sqlite:///x.db") == "sqlite:///x.db"
    assert db.parse_url("postgresql://u@h/d").drivername == "postgresql+psycopg"
    assert db.parse_url("mariadb://u@h/d").drivername == "mariadb+pymysql"


# --- connections and transactions ---------------------------------------------------------


def test_database_now_is_utc(engine: Engine) -> None:
    """P5: the database clock reads the server's time as an aware UTC datetime."""
    with engine.connect() as conn:
        now = db.database_now(conn)
    assert now.tzinfo is not None and now.utcoffset() == timedelta(0)
    assert abs(now - datetime.now(UTC)) < timedelta(minutes=2)


def test_sql_new_guid_is_fresh_per_row(engine: Engine) -> None:
    """P5: the SQL fresh-UUID expression yields a different valid UUID on every row."""
    with engine.connect() as conn:
        values = (
            conn.execute(
                sa.select(db.sql_new_guid(conn)).select_from(
                    sa.union_all(
                        *(sa.select(sa.literal(i).label("n")) for i in range(5))
                    ).subquery()
                )
            )
            .scalars()
            .all()
        )
    assert len(set(values)) == 5
    for value in values:
        uuid.UUID(value)


def test_isolation_applies_to_one_transaction(engine: Engine, backend: db.Backend) -> None:
    """B3 and C1: a transaction's own isolation level (a consumer batch's READ COMMITTED on
    MariaDB, whose default is REPEATABLE READ) applies to that one transaction, and the
    connection's next transaction has the server's default level again. Shown by behaviour: a
    second read in the transaction sees a row another connection committed after the first
    read only at READ COMMITTED."""
    if backend is db.Backend.SQLITE:
        pytest.skip("SQLite transactions are always serializable")

    def sees_a_commit_made_between_two_reads(conn: sa.Connection) -> bool:
        conn.exec_driver_sql("SELECT 1").scalar()  # as a batch begins: reads no table yet
        first = conn.execute(sa.select(sa.func.count()).select_from(organizations)).scalar()
        with engine.begin() as other:
            other.execute(organizations.insert().values(guid=db.new_guid(), name="o"))
        second = conn.execute(sa.select(sa.func.count()).select_from(organizations)).scalar()
        return bool(second != first)

    # Ask for the level that is not the backend's default, so the change shows.
    read_committed_by_default = backend is db.Backend.POSTGRESQL
    wanted = (
        db.Isolation.REPEATABLE_READ if read_committed_by_default else db.Isolation.READ_COMMITTED
    )
    with db.transaction(engine, isolation=wanted) as conn:
        inside = sees_a_commit_made_between_two_reads(conn)
    with engine.connect() as conn, conn.begin():
        after = sees_a_commit_made_between_two_reads(conn)
    assert inside is (wanted is db.Isolation.READ_COMMITTED)
    assert after is read_committed_by_default


#: How each server refuses a write in a transaction declared READ ONLY.
READ_ONLY_REFUSAL = {
    db.Backend.POSTGRESQL: "cannot execute INSERT in a read-only transaction",
    db.Backend.MARIADB: "Cannot execute statement in a READ ONLY transaction",
}


def test_read_only_transaction_refuses_writes(engine: Engine) -> None:
    """CS4: the read-only transactions current-state opens cannot write on PostgreSQL and
    MariaDB (the server refuses the INSERT as a write in a read-only transaction, not for any
    other reason); on SQLite they take no write lock, so a writer can commit meanwhile."""
    backend = db.backend_of(engine)
    if backend is db.Backend.SQLITE:
        with db.transaction(engine, read_only=True) as reader:
            reader.execute(sa.text("SELECT count(*) FROM processes")).scalar()
            with db.transaction(engine) as writer:
                writer.execute(sa.text("INSERT INTO organizations (guid, name) VALUES ('o', 'o')"))
        return
    with (
        pytest.raises(sa.exc.DBAPIError, match=re.escape(READ_ONLY_REFUSAL[backend])),
        db.transaction(engine, read_only=True) as conn,
    ):
        conn.execute(sa.text("INSERT INTO organizations (guid, name) VALUES ('o', 'o')"))


def test_sqlite_is_set_up_for_concurrent_use(engine: Engine, backend: db.Backend) -> None:
    """B8 and the SQLite lock set-up (S3: one writer at a time): WAL journal, a busy timeout,
    foreign keys on, and writers begin IMMEDIATE so a second writer waits at BEGIN instead of
    failing halfway through its transaction."""
    if backend is not db.Backend.SQLITE:
        pytest.skip("SQLite only")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.SQLITE_BUSY_TIMEOUT_MS
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    fast = db.make_engine(engine.url, connect_args={"timeout": 0.05})
    fast_busy = 50

    @sa.event.listens_for(fast, "connect")
    def _short_busy(dbapi_connection: object, _record: object) -> None:
        dbapi_connection.execute(f"PRAGMA busy_timeout = {fast_busy}")  # type: ignore[attr-defined]

    try:
        # The first writer holds the write lock from BEGIN on, before it wrote anything.
        with (
            db.transaction(engine),
            pytest.raises(sa.exc.OperationalError, match="locked"),
            db.transaction(fast),
        ):
            pass
    finally:
        fast.dispose()


# --- the run lock (SPEC B8) ---------------------------------------------------------------


def test_b8_run_lock_try_fails_while_held(engine: Engine, db_url: URL) -> None:
    """B8: while one holder has the run lock, a try from another connection fails fast."""
    other = db.make_engine(db_url)
    try:
        with db.run_lock(engine, LOCK, wait=False):
            assert db.try_run_lock(other, LOCK) is None
            with pytest.raises(LockHeldError, match="--wait"):
                db.run_lock(other, LOCK, wait=False)
        again = db.try_run_lock(other, LOCK)
        assert again is not None
        again.release()
    finally:
        other.dispose()


def test_b8_run_lock_wait_succeeds_after_release(engine: Engine, db_url: URL) -> None:
    """B8: a waiting taker gets the lock as soon as the holder releases it, not before."""
    other = db.make_engine(db_url)
    got = threading.Event()
    waiter_lock: list[db.RunLock] = []

    def waiter() -> None:
        waiter_lock.append(db.wait_run_lock(other, LOCK))
        got.set()

    holder = db.run_lock(engine, LOCK, wait=False)
    thread = threading.Thread(target=waiter, daemon=True)
    try:
        thread.start()
        assert not got.wait(1.0), "the waiter got the lock while it was held"
        holder.release()
        assert got.wait(15.0), "the waiter did not get the lock after release"
    finally:
        holder.release()
        thread.join(20)
        for lock in waiter_lock:
            lock.release()
        other.dispose()


def test_b8_run_lock_is_freed_when_the_holder_connection_is_killed(
    engine: Engine, db_url: URL, backend: db.Backend
) -> None:
    """B8: a holder whose session dies (pg_terminate_backend / KILL) frees the lock."""
    if backend is db.Backend.SQLITE:
        pytest.skip("SQLite has no server session; see the killed-process test")
    holder = db.run_lock(engine, LOCK, wait=False)
    assert holder.connection is not None
    session = db.connection_id(holder.connection)
    other = db.make_engine(db_url)
    try:
        assert db.try_run_lock(other, LOCK) is None
        db.kill_connection(other, session)
        deadline = time.monotonic() + 10
        lock = None
        while lock is None and time.monotonic() < deadline:
            lock = db.try_run_lock(other, LOCK)
        assert lock is not None, "the lock outlived its killed holder"
        lock.release()
    finally:
        holder.release()
        other.dispose()


def test_b8_run_lock_is_freed_when_the_holder_process_dies(db_url: URL, engine: Engine) -> None:
    """B8: a holder process killed with SIGKILL (no cleanup runs) leaves the lock free."""
    script = textwrap.dedent(
        f"""
        import sys
        from usageledger import db
        engine = db.make_engine({db_url.render_as_string(hide_password=False)!r})
        lock = db.run_lock(engine, {LOCK!r}, wait=False)
        print("held", flush=True)
        sys.stdin.read()
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "held"
        assert db.try_run_lock(engine, LOCK) is None
        child.kill()
        child.wait(10)
        deadline = time.monotonic() + 10
        lock = None
        while lock is None and time.monotonic() < deadline:
            lock = db.try_run_lock(engine, LOCK)
        assert lock is not None, "the lock outlived its killed holder process"
        lock.release()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


def test_b8_run_locks_of_different_databases_are_independent(
    engine: Engine, empty_db_url: URL
) -> None:
    """B8: the lock is per database (MariaDB's GET_LOCK is server-wide: the name is qualified)."""
    other = db.make_engine(empty_db_url, create=True)
    try:
        with db.run_lock(engine, LOCK, wait=False):
            lock = db.try_run_lock(other, LOCK)
            assert lock is not None
            lock.release()
    finally:
        other.dispose()


def test_lock_wait_probe_sees_a_wait_that_began_while_it_was_polling(
    engine: Engine, backend: db.Backend
) -> None:
    """R8, S-rules: the lock-wait probe (crash tests, the simulator's scheduler) reports a row-lock
    wait that starts while it is being polled every 10 ms, and stops reporting it once the
    holder releases. MariaDB's INFORMATION_SCHEMA lock tables fail this: polled faster than
    their 0.1 s cache allows, they keep showing the moment before the wait."""
    if backend is db.Backend.SQLITE:
        pytest.skip("SQLite has no server session to inspect")
    t = sa.Table(
        "lock_probe",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    )
    t.create(engine)
    try:
        _probe_a_row_lock_wait(engine, t)
    finally:
        t.drop(engine)


def _probe_a_row_lock_wait(engine: Engine, t: sa.Table) -> None:
    row_id = 1
    with engine.begin() as conn:
        conn.execute(t.insert(), {"id": row_id})
    waiter_session: list[int] = []
    go = threading.Event()

    def wait_for_row() -> None:
        with engine.connect() as conn:
            waiter_session.append(db.connection_id(conn))
            conn.rollback()
            go.wait(10)
            with conn.begin():
                conn.execute(t.delete().where(t.c.id == row_id))

    with engine.connect() as holder, holder.begin():
        holder.execute(sa.select(t.c.id).where(t.c.id == row_id).with_for_update()).all()
        waiter = threading.Thread(target=wait_for_row)
        waiter.start()
        while not waiter_session:
            time.sleep(0.01)
        assert not db.is_waiting_for_lock(engine, waiter_session[0])
        go.set()
        deadline = time.monotonic() + 10
        seen = False
        while not seen and time.monotonic() < deadline:
            seen = db.is_waiting_for_lock(engine, waiter_session[0])
            time.sleep(0.01)
        assert seen, "the probe never saw the row-lock wait"
    waiter.join(10)
    assert not waiter.is_alive()
    assert not db.is_waiting_for_lock(engine, waiter_session[0])


def test_innodb_status_parsing_finds_only_waiting_threads() -> None:
    """S3 (the scheduler detects a step that blocks on a lock): the MariaDB probe reads the
    thread ids of transactions in LOCK WAIT from InnoDB's status, and no others."""
    status = textwrap.dedent(
        """\
        LIST OF TRANSACTIONS FOR EACH SESSION:
        ---TRANSACTION 11311, ACTIVE 1 sec starting index read
        mysql tables in use 1, locked 1
        LOCK WAIT 2 lock struct(s), heap size 1128, 1 row lock(s)
        MariaDB thread id 428, OS thread handle 1, query id 41197 127.0.0.1 root Updating
        delete from t where id=1
        ------- TRX HAS BEEN WAITING 1002074 us FOR THIS LOCK TO BE GRANTED:
        ---TRANSACTION 11310, ACTIVE 2 sec
        2 lock struct(s), heap size 1128, 1 row lock(s)
        MariaDB thread id 427, OS thread handle 2, query id 41195 127.0.0.1 root User sleep
        --------
        """
    )
    assert db.innodb_lock_waiting_threads(status) == {428}
    assert db.innodb_lock_waiting_threads("no transactions") == set()


def test_r11_stream_rows_reads_one_statement_in_chunks(engine: Engine) -> None:
    """R11 (the decision walk's read): streamed rows equal a plain read, in chunks of at most
    the size asked; an aware, non-UTC timestamp in the statement compares as the column's own
    bind conversion would; a stream closed early leaves the connection usable."""
    from usageledger.schema import app_usage_events as t

    base = datetime(2026, 1, 1, 7, 50, tzinfo=UTC)
    rows = [
        {
            "guid": str(uuid.uuid4()),
            "created_at": base + timedelta(minutes=i),
            "instance_count": 1,
            "memory_in_mb_per_instance": 1,
            "state": "STARTED",
            "app_guid": f"app-{i}",
            "app_name": "a",
            "space_guid": "s",
            "space_name": "s",
            "org_guid": "o",
        }
        for i in range(23)
    ]
    with engine.begin() as conn:
        conn.execute(t.insert(), rows)
    # 10:00 at UTC+2 is 08:00 UTC: the rows of 07:50..07:59 are old, the 13 after are not
    # (read as a naive 10:00, every row would be old).
    cutoff = datetime(2026, 1, 1, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    query = sa.select(t.c.id, sa.case((t.c.created_at < cutoff, 1), else_=0)).order_by(t.c.id)
    with engine.connect() as conn:
        expected = [tuple(r) for r in conn.execute(query)]
        chunks = list(db.stream_rows(conn, query, 5))
        assert [len(c) for c in chunks] == [5, 5, 5, 5, 3]
        assert [tuple(r) for c in chunks for r in c] == expected
        assert [old for _, old in expected] == [1] * 10 + [0] * 13
        early = db.stream_rows(conn, query, 5)
        next(early)
        early.close()
        assert conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one() == 23


def test_r11_stream_rows_without_chunked_streaming(
    engine: Engine, backend: db.Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R11: where psycopg cannot stream in chunks (libpq older than 17), PostgreSQL reads the
    same rows through a server-side cursor, chunk by chunk, inside the caller's transaction."""
    if backend is not db.Backend.POSTGRESQL:
        pytest.skip("the fallback is PostgreSQL's")
    monkeypatch.setattr(db, "psycopg_streams_in_chunks", lambda: False)
    query = sa.select(sa.func.generate_series(1, 12).label("n"))
    with engine.connect() as conn, conn.begin():
        chunks = list(db.stream_rows(conn, query, 5))
    assert [[row[0] for row in chunk] for chunk in chunks] == [
        [1, 2, 3, 4, 5],
        [6, 7, 8, 9, 10],
        [11, 12],
    ]


# --- the suite's own hygiene: databases a killed run left behind ----------------------------


def _a_dead_pid() -> int:
    """The id of a process that ran here and has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(30)
    assert not pid_alive(child.pid)
    return child.pid


@pytest.mark.parametrize(
    "values",
    [[""], ["", "b"], ["b", ""], ["a", "b"], [], ["a\x1fb", ""]],
    ids=["empty-alone", "empty-first", "empty-last", "plain", "none", "separator"],
)
def test_c1_text_in_matches_exactly_the_listed_strings(engine: Engine, values: list[str]) -> None:
    """C1/C11: the consumer takes a batch's stored states with `text_in` over their keys; a
    key of '' (a legacy row's) is a key like any other. On PostgreSQL the list travels as one
    joined string, and the list of one '' once became the empty array, so the consumer found
    no state, wrote a second one and stopped on the duplicate key for good."""
    stored = ["", "a", "b", "a\x1fb"]
    guid = organizations.c.guid
    with engine.begin() as conn:
        conn.execute(organizations.insert(), [{"guid": g, "name": "org"} for g in stored])
        found = conn.execute(sa.select(guid).where(db.text_in(conn, guid, values))).scalars()
        assert sorted(found) == sorted(set(values) & set(stored))


def test_sweep_drops_the_databases_of_runs_that_are_gone(
    backend_url: str, backend: db.Backend
) -> None:
    """Test isolation (no SPEC rule; the house rule that tests create and drop their own
    databases): at session start the suite drops this machine's `ul_test_<pid>_…` databases
    whose process is gone, and keeps those of a live run, of another machine, and names of
    another shape."""
    if backend is db.Backend.SQLITE:
        pytest.skip("SQLite test databases are files in pytest's own rotated temporary folders")
    dead, live = _a_dead_pid(), os.getpid()
    other_host = "000000" if HOST_TAG != "000000" else "ffffff"
    names = {
        "dead run": f"ul_test_{dead}_main_{HOST_TAG}_0f0f0f_main",
        "dead xdist worker": f"ul_test_{dead}_gw3_{HOST_TAG}_0f0f0f_e7",
        "live run": f"ul_test_{live}_sweep_{HOST_TAG}_0f0f0f_main",
        "another machine's run": f"ul_test_{dead}_main_{other_host}_0f0f0f_main",
        "another shape": f"ul_testdata_{dead}_main",
    }
    urls = {what: db.create_database(backend_url, name) for what, name in names.items()}
    try:
        dropped = sweep_leftover_databases(backend_url)
        left = {
            what
            for what, url in urls.items()
            if db.display_url(url) not in dropped and _database_exists(url)
        }
        assert left == {"live run", "another shape", "another machine's run"}
        assert {db.display_url(urls[w]) for w in ("dead run", "dead xdist worker")} <= set(dropped)
    finally:
        for url in urls.values():  # dropping one that is gone already is no error
            db.drop_database(url)
    assert not set(names.values()) & set(db.database_names(backend_url))


def _database_exists(url: URL) -> bool:
    return url.database in db.database_names(url)


def test_sweep_of_a_server_that_does_not_answer_is_no_error() -> None:
    """Test isolation (no SPEC rule): a server that refuses the sweep's connection leaves the
    run to go on (its backend is then skipped, or fails the run under CI, as before); and a
    process that is gone is told from one that runs."""
    assert sweep_leftover_databases("postgresql+psycopg://postgres:hunter2@127.0.0.1:9/x") == []
    assert sweep_leftover_databases("not a url") == []
    assert pid_alive(os.getpid()) and not pid_alive(_a_dead_pid())
