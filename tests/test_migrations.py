"""Migrations: upgrade, downgrade and upgrade again; the lifecycle indexes built online and
idempotently; an invalid index from an interrupted PostgreSQL build is rebuilt (SPEC §1)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from usageledger import db, migrations
from usageledger.errors import BadInputError, SchemaMissingError
from usageledger.migrations import ledger as ledger_migrations
from usageledger.schema import APP_LIFECYCLE_INDEX, LEDGER_TABLES, LIFECYCLE_INDEXES, metadata


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_upgrade_downgrade_upgrade_round_trip(empty_db_url: URL) -> None:
    """§1, §9 (`db upgrade`, `db downgrade`): upgrade → downgrade base → upgrade leaves the
    full schema at head each time."""
    engine = db.make_engine(empty_db_url, create=True)
    try:
        with pytest.raises(SchemaMissingError, match="usageledger db upgrade"):
            migrations.require_schema(engine)
        migrations.upgrade(engine)
        migrations.require_schema(engine)
        assert {t.name for t in metadata.sorted_tables} <= _tables(engine)

        migrations.downgrade(engine, "0001_base_schema")
        with engine.connect() as conn:
            assert [db.index_status(conn, ix) for ix in LIFECYCLE_INDEXES] == ["missing"] * 2
        with pytest.raises(SchemaMissingError, match="needs"):
            migrations.require_schema(engine)

        migrations.downgrade(engine, "base")
        assert not ({t.name for t in metadata.sorted_tables} & _tables(engine))
        assert migrations.current(engine).current is None

        migrations.upgrade(engine)
        status = migrations.current(engine)
        assert status.up_to_date
        with engine.connect() as conn:
            assert [db.index_status(conn, ix) for ix in LIFECYCLE_INDEXES] == ["valid"] * 2
    finally:
        engine.dispose()


def test_lifecycle_index_creation_is_idempotent(empty_db_url: URL) -> None:
    """§1 lifecycle indexes: building them again when they exist changes nothing and does not
    fail."""
    engine = db.make_engine(empty_db_url, create=True)
    try:
        migrations.upgrade(engine)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for index in LIFECYCLE_INDEXES:
                db.create_index_online(conn, index)
            indexes = sa.inspect(conn).get_indexes("app_usage_events")
        names = [ix["name"] for ix in indexes]
        assert names.count(APP_LIFECYCLE_INDEX.name) == 1
    finally:
        engine.dispose()


def test_invalid_concurrent_index_is_rebuilt(empty_db_url: URL, backend: db.Backend) -> None:
    """§1 lifecycle index on PostgreSQL: an invalid index left by an interrupted CONCURRENTLY build
    is detected and rebuilt with the right columns, not accepted as done."""
    if backend is not db.Backend.POSTGRESQL:
        pytest.skip("only PostgreSQL builds indexes concurrently and can leave an invalid one")
    engine = db.make_engine(empty_db_url, create=True)
    try:
        migrations.upgrade(engine, "0001_base_schema")
        with engine.begin() as conn:
            for guid in ("a", "b"):
                conn.execute(
                    sa.text(
                        "INSERT INTO app_usage_events (guid, created_at, instance_count,"
                        " memory_in_mb_per_instance, state, app_guid, app_name, space_guid,"
                        " space_name, org_guid) VALUES (:g, now(), 1, 1, 'STARTED', 'p', 'a',"
                        " 's', 's', 'o')"
                    ),
                    {"g": guid},
                )
        # A concurrent build that fails (duplicate keys) leaves an invalid index behind under the
        # lifecycle index's name, as a cancelled or crashed build would.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            with pytest.raises(sa.exc.IntegrityError):
                conn.exec_driver_sql(
                    f"CREATE UNIQUE INDEX CONCURRENTLY {APP_LIFECYCLE_INDEX.name}"
                    " ON app_usage_events (state)"
                )
            assert db.index_status(conn, APP_LIFECYCLE_INDEX) == "invalid"

        migrations.upgrade(engine)

        with engine.connect() as conn:
            assert db.index_status(conn, APP_LIFECYCLE_INDEX) == "valid"
            index = next(
                ix
                for ix in sa.inspect(conn).get_indexes("app_usage_events")
                if ix["name"] == APP_LIFECYCLE_INDEX.name
            )
        assert index["column_names"] == ["state", "app_guid", "id"]
        assert not index["unique"]
    finally:
        engine.dispose()


def test_downgrade_to_unknown_revision_is_bad_input(empty_db_url: URL) -> None:
    """§9: `db downgrade REV` with an unknown revision is bad input and changes nothing."""
    engine = db.make_engine(empty_db_url, create=True)
    try:
        migrations.upgrade(engine)
        with pytest.raises(BadInputError, match="no-such-revision"):
            migrations.downgrade(engine, "no-such-revision")
        assert migrations.current(engine).up_to_date
    finally:
        engine.dispose()


def test_ledger_0002_keeps_existing_cursors_and_compares_keys_byte_for_byte(
    empty_db_url: URL,
) -> None:
    """C3, ledger migrations: a ledger at ledger_0001 with a cursor upgrades to head; the cursor
    keeps its place (ledger_0003 adds its last event's guid, empty until the next batch), and on
    MariaDB the tables of a ledger made by an earlier release (the
    server's case-insensitive default) get the binary, no-pad collation. Downgrade to
    ledger_0001 and upgrade again round-trip."""
    ledger_tables = [t.name for t in LEDGER_TABLES]
    engine = db.make_engine(empty_db_url, create=True)
    try:
        ledger_migrations.upgrade(engine, "ledger_0001")
        mariadb = db.backend_of(engine) is db.Backend.MARIADB
        with engine.begin() as conn:
            for table in ledger_tables if mariadb else ():
                conn.exec_driver_sql(
                    f"ALTER TABLE {table} CONVERT TO CHARACTER SET utf8mb4"
                    " COLLATE utf8mb4_general_ci"
                )
            conn.exec_driver_sql(
                "INSERT INTO ledger_cursors (consumer, source_table, position, last_event_id,"
                " updated_at) VALUES ('billing', 'app_usage_events', 42, 41,"
                " '2026-01-01 00:00:00.000000')"
            )
        ledger_migrations.upgrade(engine)
        assert ledger_migrations.current(engine).up_to_date
        with engine.connect() as conn:
            row = conn.execute(
                sa.text("SELECT position, last_event_id, last_event_guid FROM ledger_cursors")
            )
            assert [tuple(r) for r in row] == [(42, 41, None)]  # ledger_0003's column, empty
            if mariadb:
                collations = conn.execute(
                    sa.text(
                        "SELECT DISTINCT table_collation FROM information_schema.tables"
                        " WHERE table_schema = DATABASE() AND table_name LIKE 'ledger%'"
                    )
                ).scalars()
                assert list(collations) == [db.MARIADB_BYTES_COLLATION]
        ledger_migrations.downgrade(engine, "ledger_0001")
        assert ledger_migrations.current(engine).current == "ledger_0001"
        ledger_migrations.upgrade(engine)
        assert ledger_migrations.current(engine).up_to_date
    finally:
        engine.dispose()


#: Upgrade from a process of its own: Alembic keeps its running context in module globals, so
#: two upgrades in threads of one process would share it. `{module}` is `migrations` or
#: `migrations.ledger`.
_CHILD = """
import sys
from usageledger import db
from usageledger.{module} import upgrade
sys.stdin.readline()  # all children start together
engine = db.make_engine(sys.argv[1], create=True)
try:
    upgrade(engine)
except Exception as exc:
    print(db.one_line(exc))
    sys.exit(1)
"""


def _upgrade_at_once(url: URL, module: str, runs: int) -> list[str]:
    """Run `usageledger.{module}.upgrade` in `runs` processes released together; return the
    errors they printed."""
    url_text = url.render_as_string(hide_password=False)
    code = _CHILD.format(module=module)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", code, url_text],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(runs)
    ]
    for child in children:  # the line releases each child once all of them are started
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    errors = []
    for child in children:
        out, _ = child.communicate(timeout=180)
        if child.returncode != 0:
            lines = out.strip().splitlines() or [f"exit {child.returncode}"]
            errors.append(lines[-1])
    return errors


@pytest.mark.parametrize("attempt", range(2))
def test_concurrent_first_upgrades_all_succeed(empty_db_url: URL, attempt: int) -> None:
    """§9 (`db upgrade`): several upgrades of one empty database at once — instances of a
    deploy each migrating on start — take turns: every one succeeds and the schema is at head
    once. Without the migration lock they raced: "relation already exists" on PostgreSQL, and
    on MariaDB, whose DDL commits at once, tables left without a revision."""
    db.make_engine(empty_db_url, create=True).dispose()
    assert _upgrade_at_once(empty_db_url, "migrations", runs=3) == []
    engine = db.make_engine(empty_db_url)
    try:
        migrations.require_schema(engine)
        ledger = {t.name for t in LEDGER_TABLES}
        assert {t.name for t in metadata.sorted_tables} - ledger <= _tables(engine)
    finally:
        engine.dispose()


@pytest.mark.parametrize("attempt", range(2))
def test_concurrent_first_consumers_create_the_ledger_once(empty_db_url: URL, attempt: int) -> None:
    """C14: consumers started at once on a new ledger database each create the ledger if it is
    missing (`consume` does, on first use); they take turns, and every one finds it at head."""
    db.make_engine(empty_db_url, create=True).dispose()
    assert _upgrade_at_once(empty_db_url, "migrations.ledger", runs=3) == []
    engine = db.make_engine(empty_db_url)
    try:
        ledger_migrations.require_ledger_schema(engine)
        assert {t.name for t in LEDGER_TABLES} <= _tables(engine)
    finally:
        engine.dispose()
