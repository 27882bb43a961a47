"""`consume --follow` rides out transient database errors (C1): a killed session, a lock that
does not come free in time, a deadlock victim. The batch that met the error rolled back with its
cursor move, so the next round reads the same events again and the ledger ends exactly as an
uninterrupted run's. Any other error still ends the run."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from tests.reconstruct.histories import app_row, insert_app, insert_service, service_row
from tests.reconstruct.test_consumer import folded, stored
from usageledger import db
from usageledger.cli.root import cli, run
from usageledger.clock import SimulatedClock
from usageledger.reconstruct import consumer
from usageledger.schema import app_usage_events, ledger_cursors, service_usage_events

#: Pauses while following are cut to this, so that retries come quickly in a test.
_SHORT = 0.02


def _busy_history(engine: Engine, processes: int = 60) -> None:
    """Each process starts, is resized, and stops; a service per ten processes."""
    rows = []
    for p in range(processes):
        guid = f"p{p}"
        rows += [
            app_row("STARTED", app_guid=guid, minute=p, previous_state="STOPPED"),
            app_row(
                "STARTED",
                app_guid=guid,
                minute=p + 0.5,
                instances=2,
                previous_state="STARTED",
                previous_instances=1,
            ),
            app_row("STOPPED", app_guid=guid, minute=p + 0.7, previous_state="STARTED"),
        ]
    insert_app(engine, *rows)
    insert_service(
        engine,
        *[service_row("CREATED", instance=f"s{s}", minute=s) for s in range(processes // 10)],
    )


def _caught_up(engine: Engine) -> bool:
    """Whether the reference consumer's cursors stand at both tables' newest ids."""
    with db.transaction(engine, read_only=True) as conn:  # SQLite: no write lock wanted
        newest = {
            t.name: conn.execute(sa.select(sa.func.max(t.c.id))).scalar() or 0
            for t in (app_usage_events, service_usage_events)
        }
        cursors: dict[str, int] = dict(
            conn.execute(
                sa.select(ledger_cursors.c.source_table, ledger_cursors.c.position).where(
                    ledger_cursors.c.consumer == consumer.DEFAULT_CONSUMER
                )
            ).all()
        )
    return all(cursors.get(name) == top for name, top in newest.items())


class _Follower:
    """`consumer.follow` in a thread, with short pauses, counting retries."""

    def __init__(self, engine: Engine, clock: SimulatedClock) -> None:
        self.stop = threading.Event()
        self.retries: list[str] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(engine, clock), daemon=True)

    def _run(self, engine: Engine, clock: SimulatedClock) -> None:
        try:
            consumer.follow(
                engine,
                engine,
                clock=clock,
                grace=timedelta(0),
                batch_size=5,
                poll_seconds=_SHORT,
                should_stop=self.stop.is_set,
                on_retry=lambda exc, _pause: self.retries.append(db.one_line(exc)),
                sleep=lambda seconds: time.sleep(min(seconds, _SHORT)),
            )
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive(), "the follower did not stop"
        assert self.error is None, f"the follower failed: {self.error!r}"


def _wait_for(condition: Callable[[], bool], what: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def test_c1_follow_survives_killed_sessions_and_builds_the_same_ledger(
    engine: Engine, ledger: Engine, db_url: URL, backend: db.Backend, clock: SimulatedClock
) -> None:
    """C1: an operator (or a failover) kills the follower's sessions again and again while it
    reads and writes; each failed batch rolled back whole, the follower consumes again, and its
    ledger equals the fold of every event."""
    if backend is db.Backend.SQLITE:
        pytest.skip("SQLite has no sessions to kill; the lock test below covers it")
    _busy_history(engine)
    follower_engine = db.make_engine(db_url)
    sessions: set[int] = set()

    @sa.event.listens_for(follower_engine, "connect")
    def _remember(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        query = "SELECT pg_backend_pid()" if backend is db.Backend.POSTGRESQL else None
        cursor.execute(query or "SELECT CONNECTION_ID()")
        sessions.add(int(cursor.fetchone()[0]))
        cursor.close()

    follower = _Follower(follower_engine, clock)
    follower.thread.start()
    try:
        deadline = time.monotonic() + 90
        while len(follower.retries) < 3 and not _caught_up(engine):
            assert time.monotonic() < deadline, "no kill reached the follower"
            time.sleep(0.03)
            for session in list(sessions):
                with suppress(sa.exc.DBAPIError):  # already gone
                    db.kill_connection(engine, session)
                sessions.discard(session)
        _wait_for(lambda: _caught_up(engine), "the follower caught up")
        follower.finish()
    finally:
        follower.stop.set()
        follower.thread.join(timeout=60)
        follower_engine.dispose()
    assert len(follower.retries) >= 1, "no kill hit the follower while it worked"
    assert stored(ledger) == folded(engine)


def test_c1_follow_waits_out_a_sqlite_write_lock_and_builds_the_same_ledger(
    engine: Engine, ledger: Engine, db_url: URL, backend: db.Backend, clock: SimulatedClock
) -> None:
    """C1: another writer holds SQLite's write lock longer than the follower's busy timeout;
    its batch fails with "database is locked", and it consumes again once the lock is free."""
    if backend is not db.Backend.SQLITE:
        pytest.skip("a SQLite write lock; the servers' lock waits are covered by the kill test")
    _busy_history(engine)
    path = db.sqlite_path(db_url)
    assert path is not None
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    follower_engine = db.make_engine(db_url)
    db.set_sqlite_busy_timeout(follower_engine, 20)
    follower = _Follower(follower_engine, clock)
    follower.thread.start()
    try:
        _wait_for(lambda: len(follower.retries) >= 2, "the follower met the lock twice")
        assert not _caught_up(engine)
        blocker.execute("COMMIT")
        _wait_for(lambda: _caught_up(engine), "the follower caught up")
        follower.finish()
    finally:
        blocker.close()
        follower.stop.set()
        follower.thread.join(timeout=60)
        follower_engine.dispose()
    assert all("database is locked" in retry for retry in follower.retries)
    assert stored(ledger) == folded(engine)


def _deadlock_victim_error(engine: Engine) -> sa.exc.DBAPIError:
    """Two transactions lock two rows in opposite orders; the server picks a victim."""
    a, b = insert_app(
        engine,
        app_row("STARTED", app_guid="a", previous_state="STOPPED"),
        app_row("STARTED", app_guid="b", previous_state="STOPPED"),
    )
    t = app_usage_events
    both_hold = threading.Barrier(2, timeout=30)
    errors: list[sa.exc.DBAPIError] = []

    def lock(first: int, second: int) -> None:
        try:
            with engine.begin() as conn:
                conn.execute(sa.select(t.c.id).where(t.c.id == first).with_for_update())
                both_hold.wait()
                conn.execute(sa.select(t.c.id).where(t.c.id == second).with_for_update())
        except sa.exc.DBAPIError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=lock, args=pair) for pair in ((a, b), (b, a))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert len(errors) == 1, errors
    return errors[0]


def test_c1_transient_errors_are_told_from_real_ones(engine: Engine, backend: db.Backend) -> None:
    """C1: a deadlock victim's error (servers) or "database is locked" (SQLite) is transient;
    a statement the database rejects is not."""
    if backend is db.Backend.SQLITE:
        other = engine.connect()
        other.begin()
        other.execute(sa.text("SELECT 1"))  # this project's SQLite BEGIN takes the write lock
        quick = db.make_engine(engine.url)
        db.set_sqlite_busy_timeout(quick, 10)
        try:
            with pytest.raises(sa.exc.OperationalError) as caught, quick.begin() as conn:
                conn.execute(app_usage_events.delete())
        finally:
            other.rollback()
            other.close()
            quick.dispose()
        transient: sa.exc.DBAPIError = caught.value
    else:
        transient = _deadlock_victim_error(engine)
    assert db.is_transient_error(transient), db.one_line(transient)
    with pytest.raises(sa.exc.DBAPIError) as rejected, engine.connect() as conn:
        conn.execute(sa.text("SELECT no_such_column FROM app_usage_events"))
    assert not db.is_transient_error(rejected.value)


def _connect_error(url: URL) -> sa.exc.DBAPIError:
    engine = db.make_engine(url, poolclass=sa.pool.NullPool)
    try:
        with pytest.raises(sa.exc.DBAPIError) as caught, engine.connect():
            pass
    finally:
        engine.dispose()
    return caught.value


def test_c1_a_server_that_is_down_is_transient_a_database_that_is_gone_is_not(
    engine: Engine, backend: db.Backend
) -> None:
    """C1: a follower retries while the server does not answer, but not when the server says
    the database or the login does not exist: that will not pass by waiting."""
    if backend is db.Backend.SQLITE:
        pytest.skip("SQLite has no server to be down")
    down = _connect_error(engine.url.set(port=9))
    gone = _connect_error(engine.url.set(database="ul_no_such_database"))
    nobody = _connect_error(engine.url.set(username="ul_no_such_login"))
    assert db.is_transient_error(down), db.one_line(down)
    assert not db.is_transient_error(gone), db.one_line(gone)
    assert not db.is_transient_error(nobody), db.one_line(nobody)


def test_c1_follow_ends_on_an_error_that_is_not_transient(clock: SimulatedClock) -> None:
    """C1: only transient errors are retried; any other database error ends the follower."""
    broken = sa.exc.ProgrammingError("SELECT …", {}, Exception("no such table: ledger_cursors"))
    with (
        mock.patch.object(consumer, "consume", side_effect=broken) as consume,
        pytest.raises(sa.exc.ProgrammingError),
    ):
        consumer.follow(
            mock.Mock(), mock.Mock(), clock=clock, poll_seconds=0, sleep=lambda _s: None
        )
    assert consume.call_count == 1


#: What a connection that died mid-batch looks like to SQLAlchemy.
_LOST = sa.exc.OperationalError(
    "SELECT …", {}, Exception("server closed the connection"), connection_invalidated=True
)


def _interrupt_at_second_pause(pauses: list[float]) -> Callable[[float], None]:
    """A `time.sleep` for `follow` that records each pause and stops the run (as Ctrl-C) at
    the second: the retry's pause, then the poll after the good round."""

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 2:
            raise KeyboardInterrupt

    return pause


def _follow_argv(db_url: URL, *, poll_seconds: float) -> list[str]:
    """`consume --follow` on `db_url`, no grace period, JSON summary."""
    url = db_url.render_as_string(hide_password=False)
    follow = ["--follow", "--grace-seconds", "0", "--poll-seconds", str(poll_seconds)]
    return ["consume", "--db", url, *follow, "--json"]


def test_c1_consume_follow_warns_on_a_transient_error_and_goes_on(
    engine: Engine, ledger: Engine, db_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    """C1, §9: `consume --follow` meets a lost connection, says so on stderr in one line, consumes
    again, and stops cleanly on Ctrl-C with every event applied."""
    _busy_history(engine, processes=4)
    real_consume = consumer.consume
    calls: list[str] = []

    def flaky(*args: Any, **kwargs: Any) -> consumer.ConsumeResult:
        calls.append("consume")
        if len(calls) == 1:
            raise _LOST
        return real_consume(*args, **kwargs)

    pauses: list[float] = []
    pause = _interrupt_at_second_pause(pauses)

    with (
        mock.patch.object(consumer, "consume", side_effect=flaky),
        mock.patch("usageledger.reconstruct.consumer.time.sleep", side_effect=pause),
    ):
        code = run(cli, _follow_argv(db_url, poll_seconds=0.5))
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert code == 0 and doc["interrupted"] is True and doc["events_applied"] == 12
    assert pauses == [1.0, 0.5]
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: database error, consuming again in 1.0s: server closed the connection"
    ]
    assert sum("consuming again" in line for line in captured.err.splitlines()) == 1
    assert stored(ledger) == folded(engine)


def test_c1_consume_follow_stops_cleanly_on_sigterm(
    engine: Engine, ledger: Engine, db_url: URL
) -> None:
    """C1, §9: a supervisor stops `consume --follow` with SIGTERM; it stops as on Ctrl-C, with
    exit 0, its summary on stdout, and every event applied kept."""
    _busy_history(engine, processes=4)
    child = subprocess.Popen(
        [sys.executable, "-m", "usageledger", *_follow_argv(db_url, poll_seconds=0.05)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(
            lambda: child.poll() is not None or _caught_up(engine), "the follower caught up", 60
        )
        assert child.poll() is None, f"the follower stopped by itself: {child.communicate()}"
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    doc = json.loads(out)
    assert doc["interrupted"] is True and doc["events_applied"] == 12
    assert stored(ledger) == folded(engine)


def test_c1_consume_follow_summary_counts_batches_of_a_round_cut_short(
    engine: Engine, ledger: Engine, db_url: URL, capsys: pytest.CaptureFixture[str]
) -> None:
    """C1, §9: the app table's batches commit, then the service table's first batch loses its
    connection; the summary still counts the committed batches, and the retry adds the rest."""
    _busy_history(engine, processes=10)  # 30 app events, 1 service event
    real_batch = consumer.consume_batch
    failed: list[str] = []

    def flaky(*args: Any, **kwargs: Any) -> consumer.BatchResult:
        if kwargs["table"] == "service_usage_events" and not failed:
            failed.append("service")
            raise _LOST
        return real_batch(*args, **kwargs)

    pauses: list[float] = []
    pause = _interrupt_at_second_pause(pauses)

    with (
        mock.patch.object(consumer, "consume_batch", side_effect=flaky),
        mock.patch("usageledger.reconstruct.consumer.time.sleep", side_effect=pause),
    ):
        code = run(cli, _follow_argv(db_url, poll_seconds=0.5))
    doc = json.loads(capsys.readouterr().out)
    assert failed == ["service"]
    assert code == 0 and doc["interrupted"] is True
    assert doc["events_applied"] == 31
    assert doc["positions"] == {"app_usage_events": 30, "service_usage_events": 1}
    assert stored(ledger) == folded(engine)
