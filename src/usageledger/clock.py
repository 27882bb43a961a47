"""Where time comes from (SPEC P5, R1): the database's clock by default, a simulated one in the
simulator. Every operation that needs "now" takes a Clock, never the host clock directly."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

from sqlalchemy.engine import Connection

from usageledger.db import database_now


@runtime_checkable
class Clock(Protocol):
    """A source of the current time as an aware UTC datetime.

    `conn` is the connection of the transaction asking, so a database clock reads the time of
    the server that stores the row.
    """

    def now(self, conn: Connection) -> datetime: ...


class DatabaseClock:
    """The database's current time (the platform's CURRENT_TIMESTAMP)."""

    def now(self, conn: Connection) -> datetime:
        return database_now(conn)

    def __repr__(self) -> str:
        return "DatabaseClock()"


class SimulatedClock:
    """A clock that moves only when told to; safe to share between actor threads."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("SimulatedClock needs an aware datetime")
        self._now = start.astimezone(UTC)
        self._guard = threading.Lock()

    def now(self, conn: Connection | None = None) -> datetime:
        with self._guard:
            return self._now

    def advance(self, delta: timedelta) -> datetime:
        if delta < timedelta(0):
            raise ValueError("a simulated clock never moves backwards")
        with self._guard:
            self._now += delta
            return self._now

    def set(self, moment: datetime) -> None:
        moment = moment.astimezone(UTC)
        with self._guard:
            if moment < self._now:
                raise ValueError("a simulated clock never moves backwards")
            self._now = moment

    def __repr__(self) -> str:
        return f"SimulatedClock({self._now.isoformat()})"


DEFAULT_CLOCK: Clock = DatabaseClock()
