"""Wrong consumers, kept in the tests only (SPEC S8, C2): the simulator must show they lose or
double-bill. Never a switch in production code."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy.engine import Engine

from usageledger import db
from usageledger.clock import Clock
from usageledger.lifecycles import EVENT_TABLES
from usageledger.reconstruct import source
from usageledger.reconstruct.billing import (
    BillingStateMachine,
    Ledger,
    Role,
    UsageEvent,
    meaning_of,
)
from usageledger.simulator.consumers import ConsumerProgram, PollOutcome, StepClock


class NaiveMaxIdConsumer:
    """Reads `id > highest id seen` and never waits at a gap: a row that commits late below
    its cursor is never read (the naive cursor of S8)."""

    flavour = "naive"

    def __init__(self, name: str, folder: Path) -> None:
        self.name = name
        self.machine = BillingStateMachine()
        self.positions = {table: 0 for table in EVENT_TABLES}

    def _read(self, engine: Engine, batch_size: int) -> PollOutcome:
        applied = 0
        for table in EVENT_TABLES:
            while True:
                with db.transaction(engine, read_only=True) as conn:
                    events = source.fetch_after(conn, table, self.positions[table], batch_size)
                for event in events:
                    self._apply(event)
                applied += len(events)
                if events:
                    self.positions[table] = events[-1].id
                if len(events) < batch_size:
                    break
        return PollOutcome(tuple(self.positions.items()), 0, 0, applied)

    def _apply(self, event: UsageEvent) -> None:
        self.machine.apply(event)

    def poll(self, source_engine: Engine, clock: Clock, batch_size: int) -> PollOutcome:
        return self._read(source_engine, batch_size)

    def drain(self, source_engine: Engine, clock: StepClock, grace: timedelta) -> bool:
        self._read(source_engine, 500)
        return True

    def restart(self) -> None:
        pass

    def ledger(self) -> Ledger:
        return self.machine.ledger()

    def close(self) -> None:
        pass


def naive_factory(name: str, folder: Path) -> ConsumerProgram:
    return NaiveMaxIdConsumer(name, folder)


WRONG_CONSUMERS = {"naive": naive_factory}


class CreatedAtConsumer(NaiveMaxIdConsumer):
    """Pairs events by created_at instead of id (S8): each batch is applied in created_at
    order, so an ending stamped earlier than the baseline it follows is taken as noise."""

    flavour = "created_at"

    def _read(self, engine: Engine, batch_size: int) -> PollOutcome:
        applied = 0
        for table in EVENT_TABLES:
            with db.transaction(engine, read_only=True) as conn:
                events = source.fetch_after(conn, table, self.positions[table], 10_000)
            for event in sorted(events, key=lambda e: (e.created_at, e.id)):
                self.machine.apply(event)
            applied += len(events)
            if events:
                self.positions[table] = events[-1].id
        return PollOutcome(tuple(self.positions.items()), 0, 0, applied)


def created_at_factory(name: str, folder: Path) -> ConsumerProgram:
    return CreatedAtConsumer(name, folder)


WRONG_CONSUMERS["created_at"] = created_at_factory


class ResizeBlindConsumer(NaiveMaxIdConsumer):
    """Ignores resizes (STARTED after STARTED, UPDATED), so it bills a scaled process at its
    old size for ever (C8): the wrong footprint the simulator must show as I5."""

    flavour = "resize_blind"

    def _apply(self, event: UsageEvent) -> None:
        if meaning_of(event).role is not Role.RESIZE:
            self.machine.apply(event)


def resize_blind_factory(name: str, folder: Path) -> ConsumerProgram:
    return ResizeBlindConsumer(name, folder)


WRONG_CONSUMERS["resize_blind"] = resize_blind_factory
