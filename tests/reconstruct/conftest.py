"""Ledger fixtures: the consumer's ledger tables beside the platform's, emptied before each test."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy.engine import URL, Engine

from usageledger import db
from usageledger.clock import SimulatedClock
from usageledger.migrations import ledger as ledger_migrations
from usageledger.schema import ledger_metadata

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="session")
def _ledger_ready() -> set[str]:
    """Database URLs whose ledger schema this session already created."""
    return set()


@pytest.fixture
def ledger(db_url: URL, engine: Engine, _ledger_ready: set[str]) -> Engine:
    """The ledger in the platform database (the default of `consume`), at head and empty."""
    key = str(db_url)
    if key not in _ledger_ready:
        ledger_migrations.upgrade(engine)
        _ledger_ready.add(key)
    db.truncate_tables(engine, list(ledger_metadata.sorted_tables))
    return engine


@pytest.fixture
def clock() -> SimulatedClock:
    """The consumer's own clock (C2), moved by the test."""
    return SimulatedClock(datetime(2026, 6, 1, tzinfo=UTC))


@pytest.fixture
def separate_ledger(empty_db_url: URL) -> Iterator[Engine]:
    """A ledger in a database of its own, as a billing system keeps it (C14)."""
    eng = db.make_engine(empty_db_url, create=True)
    ledger_migrations.upgrade(eng)
    yield eng
    eng.dispose()
