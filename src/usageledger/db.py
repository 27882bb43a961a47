"""Engines from URLs, and every difference between SQLite, PostgreSQL and MariaDB in one place.

Everything else in the project calls the named functions here (`transaction`, `database_now`,
`sql_new_guid`, `try_run_lock`, `kill_connection` …) instead of asking which dialect it runs on.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, TypeVar

import attrs
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from usageledger.errors import BadInputError, DatabaseUnavailableError, LockHeldError

log = logging.getLogger(__name__)

ENV_DB = "USAGELEDGER_DB"
DEFAULT_DB_URL = "sqlite:///usageledger.db"

#: SQLite waits this long for another writer before giving up with "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: A cleanup's own SQLite connection, for the run (see `bulk_deletes`): its page cache in KiB
#: (SQLite's default is 2 MiB) ...
SQLITE_BULK_CACHE_KIB = 64 * 1024
#: ... and the WAL size, in pages, at which its commits checkpoint (SQLite's default: 1,000).
SQLITE_BULK_AUTOCHECKPOINT_PAGES = 20_000
#: MariaDB's GET_LOCK is asked with this positive timeout and retried while waiting (SPEC B8:
#: a negative timeout returns NULL on MariaDB instead of waiting).
MARIADB_LOCK_POLL_SECONDS = 5
#: How often a PostgreSQL run lock is tried again while another session holds it.
POSTGRESQL_LOCK_POLL_SECONDS = 0.2


class Backend(StrEnum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"
    MARIADB = "mariadb"


class Isolation(StrEnum):
    """Transaction isolation levels the project asks for explicitly."""

    READ_COMMITTED = "READ COMMITTED"
    REPEATABLE_READ = "REPEATABLE READ"
    SERIALIZABLE = "SERIALIZABLE"


_DRIVERS = {
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mariadb": "mariadb+pymysql",
    "mariadb+pymysql": "mariadb+pymysql",
    "mysql": "mysql+pymysql",
    "mysql+pymysql": "mysql+pymysql",
}


# --- URLs ---------------------------------------------------------------------------------


def resolve_url(url: str | None) -> str:
    """The URL to use: the one given, else `$USAGELEDGER_DB`, else the default SQLite file."""
    return url or os.environ.get(ENV_DB) or DEFAULT_DB_URL


def parse_url(url: str | URL) -> URL:
    """Parse and normalise a database URL, or raise a one-line BadInputError.

    A URL that does not parse is never echoed back: where its password starts and ends is
    exactly what is unclear then.
    """
    try:
        parsed = make_url(url) if isinstance(url, str) else url
        parsed.port  # noqa: B018 -- a non-numeric port only fails when read
    except (ArgumentError, ValueError):
        raise BadInputError(
            f"cannot parse the database URL{_scheme_hint(str(url))}; expected for example "
            "sqlite:///usageledger.db, postgresql+psycopg://user@host/db or "
            "mariadb+pymysql://user@host/db (a password containing @, : or / must be "
            "percent-encoded)"
        ) from None
    if parsed.host is not None and "@" in parsed.host:
        raise BadInputError(
            f"cannot parse the database URL{_scheme_hint(str(url))}: its host contains '@'; "
            "a password containing @ must be percent-encoded as %40"
        )
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise BadInputError(
            f"unsupported database URL scheme {parsed.drivername!r}; use sqlite:///FILE, "
            "postgresql+psycopg://… or mariadb+pymysql://…"
        )
    parsed = parsed.set(drivername=driver)
    if driver.endswith("+pymysql") and "charset" not in parsed.query:
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    return parsed


def _scheme_hint(text: str) -> str:
    scheme = text.split("://", 1)[0] if "://" in text else ""
    return f" (scheme {scheme!r})" if re.fullmatch(r"[A-Za-z0-9+.-]+", scheme) else ""


def display_url(url: str | URL) -> str:
    """The URL as it may be shown to a person: the password is masked."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError:
        return mask_url_text(str(url))
    return parsed.render_as_string(hide_password=True)


#: `scheme://user:secret@`: the secret runs to the last `@` of the URL (an unencoded `@` in a
#: password must not leave its tail in view).
_PASSWORD_IN_URL = re.compile(r"(?P<head>[a-z0-9+]+://[^:/@\s]*:)(?P<secret>\S*)(?P<tail>@)")


def mask_url_text(text: str) -> str:
    """Mask anything that looks like a password inside a URL in free text."""
    return _PASSWORD_IN_URL.sub(r"\g<head>***\g<tail>", text)


def backend_of(bind: Engine | Connection | URL) -> Backend:
    name = bind.get_backend_name() if isinstance(bind, URL) else bind.dialect.name
    if name == "sqlite":
        return Backend.SQLITE
    if name == "postgresql":
        return Backend.POSTGRESQL
    if name in ("mysql", "mariadb"):
        return Backend.MARIADB
    raise BadInputError(f"unsupported database backend {name!r}")


def sqlite_path(url: URL) -> Path | None:
    """The file behind a SQLite URL, or None for an in-memory database."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    if database.startswith("file:"):
        database = database[len("file:") :].split("?", 1)[0]
    return Path(database)


# --- engines ------------------------------------------------------------------------------


def make_engine(url: str | URL | None = None, *, create: bool = False, **kwargs: Any) -> Engine:
    """An Engine for `url` (see `resolve_url`), set up for concurrent use.

    A SQLite file that does not exist is an error unless `create` is true, so that a mistyped
    path never leaves an empty database behind.
    """
    parsed = parse_url(resolve_url(url) if not isinstance(url, URL) else url)
    backend = backend_of(parsed)
    if backend is Backend.SQLITE:
        path = sqlite_path(parsed)
        if path is not None and not create and not path.exists():
            raise DatabaseUnavailableError(
                f"no SQLite database at {str(path)!r}; run `usageledger db upgrade` to create it"
            )
        kwargs.setdefault("connect_args", {}).setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
    elif backend is Backend.POSTGRESQL:
        # Timestamps are stored as naive UTC; make the session agree so that server-side
        # functions and psql show the same values.
        kwargs.setdefault("connect_args", {}).setdefault("options", "-c timezone=UTC")
        kwargs.setdefault("pool_pre_ping", True)
    else:
        # UTC as above. No subquery cache: MariaDB caches a correlated subquery's result by the
        # outer row's value compared under its column's collation, so with the platform's
        # case-insensitive collation a lookup for key `p1` answered from the cache of `P1`,
        # even where the subquery itself compares bytes (`key_equals`).
        kwargs.setdefault("connect_args", {}).setdefault(
            "init_command", "SET time_zone='+00:00', optimizer_switch='subquery_cache=off'"
        )
        kwargs.setdefault("pool_pre_ping", True)
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except (ArgumentError, NoSuchModuleError) as exc:
        raise BadInputError(
            f"cannot use database URL {display_url(parsed)}: {one_line(exc)}"
        ) from None
    if backend is Backend.SQLITE:
        _configure_sqlite(engine, create=create)
    return engine


def one_line(exc: BaseException) -> str:
    """A driver error as one line with any password masked."""
    text = str(exc.orig) if isinstance(exc, DBAPIError) and exc.orig is not None else str(exc)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return mask_url_text(first)


def check_connection(engine: Engine) -> None:
    """Connect once, so an unreachable database is a one-line error before any work."""
    try:
        with read_connection(engine) as conn:
            conn.execute(sa.text("SELECT 1"))
            if backend_of(conn) is Backend.MARIADB and not getattr(conn.dialect, "is_mariadb", 1):
                version = ".".join(map(str, conn.dialect.server_version_info or ()))
                raise BadInputError(
                    f"{display_url(engine.url)} is MySQL {version}, not MariaDB: usageledger "
                    "runs on MariaDB, PostgreSQL and SQLite (its MariaDB schema uses collation "
                    f"{MARIADB_BYTES_COLLATION}, which MySQL does not have; see the README)"
                )
    except SQLAlchemyError as exc:
        raise DatabaseUnavailableError(
            f"cannot connect to {display_url(engine.url)}: {one_line(exc)}"
        ) from None
    except (TypeError, ValueError, AttributeError, LookupError) as exc:
        # The driver refused the URL's query options (PyMySQL: an unknown keyword argument
        # or charset) before any connection was made.
        raise BadInputError(
            f"cannot connect to {display_url(engine.url)}: the driver refused the URL's "
            f"options ({mask_url_text(str(exc))}); remove or correct them"
        ) from None


READ_ONLY_OPTION = "usageledger_read_only"


@contextmanager
def read_connection(engine: Engine) -> Iterator[Connection]:
    """A connection for reads that belong to no unit of work (connection and schema checks):
    on SQLite its transaction begins without the write lock, so it never waits for a writer
    (see `_configure_sqlite`); elsewhere it is a plain connection."""
    with engine.connect() as conn:
        yield conn.execution_options(**{READ_ONLY_OPTION: True})


#: The migration version tables of the platform schema and of the consumer's ledger.
PLATFORM_VERSION_TABLE = "alembic_version"
LEDGER_VERSION_TABLE = "usageledger_ledger_version"


def _holds_usageledger_schema(cursor: Any) -> bool:
    found = cursor.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN (?, ?)",
        (PLATFORM_VERSION_TABLE, LEDGER_VERSION_TABLE),
    ).fetchone()
    return bool(found[0])


def _configure_sqlite(engine: Engine, *, create: bool) -> None:
    """WAL, a busy timeout, foreign keys, and BEGIN IMMEDIATE for writing transactions.

    pysqlite's own transaction handling begins lazily and upgrades read locks to write locks
    mid-transaction, which fails with SQLITE_BUSY under concurrency instead of waiting; so the
    driver is put in autocommit mode and SQLAlchemy's `begin` event issues the BEGIN itself.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            # Switching to WAL writes the file's header: only on a file this engine creates or
            # one that holds our schema, never on a file a command then refuses (§9).
            if create or _holds_usageledger_schema(cursor):
                cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()
        dbapi_connection.create_function(
            "usageledger_uuid4", 0, lambda: str(uuid.uuid4()), deterministic=False
        )

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get("isolation_level") == "AUTOCOMMIT":
            # An autocommit connection (Alembic's autocommit_block) runs each statement alone;
            # a BEGIN here would hold the write lock for the whole block.
            return
        if options.get(READ_ONLY_OPTION):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")


# --- transactions -------------------------------------------------------------------------


@contextmanager
def transaction(
    engine: Engine, *, isolation: Isolation | None = None, read_only: bool = False
) -> Iterator[Connection]:
    """One transaction on its own connection, committed on success, rolled back on error.

    `isolation` applies to this transaction only (SQLite is always serializable), declared by
    its first statement rather than set on the driver's connection: psycopg refuses to change a
    connection's level while it believes a transaction is open, which a connection killed
    mid-transaction can leave it believing. A read-only transaction on SQLite takes no write
    lock; on PostgreSQL and MariaDB it is declared READ ONLY.
    """
    with engine.connect() as conn:
        if read_only:
            conn = conn.execution_options(**{READ_ONLY_OPTION: True})
        with conn.begin():
            if isolation is not None and backend_of(conn) is not Backend.SQLITE:
                conn.execute(sa.text(f"SET TRANSACTION ISOLATION LEVEL {isolation.value}"))
            if read_only:
                _declare_read_only(conn)
            yield conn


def _declare_read_only(conn: Connection) -> None:
    """Make the server refuse writes in the transaction just begun (SQLite needs nothing: its
    read-only BEGIN takes no write lock, see `_configure_sqlite`)."""
    if backend_of(conn) is not Backend.SQLITE:
        conn.execute(sa.text("SET TRANSACTION READ ONLY"))


def new_guid() -> str:
    """A fresh event or resource guid (SPEC P5)."""
    return str(uuid.uuid4())


def sql_new_guid(bind: Engine | Connection) -> sa.ColumnElement[str]:
    """A SQL expression that yields a fresh UUID per row, for INSERT…SELECT."""
    backend = backend_of(bind)
    if backend is Backend.POSTGRESQL:
        return sa.cast(sa.func.gen_random_uuid(), sa.String(255))
    if backend is Backend.MARIADB:
        return sa.func.uuid(type_=sa.String(255))
    return sa.func.usageledger_uuid4(type_=sa.String(255))


def database_now(conn: Connection) -> datetime:
    """The database's current time, as an aware UTC datetime.

    SQLite runs inside this process, so the host clock the process reads is the database's.
    """
    backend = backend_of(conn)
    if backend is Backend.SQLITE:
        return datetime.now(UTC)
    if backend is Backend.POSTGRESQL:
        value = conn.execute(
            sa.text("SELECT statement_timestamp() AT TIME ZONE 'UTC'")
        ).scalar_one()
    else:
        value = conn.execute(sa.text("SELECT UTC_TIMESTAMP(6)")).scalar_one()
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC)


# --- transient errors ---------------------------------------------------------------------

#: PostgreSQL SQLSTATEs of a transaction that lost a race with another: serialization failure,
#: deadlock victim, a lock not granted within lock_timeout. It rolled back; the same
#: transaction may simply run again.
_CONFLICT_SQLSTATES = frozenset({"40001", "40P01", "55P03"})
#: The server shutting down or not yet accepting connections (class 08, connection exceptions,
#: is matched by prefix).
_CONNECTION_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})
#: A connection that failed reaches psycopg without an SQLSTATE, as libpq's message. The server
#: refused it for now (FATAL with one of these) or the network failed (no FATAL, one of the
#: others); any other FATAL (no such database or role, authentication) is for good.
_PG_REFUSED_FOR_NOW = ("starting up", "shutting down", "in recovery mode", "too many clients")
_PG_NETWORK_FAILURE = (
    "connection refused",
    "could not connect",
    "server closed the connection",
    "terminating connection",
    "timeout expired",
    "connection timed out",
    "no route to host",
    "consuming input failed",
    "the connection is lost",
    "ssl syscall",
)
#: MariaDB's of the first kind: lock wait timeout, deadlock victim.
_CONFLICT_MARIADB_ERRORS = frozenset({1205, 1213})
#: MariaDB's of the second: too many connections, server shutting down, connection killed, and
#: the client's "can't connect", "server has gone away", "lost connection".
_CONNECTION_MARIADB_ERRORS = frozenset({1040, 1053, 1927, 2002, 2003, 2006, 2013})


def _error_code(exc: DBAPIError) -> tuple[str, str | int | None]:
    """("psycopg", SQLSTATE), ("pymysql", error number) or ("sqlite", message) of an error."""
    orig = exc.orig
    module = type(orig).__module__
    if module.startswith("psycopg"):
        return "psycopg", getattr(orig, "sqlstate", None)
    if module.startswith("pymysql"):
        return "pymysql", orig.args[0] if orig is not None and orig.args else None
    return "sqlite", str(orig)


def is_conflict_error(exc: BaseException) -> bool:
    """Whether a database error says the transaction lost a race with another one (a deadlock
    or serialization victim, a lock wait that timed out; SQLite: "database is locked"). Once
    its transaction is rolled back (as leaving a `with` block on the error does), the
    connection is still good and the same transaction may simply run again."""
    if not isinstance(exc, DBAPIError) or exc.connection_invalidated:
        return False
    driver, code = _error_code(exc)
    if driver == "psycopg":
        return code in _CONFLICT_SQLSTATES
    if driver == "pymysql":
        return code in _CONFLICT_MARIADB_ERRORS
    return isinstance(exc, sa.exc.OperationalError) and "database is locked" in str(code)


def is_transient_error(exc: BaseException) -> bool:
    """Whether a database error says "try again later" rather than "this is wrong": a conflict
    (`is_conflict_error`), or a lost or killed connection, a server restarting. A unit of work
    whose transaction failed this way left nothing behind and may run again, on a new
    connection when the old one is gone."""
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated or is_conflict_error(exc):
        return True
    driver, code = _error_code(exc)
    if driver == "psycopg":
        if code is None:
            message = str(exc.orig).lower()
            if "fatal:" in message:
                return any(words in message for words in _PG_REFUSED_FOR_NOW)
            return any(words in message for words in _PG_NETWORK_FAILURE)
        return code in _CONNECTION_SQLSTATES or str(code).startswith("08")
    return driver == "pymysql" and code in _CONNECTION_MARIADB_ERRORS


#: How often a unit of work that keeps losing races is tried before its error stands, and the
#: pause before each new attempt (times the number of the attempt that failed).
CONFLICT_ATTEMPTS = 5
CONFLICT_PAUSE_SECONDS = 0.1

_T = TypeVar("_T")


def retry_conflicts(work: Callable[[], _T], *, what: str, attempts: int = CONFLICT_ATTEMPTS) -> _T:
    """Run `work`, one transaction that rolls back whole when it fails, and run it again when
    it loses a race with another transaction (`is_conflict_error`), up to `attempts` times in
    all, with a warning each time. Any other error, or the last attempt's, stands."""
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except DBAPIError as exc:
            if attempt >= attempts or not is_conflict_error(exc):
                raise
            log.warning(
                "%s lost a race with another transaction, again (%d of %d): %s",
                what,
                attempt + 1,
                attempts,
                one_line(exc),
            )
            time.sleep(CONFLICT_PAUSE_SECONDS * attempt)
    raise AssertionError("unreachable: the last attempt returns or raises")


# --- connections: identify and kill (tests, simulator faults) -----------------------------


def connection_id(conn: Connection) -> int:
    """The server's id for this connection's session (0 on SQLite, which has no server)."""
    backend = backend_of(conn)
    if backend is Backend.POSTGRESQL:
        return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())
    if backend is Backend.MARIADB:
        return int(conn.execute(sa.text("SELECT CONNECTION_ID()")).scalar_one())
    return 0


def kill_connection(engine: Engine, target_id: int) -> None:
    """Terminate another session from a fresh connection, as an operator or a crash would."""
    backend = backend_of(engine)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if backend is Backend.POSTGRESQL:
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": target_id})
        elif backend is Backend.MARIADB:
            conn.exec_driver_sql(f"KILL {int(target_id)}")
        else:
            raise BadInputError("SQLite has no sessions to kill; close the connection instead")


# --- the run lock (SPEC B8) ---------------------------------------------------------------


def _lock_key(name: str) -> int:
    """A stable signed 64-bit key for a PostgreSQL advisory lock."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _mariadb_lock_name(name: str, database: str | None) -> str:
    # GET_LOCK is server-wide, not per database: qualify by database so that two databases on
    # one server do not share a lock. Names are limited to 64 characters.
    full = f"usageledger.{database or ''}.{name}"
    if len(full) <= 64:
        return full
    return "usageledger." + hashlib.blake2b(full.encode(), digest_size=16).hexdigest()


_memory_locks: dict[str, threading.Lock] = {}
_memory_locks_guard = threading.Lock()


#: The statement that frees a server run lock; the server frees it with the session too.
_RUN_UNLOCK = {
    Backend.POSTGRESQL: "SELECT pg_advisory_unlock(:k)",
    Backend.MARIADB: "SELECT RELEASE_LOCK(:k)",
}


def is_run_unlock(statement: str) -> bool:
    """Whether `statement`, as sent to the driver, frees a run lock (the simulator ends a
    backfill's lock hold there: the connection's close comes a step later)."""
    return any(statement.startswith(sql.split("(")[0]) for sql in _RUN_UNLOCK.values())


@attrs.define
class RunLock:
    """A held run lock. It lives on one connection (or file handle) for the whole run and is
    freed by `release()`, by closing that connection, or by the death of the holder."""

    name: str
    backend: Backend
    _conn: Connection | None = None
    _file: IO[bytes] | None = None
    _thread_lock: threading.Lock | None = None
    _key: int | str | None = None

    @property
    def connection(self) -> Connection | None:
        """The server connection that holds the lock (None on SQLite)."""
        return self._conn

    def release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with suppress(SQLAlchemyError):
                conn.execute(sa.text(_RUN_UNLOCK[self.backend]), {"k": self._key})
            with suppress(SQLAlchemyError):
                conn.close()
        if self._file is not None:
            handle, self._file = self._file, None
            handle.close()  # closing the descriptor drops the flock
        if self._thread_lock is not None:
            lock, self._thread_lock = self._thread_lock, None
            lock.release()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _acquire(engine: Engine, name: str, *, wait: bool) -> RunLock | None:
    backend = backend_of(engine)
    if backend is Backend.SQLITE:
        return _acquire_sqlite(engine, name, wait=wait)
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        if backend is Backend.POSTGRESQL:
            key: int | str = _lock_key(name)
            # Waiting polls instead of blocking in pg_advisory_lock: a blocked statement holds a
            # snapshot, and a holder whose migration builds an index CONCURRENTLY waits for
            # every older snapshot in the database, so it would wait for its own waiters, a
            # deadlock PostgreSQL cannot see (the cycle passes through the holder's client).
            while True:
                got = bool(
                    conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
                )
                if got or not wait:
                    break
                time.sleep(POSTGRESQL_LOCK_POLL_SECONDS)
        else:
            key = _mariadb_lock_name(name, engine.url.database)
            # A positive timeout, and success only when GET_LOCK says 1 (0 = timed out,
            # NULL = error).
            timeout = MARIADB_LOCK_POLL_SECONDS if wait else 0
            while True:
                result = conn.execute(
                    sa.text("SELECT GET_LOCK(:k, :t)"), {"k": key, "t": timeout}
                ).scalar()
                got = result == 1
                if got or not wait:
                    break
                if result is None:
                    raise LockHeldError(f"MariaDB refused the run lock {name!r} (GET_LOCK NULL)")
    except BaseException:
        conn.close()
        raise
    if not got:
        conn.close()
        return None
    return RunLock(name=name, backend=backend, conn=conn, key=key)


def _acquire_sqlite(engine: Engine, name: str, *, wait: bool) -> RunLock | None:
    path = sqlite_path(engine.url)
    if path is None:
        # An in-memory database lives and dies with this process; a process-local lock is its
        # exact equivalent.
        with _memory_locks_guard:
            lock = _memory_locks.setdefault(f"{id(engine)}:{name}", threading.Lock())
        if not lock.acquire(blocking=wait):
            return None
        return RunLock(name=name, backend=Backend.SQLITE, thread_lock=lock)
    # An flock on a file beside the database: the kernel drops it when the descriptor is closed
    # or the holding process dies, so a crashed holder never leaves the lock behind.
    lock_path = path.with_name(f"{path.name}.{name}.lock")
    handle = open(lock_path, "a+b")  # noqa: SIM115 - the handle is the lock; RunLock closes it
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        handle.close()
        return None
    except BaseException:
        handle.close()
        raise
    return RunLock(name=name, backend=Backend.SQLITE, file=handle)


def try_run_lock(engine: Engine, name: str) -> RunLock | None:
    """Take the run lock `name` if it is free; None if another holder has it."""
    return _acquire(engine, name, wait=False)


def wait_run_lock(engine: Engine, name: str) -> RunLock:
    """Take the run lock `name`, waiting for its holder to release it or die."""
    lock = _acquire(engine, name, wait=True)
    assert lock is not None
    return lock


def run_lock(engine: Engine, name: str, *, wait: bool) -> RunLock:
    """Take the run lock, waiting or failing fast with LockHeldError."""
    if wait:
        return wait_run_lock(engine, name)
    lock = try_run_lock(engine, name)
    if lock is None:
        raise LockHeldError(
            f"another run holds the {name} lock on {display_url(engine.url)}; "
            "wait for it to finish or pass --wait"
        )
    return lock


@contextmanager
def taking_turns(engine: Engine, name: str, what: str) -> Iterator[None]:
    """Hold the run lock `name` for the block, waiting (and saying so) while another process
    holds it: for work that is safe to repeat but not to run twice at once, such as migrations
    that several instances of a deploy start together."""
    lock = try_run_lock(engine, name)
    if lock is None:
        log.warning("waiting for another %s on %s to finish", what, display_url(engine.url))
        lock = wait_run_lock(engine, name)
    with lock:
        yield


# --- databases for test runs --------------------------------------------------------------


def create_database(server_url: str | URL, name: str) -> URL:
    """Create an empty database `name` next to `server_url`'s and return its URL.

    For SQLite, `name` becomes a file beside the URL's file.
    """
    parsed = parse_url(server_url)
    backend = backend_of(parsed)
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise BadInputError(f"invalid database name {name!r}")
    if backend is Backend.SQLITE:
        base = sqlite_path(parsed)
        folder = base.parent if base is not None else Path(".")
        if not folder.is_dir():
            raise DatabaseUnavailableError(
                f"no folder {str(folder)!r} for a SQLite database beside {str(base)!r}"
            )
        return parsed.set(database=str(folder / f"{name}.db"))
    admin = make_engine(parsed, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            if backend is Backend.POSTGRESQL:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
            else:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
                conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        admin.dispose()
    return parsed.set(database=name)


def _server_of(url: URL) -> URL:
    """`url` on its server's maintenance database (PostgreSQL) or on no database (MariaDB):
    a connection that does not hold the database to be dropped open. (`URL.set(database=None)`
    leaves the database in place; `_replace` clears it.)"""
    if backend_of(url) is Backend.POSTGRESQL:
        return url.set(database="postgres")
    return url._replace(database=None)


def database_names(server_url: str | URL, *, connect_timeout: int | None = None) -> list[str]:
    """The names of the databases on a PostgreSQL or MariaDB server (test runs look for the
    ones killed runs left behind)."""
    parsed = parse_url(server_url)
    options: dict[str, Any] = {"poolclass": sa.pool.NullPool}
    if connect_timeout is not None:
        options["connect_args"] = {"connect_timeout": connect_timeout}
    engine = make_engine(_server_of(parsed), **options)
    try:
        with engine.connect() as conn:
            if backend_of(conn) is Backend.POSTGRESQL:
                rows = conn.execute(sa.text("SELECT datname FROM pg_database"))
            else:
                rows = conn.execute(sa.text("SHOW DATABASES"))
            return [str(row[0]) for row in rows]
    finally:
        engine.dispose()


def drop_database(url: str | URL) -> None:
    """Drop the database (or SQLite file) behind `url`."""
    parsed = parse_url(url)
    backend = backend_of(parsed)
    name = parsed.database
    if backend is Backend.SQLITE:
        path = sqlite_path(parsed)
        if path is not None:
            for suffix in ("", "-wal", "-shm", "-journal"):
                with suppress(FileNotFoundError):
                    Path(f"{path}{suffix}").unlink()
            for lock_file in path.parent.glob(f"{path.name}.*.lock"):
                lock_file.unlink()
        return
    admin = make_engine(
        _server_of(parsed), isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
    )
    try:
        with admin.connect() as conn:
            if backend is Backend.POSTGRESQL:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            else:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        admin.dispose()


# --- online index builds (migrations) -----------------------------------------------------


#: MariaDB's byte-for-byte collation that also keeps trailing spaces significant (utf8mb4_bin
#: pads: 'p1' and 'p1 ' compare equal there), as PostgreSQL and SQLite compare.
MARIADB_BYTES_COLLATION = "utf8mb4_nopad_bin"


def use_binary_collation(bind: Connection, table: str) -> None:
    """MariaDB: convert `table`'s text columns to MARIADB_BYTES_COLLATION, so keys compare byte
    for byte as on PostgreSQL and SQLite (a no-op on a table that has it already, and
    elsewhere)."""
    if backend_of(bind) is Backend.MARIADB:
        bind.exec_driver_sql(
            f"ALTER TABLE `{table}` CONVERT TO CHARACTER SET utf8mb4"
            f" COLLATE {MARIADB_BYTES_COLLATION}"
        )


def needs_autocommit_for_online_ddl(bind: Connection) -> bool:
    """PostgreSQL builds indexes CONCURRENTLY, which cannot run inside a transaction."""
    return backend_of(bind) is Backend.POSTGRESQL


def index_status(conn: Connection, index: sa.Index) -> str:
    """'valid', 'invalid' (PostgreSQL: left by an interrupted CONCURRENTLY build) or 'missing'."""
    assert index.table is not None
    if backend_of(conn) is Backend.POSTGRESQL:
        valid = conn.execute(
            sa.text(
                "SELECT i.indisvalid FROM pg_index i"
                " JOIN pg_class c ON c.oid = i.indexrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.relname = :name AND n.nspname = current_schema()"
            ),
            {"name": index.name},
        ).scalar()
        if valid is None:
            return "missing"
        return "valid" if valid else "invalid"
    names = {ix["name"] for ix in sa.inspect(conn).get_indexes(index.table.name)}
    return "valid" if index.name in names else "missing"


def _quoted_columns(conn: Connection, index: sa.Index) -> str:
    preparer = conn.dialect.identifier_preparer
    return ", ".join(preparer.quote(str(col.name)) for col in index.columns)


def create_index_online(conn: Connection, index: sa.Index) -> None:
    """Create `index` if it is not there, without blocking writers where the backend can.

    Idempotent. On PostgreSQL an invalid index (from an interrupted CONCURRENTLY build) is not
    accepted as done: it is dropped and built again.
    """
    status = index_status(conn, index)
    if status == "valid":
        return
    if backend_of(conn) is not Backend.POSTGRESQL:
        index.create(conn)
        return
    assert index.table is not None
    preparer = conn.dialect.identifier_preparer
    name = preparer.quote(str(index.name))
    if status == "invalid":
        log.warning("index %s is invalid (an interrupted concurrent build); rebuilding", index.name)
        conn.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    conn.exec_driver_sql(
        f"CREATE INDEX CONCURRENTLY {name} ON {preparer.format_table(index.table)}"
        f" ({_quoted_columns(conn, index)})"
    )


def drop_index_online(conn: Connection, index: sa.Index) -> None:
    """Drop `index` if it exists (CONCURRENTLY on PostgreSQL)."""
    if index_status(conn, index) == "missing":
        return
    if backend_of(conn) is Backend.POSTGRESQL:
        name = conn.dialect.identifier_preparer.quote(str(index.name))
        conn.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
    else:
        index.drop(conn)


# --- emptying tables (test runs, simulator runs) ------------------------------------------


def truncate_tables(engine: Engine, tables: list[sa.Table]) -> None:
    """Delete every row of `tables` and restart their ids, as a fresh database would have them."""
    backend = backend_of(engine)
    existing = set(sa.inspect(engine).get_table_names())
    tables = [t for t in tables if t.name in existing]
    if not tables:
        return
    with engine.connect() as conn, conn.begin():
        preparer = conn.dialect.identifier_preparer
        if backend is Backend.POSTGRESQL:
            names = ", ".join(preparer.format_table(t) for t in tables)
            conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
        elif backend is Backend.MARIADB:
            conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 0")
            try:
                for table in tables:
                    conn.exec_driver_sql(f"TRUNCATE TABLE {preparer.format_table(table)}")
            finally:
                conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 1")
        else:
            for table in reversed(sa.sql.util.sort_tables(tables)):
                conn.execute(table.delete())
            if sa.inspect(conn).has_table("sqlite_sequence"):
                conn.execute(
                    sa.text("DELETE FROM sqlite_sequence WHERE name IN :names").bindparams(
                        sa.bindparam("names", expanding=True)
                    ),
                    {"names": [t.name for t in tables]},
                )


# --- backfill -----------------------------------------------------------------------------


@contextmanager
def locked_transaction(
    engine: Engine, lock: RunLock, *, isolation: Isolation
) -> Iterator[Connection]:
    """One transaction of a run that holds `lock` (SPEC B3, B8).

    Where the lock lives on a server connection (PostgreSQL, MariaDB) the transaction runs on
    that same connection, so the run's work dies with its lock: a holder whose session is killed
    cannot go on writing while a second run takes the lock. SQLite's lock is a file, so there the
    transaction gets a connection of its own.
    """
    conn = lock.connection
    if conn is None:
        with transaction(engine, isolation=isolation) as own:
            yield own
        return
    if conn.in_transaction():
        # The lock statement ran in autocommit; end SQLAlchemy's bookkeeping transaction so the
        # isolation level may change (nothing is pending on the server).
        conn.commit()
    driver_error = conn.dialect.loaded_dbapi.Error
    try:
        conn.execution_options(isolation_level=isolation.value)
    except driver_error as exc:
        # The driver raises directly here (no statement of ours ran); a killed lock session
        # shows up this way, and must read like any other database error.
        conn.invalidate()
        raise DBAPIError.instance(None, None, exc, driver_error) from exc
    try:
        with conn.begin():
            yield conn
    finally:
        # The lock connection idles in autocommit between batches, as it was opened.
        with suppress(SQLAlchemyError):
            conn.execution_options(isolation_level="AUTOCOMMIT")


def join_in_written_order(select: sa.Select[Any]) -> sa.Select[Any]:
    """Ask MariaDB/MySQL to join in the order the FROM clause is written (STRAIGHT_JOIN).

    A backfill batch selects a window of one table's ids and looks the rest up per row; left to
    itself MariaDB may start from a small joined table and reach the window through an index,
    joining every row of the platform in every batch. Other backends ignore the hint.
    """
    return select.prefix_with("STRAIGHT_JOIN", dialect="mysql").prefix_with(
        "STRAIGHT_JOIN", dialect="mariadb"
    )


def analyze_tables(engine: Engine, tables: list[sa.Table]) -> None:
    """Refresh the planner's statistics for `tables` (PostgreSQL: and vacuum them), as
    autovacuum or a DBA would; for benchmarks that load or delete rows and query at once."""
    backend = backend_of(engine)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        preparer = conn.dialect.identifier_preparer
        if backend is Backend.SQLITE:
            conn.exec_driver_sql("ANALYZE")
            return
        for table in tables:
            name = preparer.format_table(table)
            if backend is Backend.POSTGRESQL:
                conn.exec_driver_sql(f"VACUUM ANALYZE {name}")
            else:
                conn.exec_driver_sql(f"ANALYZE TABLE {name}").all()


# --- retention (cleanup) ------------------------------------------------------------------


def use_read_committed(conn: Connection) -> None:
    """Run this connection's next transactions at READ COMMITTED where the backend has levels.

    Cleanup deletes by explicit id lists; at READ COMMITTED MariaDB takes no gap locks for ids
    that are already gone, so a concurrent producer's inserts never wait on a cleanup batch.
    SQLite has one writer at a time and no levels to choose.
    """
    if backend_of(conn) is not Backend.SQLITE:
        conn.execution_options(isolation_level=Isolation.READ_COMMITTED.value)


#: `Connection.info` key: this connection is set up for a run of deletes (`bulk_deletes`).
_BULK_DELETES = "usageledger_bulk_deletes"


@contextmanager
def bulk_deletes(conn: Connection) -> Iterator[None]:
    """Set this connection up for a run of many delete batches, and back afterwards.

    SQLite only. A batch of 1,000 deletes dirties a few thousand pages, most of them index pages
    at random; at SQLite's defaults nearly every batch commit is followed by a checkpoint that
    copies them back into the file and syncs it, and the next batch dirties the same hot pages
    again, read through a 2 MiB cache. For the run the connection checkpoints every 20,000 pages
    with a 64 MiB cache (a 1M-row cleanup: 46 s at the defaults, about 20 s so). Afterwards it
    gets its own settings back, frees that cache, and checkpoints the WAL down to nothing unless
    a reader or writer is in the way (it does not wait for them).

    Only this connection changes: the platform's commits keep checkpointing at 1,000 pages, so
    their durability and the size of the WAL outside a cleanup stay as they were.
    """
    if backend_of(conn) is not Backend.SQLITE or conn.info.get(_BULK_DELETES):
        yield  # a server, or a run that already set it up (each pass of a cleanup asks)
        return
    raw = conn.connection.driver_connection
    assert raw is not None
    before = {
        name: int(raw.execute(f"PRAGMA {name}").fetchone()[0])
        for name in ("cache_size", "wal_autocheckpoint", "busy_timeout")
    }
    raw.execute(f"PRAGMA cache_size = -{SQLITE_BULK_CACHE_KIB}")
    raw.execute(f"PRAGMA wal_autocheckpoint = {SQLITE_BULK_AUTOCHECKPOINT_PAGES}")
    conn.info[_BULK_DELETES] = True
    finished = False
    try:
        yield
        finished = True
    finally:
        conn.info.pop(_BULK_DELETES, None)
        # A connection closed under the run needs nothing back (and must not hide its error).
        with suppress(raw.ProgrammingError):
            for name in ("cache_size", "wal_autocheckpoint"):
                raw.execute(f"PRAGMA {name} = {before[name]}")
        if finished and not raw.in_transaction:
            # Best effort: the deletes are committed whatever happens to this checkpoint.
            with suppress(raw.Error):
                raw.execute("PRAGMA busy_timeout = 0")
                try:
                    raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                finally:
                    raw.execute(f"PRAGMA busy_timeout = {before['busy_timeout']}")


@contextmanager
def read_only_transaction(conn: Connection) -> Iterator[Connection]:
    """A read-only transaction on an existing connection: declared READ ONLY on PostgreSQL and
    MariaDB; on SQLite a plain BEGIN, no write lock."""
    previous = bool(conn.get_execution_options().get(READ_ONLY_OPTION))
    conn.execution_options(**{READ_ONLY_OPTION: True})
    try:
        with conn.begin():
            _declare_read_only(conn)
            yield conn
    finally:
        conn.execution_options(**{READ_ONLY_OPTION: previous})


def psycopg_streams_in_chunks() -> bool:
    """Whether psycopg can stream one statement in chunks (its `stream(size=…)` needs the
    chunked-rows mode of libpq 17 or newer; the wheel bundles a recent libpq, a build against
    the system's libpq may not)."""
    import psycopg

    return psycopg.pq.version() >= 170000


def stream_rows(
    conn: Connection, statement: sa.Select[*tuple[Any, ...]], chunk_rows: int
) -> Generator[list[tuple[Any, ...]], None, None]:
    """The rows of one query as the driver's tuples, in chunks of `chunk_rows`, fetched while
    the server is still producing the rest (the cleanup's decision walk reads every row of a
    large id range this way: the server's work and the client's fold overlap).

    PostgreSQL: psycopg's chunked streaming of one statement, in binary (SQLAlchemy's
    `stream_results` would declare a named cursor and pay one round trip per chunk).
    MariaDB: PyMySQL's unbuffered cursor. Both get the statement with its values rendered as
    literals, so the columns' own bind conversions (UTC timestamps) apply; the values are the
    caller's own numbers, dates and state names. SQLite: the statement steps as it is read.
    Read the iterator to its end or close it; the connection is busy until then.
    """
    backend = backend_of(conn)
    if backend is Backend.SQLITE:
        result = conn.execute(statement)
        try:
            while rows := result.cursor.fetchmany(chunk_rows):
                yield list(rows)
        finally:
            result.close()
        return
    sql = str(statement.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    driver = conn.connection.driver_connection
    assert driver is not None
    if backend is Backend.POSTGRESQL and psycopg_streams_in_chunks():
        # Binary results: ints arrive as 8 bytes, not digits to parse; text is the same bytes.
        # The decision walk of 200k rows took 0.16 s in text and 0.11 s in binary.
        with driver.cursor(binary=True) as cursor:
            chunk: list[tuple[Any, ...]] = []
            # No parameters: psycopg sends the text as it is, without placeholder parsing.
            for row in cursor.stream(sql, size=chunk_rows):
                chunk.append(row)
                if len(chunk) == chunk_rows:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk
        return
    if backend is Backend.POSTGRESQL:
        # An older libpq: a server-side cursor, one FETCH per chunk, in the caller's transaction.
        with driver.cursor(name="usageledger_stream", binary=True) as named:
            named.execute(sql)
            while rows := named.fetchmany(chunk_rows):
                yield list(rows)
        return
    with driver.cursor(conn.dialect.loaded_dbapi.cursors.SSCursor) as unbuffered:
        unbuffered.execute(sql)
        while rows := unbuffered.fetchmany(chunk_rows):
            yield list(rows)


def explain(conn: Connection, statement: sa.Executable) -> list[str]:
    """The backend's query plan for `statement`, one line per plan row (benchmarks, docs)."""
    backend = backend_of(conn)
    compiled = statement.compile(  # type: ignore[attr-defined]
        dialect=conn.dialect, compile_kwargs={"literal_binds": True}
    )
    sql = str(compiled)
    if backend is Backend.SQLITE:
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}").all()
        return [str(row[-1]) for row in rows]
    if backend is Backend.POSTGRESQL:
        rows = conn.exec_driver_sql(f"EXPLAIN {sql}").all()
        return [str(row[0]) for row in rows]
    result = conn.exec_driver_sql(f"EXPLAIN {sql}")
    names = list(result.keys())
    return [
        " ".join(f"{name}={value}" for name, value in zip(names, row, strict=True))
        for row in result.all()
    ]


def id_in(
    bind: Engine | Connection, column: sa.ColumnElement[int], ids: list[int]
) -> sa.ColumnElement[bool]:
    """`column IN ids`, as each backend runs a batch of explicit ids best (R8).

    PostgreSQL gets one array parameter (`= ANY`): the statement text is the same for every
    batch, so it is prepared once instead of parsing a thousand parameters per batch.
    """
    if backend_of(bind) is Backend.POSTGRESQL:
        return column == sa.any_(sa.bindparam(None, ids, type_=postgresql.ARRAY(sa.BigInteger())))
    return column.in_(ids)


# --- simulator ------------------------------------------------------------------------------


def dbapi_session_id(dbapi_connection: Any) -> int:
    """The server session id of a raw driver connection, read without a query (0 on SQLite).

    psycopg exposes the backend pid, PyMySQL the thread id; sqlite3 has neither. The simulator
    reads this inside its statement gate, where running a query would re-enter the gate.
    """
    info = getattr(dbapi_connection, "info", None)
    pid = getattr(info, "backend_pid", None)
    if isinstance(pid, int):
        return pid
    thread_id = getattr(dbapi_connection, "thread_id", None)
    if callable(thread_id):
        return int(thread_id())
    return 0


def is_waiting_for_lock(engine: Engine, target_id: int) -> bool:
    """Whether the session `target_id` is blocked on a lock right now (tests, simulator).

    PostgreSQL: pg_blocking_pids, computed from the lock table, so it is empty as soon as the
    holder has released. MariaDB: the live transaction list of SHOW ENGINE INNODB STATUS, not
    INFORMATION_SCHEMA.INNODB_LOCK_WAITS/INNODB_TRX: those are served from a cache that InnoDB
    refreshes only after 0.1 s without a reader, so a probe polled faster than that (or two
    probes in parallel) keeps reading the state from before the wait began. SQLite cannot be
    asked from another connection (the simulator models its single writer lock instead).
    """
    backend = backend_of(engine)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if backend is Backend.POSTGRESQL:
            pids = conn.execute(
                sa.text("SELECT pg_blocking_pids(:pid)"), {"pid": target_id}
            ).scalar()
            return bool(pids)
        if backend is Backend.MARIADB:
            status = str(conn.exec_driver_sql("SHOW ENGINE INNODB STATUS").one()[-1])
            return target_id in innodb_lock_waiting_threads(status)
    raise BadInputError("SQLite sessions cannot be inspected from another connection")


_INNODB_THREAD_ID = re.compile(r"^(?:MariaDB|MySQL) thread id (\d+),", re.MULTILINE)


def innodb_lock_waiting_threads(status: str) -> set[int]:
    """The thread (session) ids whose transaction is in LOCK WAIT in an InnoDB status text."""
    waiting: set[int] = set()
    for block in status.split("\n---TRANSACTION ")[1:]:
        if "\nLOCK WAIT " not in block:
            continue
        found = _INNODB_THREAD_ID.search(block)
        if found:
            waiting.add(int(found.group(1)))
    return waiting


def session_alive(engine: Engine, target_id: int) -> bool:
    """Whether the server still has the session `target_id` (after a kill it disappears)."""
    backend = backend_of(engine)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if backend is Backend.POSTGRESQL:
            count = conn.execute(
                sa.text("SELECT COUNT(*) FROM pg_stat_activity WHERE pid = :pid"),
                {"pid": target_id},
            ).scalar()
        elif backend is Backend.MARIADB:
            count = conn.execute(
                sa.text("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = :id"),
                {"id": target_id},
            ).scalar()
        else:
            return False
    return bool(count)


def set_sqlite_busy_timeout(engine: Engine, milliseconds: int) -> None:
    """Make this SQLite engine's connections wait at most `milliseconds` for the write lock.

    The simulator models SQLite's single writer itself and never grants a BEGIN IMMEDIATE while
    another actor writes, so a wait it did not foresee should surface fast, not after 30 s.
    No-op on other backends.
    """
    if backend_of(engine) is not Backend.SQLITE:
        return

    @event.listens_for(engine, "connect")
    def _busy_timeout(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(milliseconds)}")
        finally:
            cursor.close()


def is_sqlite_write_begin(statement: str) -> bool:
    """Whether `statement` is the BEGIN IMMEDIATE that takes SQLite's single write lock."""
    return statement.strip().upper() == "BEGIN IMMEDIATE"


# --- reconstruct (the consumer's ledger) --------------------------------------------------


def insert_many(conn: Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """Insert `rows` (all with the same keys) on the caller's transaction, as fast as the
    backend allows: the keyword form of `copy_rows`."""
    if not rows:
        return
    names = list(rows[0])
    copy_rows(conn, table, names, [tuple(row[name] for name in names) for row in rows])


def text_in(
    bind: Engine | Connection, column: sa.ColumnElement[str], values: list[str]
) -> sa.ColumnElement[bool]:
    """`column IN values` for a batch of strings (the consumer's resource guids).

    PostgreSQL gets one array (`= ANY`), as `id_in` does for ids: the same statement text for
    every batch, and no thousand bind parameters to expand and send one by one. The array
    travels as one string the server splits (`string_to_array`): psycopg builds an array
    parameter value by value in Python, 1.5 ms for 600 guids against 0.2 ms for the string.
    Values holding the separator (no guid does) fall back to the array parameter, and so does
    the list of one empty string (a legacy row's key may be ''): `string_to_array('', …)` is
    the empty array, which would match nothing.
    """
    if backend_of(bind) is Backend.POSTGRESQL:
        strings = postgresql.ARRAY(sa.String())
        if values != [""] and not any(_TEXT_SEPARATOR in value for value in values):
            joined = sa.bindparam(None, _TEXT_SEPARATOR.join(values), type_=sa.Text())
            separator: sa.ColumnElement[str] = sa.literal_column(f"chr({ord(_TEXT_SEPARATOR)})")
            return column == sa.any_(sa.func.string_to_array(joined, separator, type_=strings))
        return column == sa.any_(sa.bindparam(None, values, type_=strings))
    return column.in_(values)


#: Joins the strings of one `text_in` (ASCII unit separator, which no guid contains).
_TEXT_SEPARATOR = "\x1f"


def prefer_key_probes(conn: Connection) -> None:
    """For the rest of the caller's transaction (SET LOCAL), on PostgreSQL: look rows up by
    index rather than by scanning the table. The consumer's ledger lookups are by primary key,
    a few hundred per batch; on a young ledger table the planner, costing every probe as a
    random disk read, chose to scan the table (5-7 ms per batch at 38,000 resources, against
    1.1-1.4 ms by key)."""
    if backend_of(conn) is Backend.POSTGRESQL:
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")


def copy_rows(
    conn: Connection,
    table: sa.Table,
    names: list[str],
    rows: list[tuple[Any, ...]],
    *,
    naive_utc: bool = False,
) -> None:
    """Insert `rows` (tuples of the columns `names`) on the caller's transaction.

    PostgreSQL: one COPY … FROM STDIN on the transaction's own connection; psycopg would send
    an executemany as one statement per row, which dominated the consumer's time. Elsewhere: an
    executemany. `naive_utc`: the rows' times are already naive UTC, as `fetch_rows` gives
    them, so the per-value conversion of UTCDateTime is skipped.
    """
    if not rows:
        return
    if backend_of(conn) is not Backend.POSTGRESQL:
        conn.execute(table.insert(), [dict(zip(names, row, strict=True)) for row in rows])
        return
    # Only the project's own types (TypeDecorator: UTCDateTime turns aware times into naive
    # UTC) change a value on the way in; psycopg adapts plain ints, strings and bools itself.
    processors = [
        (index, process)
        for index, name in enumerate(names)
        if isinstance(table.c[name].type, sa.TypeDecorator)
        and not naive_utc
        and (process := table.c[name].type.bind_processor(conn.dialect)) is not None
    ]
    preparer = conn.dialect.identifier_preparer
    columns = ", ".join(preparer.quote(name) for name in names)
    statement = f"COPY {preparer.format_table(table)} ({columns}) FROM STDIN"
    # Rows of plain values go in binary with their types declared: psycopg then formats each
    # value without looking its type up, several times faster than the text format.
    binary = [_copy_type(table.c[name].type) for name in names] if naive_utc else []
    if binary and all(binary):
        statement += " (FORMAT BINARY)"
    driver = conn.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        if statement.endswith("(FORMAT BINARY)"):
            copy.set_types(binary)
        if not processors:
            for row in rows:
                copy.write_row(row)
            return
        for row in rows:
            values = list(row)
            for index, process in processors:
                value = values[index]
                if value is not None:
                    values[index] = process(value)
            copy.write_row(values)


def _copy_type(column_type: sa.types.TypeEngine[Any]) -> str:
    """The PostgreSQL type a binary COPY sends for a column ('' when not one of these)."""
    if isinstance(column_type, sa.TypeDecorator):
        column_type = column_type.impl_instance
    for kind, name in (
        (sa.BigInteger, "int8"),
        (sa.Integer, "int4"),
        (sa.Boolean, "bool"),
        (sa.DateTime, "timestamp"),
        (sa.String, "text"),
    ):
        if isinstance(column_type, kind):
            return name
    return ""


def text_in_chunk(bind: Engine | Connection) -> int:
    """How many values one `text_in` should carry: an array parameter on PostgreSQL has no
    practical bound; elsewhere each value is a bind parameter (SQLite allows 999 in old builds)."""
    return 10_000 if backend_of(bind) is Backend.POSTGRESQL else 900


def fetch_rows(conn: Connection, statement: sa.Executable) -> list[tuple[Any, ...]]:
    """The rows of `statement` as plain tuples, times as naive UTC (the consumer's batch fold).

    PostgreSQL: psycopg's own tuples, as the driver built them, without SQLAlchemy's `Row`
    objects or its per-value type processing; timestamps come back naive, as stored (UTC). The
    statement still goes through `Connection.execute`, so execution events (the simulator's
    gate) see it. Elsewhere: the processed rows with the times made naive again.
    """
    result = conn.execute(statement)
    if backend_of(conn) is Backend.POSTGRESQL:
        cursor = result.cursor
        try:
            return list(cursor.fetchall()) if cursor is not None else []
        finally:
            result.close()
    return [
        tuple(
            v.astimezone(UTC).replace(tzinfo=None)
            if isinstance(v, datetime) and v.tzinfo is not None
            else v
            for v in row
        )
        for row in result.all()
    ]


#: Memory PostgreSQL may use per sort or hash in `reconstruct current-state` (its default,
#: 4 MB, makes the aggregation over every process guid ever seen spill to disk).
CURRENT_STATE_WORK_MEM_MB = 64


def has_table(conn: Connection, name: str) -> bool:
    """Whether the database has table `name` (in the connection's schema)."""
    return sa.inspect(conn).has_table(name)


def byte_comparison(bind: Engine | Connection) -> Callable[[Any], Any] | None:
    """None where text columns already compare byte for byte (PostgreSQL, SQLite); on MariaDB,
    whose default collation ignores case and trailing spaces (`stopped` matches `STOPPED`,
    keys `P2` and `p2` group together), a wrapper for a text column that compares its bytes.

    CAST … AS BINARY rather than COLLATE utf8mb4_bin: it works whatever the column's character
    set (platform databases are often utf8mb3). It hides the column from its indexes, so a
    query keeps the plain comparison for the index and adds this one as a filter.
    """
    if backend_of(bind) is Backend.MARIADB:
        return lambda column: sa.type_coerce(sa.cast(column, sa.LargeBinary), sa.String)
    return None


class key_equals(FunctionElement[bool]):
    """`left = right` for two resource keys, comparing bytes on every backend: on MariaDB the
    plain comparison (which its indexes answer) and the bytes (`byte_comparison`), since the
    platform's collation ignores case and trailing spaces; elsewhere the plain comparison, which
    already compares bytes. For statements built without a connection to ask."""

    type = sa.Boolean()
    inherit_cache = True
    name = "key_equals"


@compiles(key_equals)
def _key_equals(element: key_equals, compiler: SQLCompiler, **kw: Any) -> str:
    left, right = element.clauses
    return compiler.process(left == right, **kw)


@compiles(key_equals, "mysql")
@compiles(key_equals, "mariadb")
def _key_equals_bytes(element: key_equals, compiler: SQLCompiler, **kw: Any) -> str:
    left, right = element.clauses
    as_bytes = [sa.cast(side, sa.LargeBinary) for side in (left, right)]
    return compiler.process(sa.and_(left == right, as_bytes[0] == as_bytes[1]), **kw)


def least(bind: Engine | Connection, *values: Any) -> Any:
    """The smallest of `values` (SQL expressions, none NULL): LEAST, or SQLite's min()."""
    if backend_of(bind) is Backend.SQLITE:
        return sa.func.min(*values)
    return sa.func.least(*values)


def prepare_for_current_state(conn: Connection) -> None:
    """Planner settings for `reconstruct current-state`'s queries, for the rest of the caller's
    transaction only (SET LOCAL, allowed in a read-only transaction). PostgreSQL only:

    - work_mem CURRENT_STATE_WORK_MEM_MB, so the per-key aggregation stays in memory;
    - JIT off: compiling the expressions cost more than it saved on these one-pass queries;
    - no parallel workers: the aggregation groups most rows into distinct keys (a few events
      per resource), so parallel partial aggregates only move nearly every group through a
      Gather and aggregate it again (bench, 1M events: 0.42 s in one process, 0.72 s with two
      workers);
    - no merge or hash joins: the only joins are from the running keys to their last opening
      and their start row by primary key. The planner cannot estimate how few keys run (a
      comparison of two aggregates) and was seen to scan the whole primary key or hash the
      whole table for it, where one index probe per running key is what the query needs.
    """
    if backend_of(conn) is Backend.POSTGRESQL:
        conn.exec_driver_sql(f"SET LOCAL work_mem = '{CURRENT_STATE_WORK_MEM_MB}MB'")
        conn.exec_driver_sql("SET LOCAL jit = off")
        conn.exec_driver_sql("SET LOCAL max_parallel_workers_per_gather = 0")
        conn.exec_driver_sql("SET LOCAL enable_mergejoin = off")
        conn.exec_driver_sql("SET LOCAL enable_hashjoin = off")
