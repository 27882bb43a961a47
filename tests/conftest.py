"""Backend selection for the whole suite.

Every test that takes `db_url`, `engine` or `empty_db_url` runs once per configured backend.
Backends come from `--db URL` (repeatable) or `USAGELEDGER_TEST_DBS` (space or comma separated);
by default the embedded SQLite plus the local PostgreSQL and MariaDB servers. Each test run (and
each xdist worker) gets its own freshly created database per backend, dropped at the end; a run
that was killed before its end leaves them behind, so each run first drops those of this
machine's runs whose process is gone. A backend that does not answer is skipped locally and
fails the run when `CI` is set. No test sees a `USAGELEDGER_DB` from the environment of the run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from sqlalchemy.engine import URL, Engine

from usageledger import db, migrations
from usageledger.schema import metadata

DEFAULT_TEST_DBS = (
    "sqlite:///usageledger-test.db",
    "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    "mariadb+pymysql://root@127.0.0.1:3306/test",
)
# Hypothesis: "ci" (the default) is derandomized with bounded examples so the suite's time is
# predictable; "long" is for deliberate verification runs (HYPOTHESIS_PROFILE=long): random
# seeds (Hypothesis prints the one to reproduce a failure with), LONG_FACTOR times each
# property's CI examples (`examples`), and no per-test timeout.
LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
LONG_FACTOR = 20


def examples(ci: int) -> int:
    """A property's example count: `ci` in the CI profile, LONG_FACTOR times it in "long"
    (a test's own `max_examples` overrides the profile's, so each test asks here)."""
    return ci * LONG_FACTOR if LONG else ci


settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=2000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

log = logging.getLogger(__name__)

BACKEND_FIXTURES = {"db_url", "engine", "empty_db_url", "backend_url", "backend"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--db",
        action="append",
        default=[],
        metavar="URL",
        help="a database server to run backend tests on (repeatable); "
        "default: $USAGELEDGER_TEST_DBS or SQLite + local PostgreSQL + local MariaDB",
    )


def _configured_urls(config: pytest.Config) -> list[str]:
    urls: list[str] = list(config.getoption("--db"))
    if not urls and os.environ.get("USAGELEDGER_TEST_DBS"):
        urls = os.environ["USAGELEDGER_TEST_DBS"].replace(",", " ").split()
    return urls or list(DEFAULT_TEST_DBS)


def _backend_id(url: str) -> str:
    return db.backend_of(db.parse_url(url)).value


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if BACKEND_FIXTURES & set(metafunc.fixturenames):
        urls = _configured_urls(metafunc.config)
        metafunc.parametrize(
            "backend_url",
            [pytest.param(u, id=_backend_id(u), marks=pytest.mark.backend) for u in urls],
            scope="session",
        )


#: This machine, in the names of the test databases: process ids mean something only here.
HOST_TAG = hashlib.blake2b(socket.gethostname().encode(), digest_size=3).hexdigest()


def _run_tag(config: pytest.Config) -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"ul_test_{os.getpid()}_{worker}_{HOST_TAG}_{uuid.uuid4().hex[:6]}"


#: The name of a database a test run created: `_run_tag`, then `_` and a suffix.
_TEST_DATABASE_NAME = re.compile(
    r"ul_test_(?P<pid>[0-9]+)_(?P<worker>[A-Za-z0-9]+)_(?P<host>[0-9a-f]{6})_[0-9a-f]{6}"
    r"_[A-Za-z0-9_]+"
)
#: How long the sweep waits for a server to answer before it gives up on it.
SWEEP_CONNECT_TIMEOUT_SECONDS = 5


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (one we may not signal runs too)."""
    if pid <= 0:
        return True  # not a process id: never treat it as gone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def sweep_leftover_databases(
    server_url: str, *, alive: Callable[[int], bool] = pid_alive
) -> list[str]:
    """Drop the databases that killed test runs left on `server_url`: those named by
    `_run_tag` whose process id is not a running process here. A database of a live run is
    never touched. Returns the names dropped; a server that does not answer, or a database that
    cannot be dropped, is logged and skipped, never an error (the run goes on without the sweep).
    """
    try:
        server = db.parse_url(server_url)
        if db.backend_of(server) is db.Backend.SQLITE:
            return []  # SQLite's are files in pytest's own temporary folders, rotated by pytest
        names = db.database_names(server, connect_timeout=SWEEP_CONNECT_TIMEOUT_SECONDS)
    except Exception as exc:
        log.warning(
            "could not list leftover test databases on %s: %s",
            db.display_url(server_url),
            db.one_line(exc),
        )
        return []
    dropped: list[str] = []
    for name in names:
        found = _TEST_DATABASE_NAME.fullmatch(name)
        # Another machine's runs (another container sharing the server) are not ours to judge.
        if found is None or found["host"] != HOST_TAG or alive(int(found["pid"])):
            continue
        try:
            db.drop_database(server.set(database=name))
        except Exception as exc:
            log.warning("could not drop leftover test database %s: %s", name, db.one_line(exc))
            continue
        where = db.display_url(server.set(database=name))
        log.warning("dropped leftover test database %s of a run that is gone", where)
        dropped.append(where)
    return dropped


def pytest_sessionstart(session: pytest.Session) -> None:
    """Before any test: drop the databases of killed runs on every configured server (under
    xdist the controller does it once, before the workers start)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    dropped = [
        name for url in _configured_urls(session.config) for name in sweep_leftover_databases(url)
    ]
    if not dropped:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    for name in dropped:
        line = f"dropped leftover test database {name} (its run was killed)"
        if reporter is not None:
            reporter.write_line(line)
        else:
            print(line)


class _Databases:
    """The databases this test run created, per server URL, and which servers are down."""

    def __init__(self, tag: str, tmp: Path) -> None:
        self.tag = tag
        self.tmp = tmp
        self.migrated: dict[str, URL] = {}
        self.unavailable: dict[str, str] = {}
        self.created: list[URL] = []
        self._counter = 0

    def _fresh(self, server_url: str, suffix: str) -> URL:
        if server_url in self.unavailable:
            _missing_backend(server_url, self.unavailable[server_url])
        parsed = db.parse_url(server_url)
        if db.backend_of(parsed) is db.Backend.SQLITE:
            parsed = parsed.set(database=str(self.tmp / "placeholder.db"))
        try:
            url = db.create_database(parsed, f"{self.tag}_{suffix}")
        except Exception as exc:  # the server is down or refuses us
            self.unavailable[server_url] = db.one_line(exc)
            _missing_backend(server_url, self.unavailable[server_url])
        self.created.append(url)
        return url

    def migrated_url(self, server_url: str) -> URL:
        if server_url not in self.migrated:
            url = self._fresh(server_url, "main")
            engine = db.make_engine(url, create=True)
            try:
                migrations.upgrade(engine)
            finally:
                engine.dispose()
            self.migrated[server_url] = url
        return self.migrated[server_url]

    def empty_url(self, server_url: str) -> URL:
        self._counter += 1
        return self._fresh(server_url, f"e{self._counter}")

    def drop_all(self) -> None:
        for url in self.created:
            try:
                db.drop_database(url)
            except Exception as exc:
                print(f"could not drop test database {db.display_url(url)}: {db.one_line(exc)}")


def _missing_backend(url: str, why: str) -> None:
    message = f"backend {db.display_url(url)} is not available: {why}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI requires every backend)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def _databases(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[_Databases]:
    dbs = _Databases(_run_tag(request.config), tmp_path_factory.mktemp("sqlite"))
    yield dbs
    dbs.drop_all()


@pytest.fixture(autouse=True)
def _no_database_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """§9 `--db URL` (env `USAGELEDGER_DB`): a command a test runs without `--db` uses the
    default, never a URL the person or CI running the suite happens to have exported; a test
    about the variable sets it itself."""
    monkeypatch.delenv(db.ENV_DB, raising=False)


@pytest.fixture(scope="session")
def backend_url(request: pytest.FixtureRequest) -> str:
    """The server URL of the backend this test instance runs on (parametrized)."""
    return str(request.param)


@pytest.fixture
def db_url(backend_url: str, _databases: _Databases) -> URL:
    """A database of this run with the schema at head and every table empty, ids restarted."""
    url = _databases.migrated_url(backend_url)
    engine = db.make_engine(url)
    try:
        db.truncate_tables(engine, list(metadata.sorted_tables))
    finally:
        engine.dispose()
    return url


@pytest.fixture
def engine(db_url: URL) -> Iterator[Engine]:
    eng = db.make_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def empty_db_url(backend_url: str, _databases: _Databases) -> URL:
    """A freshly created database without any schema (for migration tests)."""
    return _databases.empty_url(backend_url)


@pytest.fixture
def backend(backend_url: str) -> db.Backend:
    return db.backend_of(db.parse_url(backend_url))


def pytest_report_header(config: pytest.Config) -> list[str]:
    return ["backends: " + ", ".join(db.display_url(u) for u in _configured_urls(config))]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if LONG:  # a verification run's properties take as long as their examples need
        for item in items:
            item.add_marker(pytest.mark.timeout(0))
    # Tag each report with its backend so the summary can count per backend (works under xdist).
    for item in items:
        callspec = getattr(item, "callspec", None)
        url = callspec.params.get("backend_url") if callspec is not None else None
        item.user_properties.append(("backend", _backend_id(url) if url else "no database"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which backends actually ran, and how many tests each passed, failed or skipped."""
    counts: dict[str, dict[str, int]] = {}
    for outcome in ("passed", "failed", "skipped", "error"):
        for report in terminalreporter.stats.get(outcome, []):
            when = getattr(report, "when", None)
            if when is None or (outcome == "passed" and when != "call"):
                continue
            backend = dict(getattr(report, "user_properties", [])).get("backend", "no database")
            per = counts.setdefault(str(backend), {})
            per[outcome] = per.get(outcome, 0) + 1
    if not counts:
        return
    terminalreporter.section("backends")
    for backend in sorted(counts):
        parts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts[backend].items()))
        terminalreporter.write_line(f"{backend}: {parts}")
