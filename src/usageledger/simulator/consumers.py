"""Consumers as simulator actors (S2): the reference consumer from `usageledger.reconstruct`,
behind a small interface so that the test suite can plug in wrong ones (a naive max-id cursor)
without any switch in production code."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

import attrs
from sqlalchemy.engine import Engine

from usageledger import db
from usageledger.clock import Clock
from usageledger.lifecycles import EVENT_TABLES
from usageledger.migrations import ledger as ledger_migrations
from usageledger.reconstruct import consumer as reference
from usageledger.reconstruct import ledger_store
from usageledger.reconstruct.billing import Ledger

#: How many batches one poll reads per table at most; a poll is one visit, not a drain.
MAX_BATCHES_PER_POLL = 20


@attrs.frozen
class PollOutcome:
    """What one poll did: cursor positions per table after it, and what it ran into."""

    positions: tuple[tuple[str, int], ...]
    waited_at_gap: int = 0
    fell_behind: int = 0
    events_applied: int = 0


class ConsumerProgram(Protocol):
    """A consumer the simulator drives: poll (gated, through `source`), drain at the end
    (ungated), restart from what it persisted, and hand over its ledger."""

    flavour: str

    def poll(self, source: Engine, clock: Clock, batch_size: int) -> PollOutcome: ...

    def drain(self, source: Engine, clock: StepClock, grace: timedelta) -> bool: ...

    def restart(self) -> None: ...

    def ledger(self) -> Ledger: ...

    def close(self) -> None: ...


ConsumerFactory = Callable[[str, Path], ConsumerProgram]
"""Makes a consumer from its name and a private working folder (for its ledger database)."""


class ReferenceConsumer:
    """`reconstruct.consumer.consume_batch` with its ledger in a database of its own (C14)."""

    flavour = "reference"

    def __init__(
        self, name: str, folder: Path, *, grace: timedelta, template: Path | None = None
    ) -> None:
        self.name = name
        self.grace = grace
        path = folder / f"ledger-{name}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        if template is not None:
            # An empty ledger migrated once (see `ledger_template`): a copy saves the migration.
            shutil.copyfile(template, path)
        self.engine = db.make_engine(f"sqlite:///{path}", create=True)
        if template is None:
            ledger_migrations.upgrade(self.engine)

    def _read(
        self, source: Engine, clock: Clock, batch_size: int, limit: int | None
    ) -> PollOutcome:
        positions: list[tuple[str, int]] = []
        waited = behind = applied = 0
        for table in EVENT_TABLES:
            batches = 0
            while limit is None or batches < limit:
                result = reference.consume_batch(
                    source,
                    self.engine,
                    table=table,
                    consumer=self.name,
                    clock=clock,
                    grace=self.grace,
                    batch_size=batch_size,
                )
                batches += 1
                applied += result.events_applied
                positions.append((table, result.position))
                if result.fell_behind is not None:
                    behind += 1
                if result.blocked_by is not None:
                    waited += 1
                    break
                if result.caught_up:
                    break
        return PollOutcome(tuple(positions), waited, behind, applied)

    def poll(self, source: Engine, clock: Clock, batch_size: int) -> PollOutcome:
        return self._read(source, clock, batch_size, MAX_BATCHES_PER_POLL)

    def drain(self, source: Engine, clock: StepClock, grace: timedelta) -> bool:
        """Read to the end. Nothing is in flight any more, so every hole is a rollback or a
        pruned range: let the consumer's clock pass the grace period until none is left."""
        for _ in range(10):
            outcome = self._read(source, clock, 500, None)
            if outcome.waited_at_gap == 0:
                return True
            clock.offset += grace + timedelta(seconds=1)
        return False

    def restart(self) -> None:
        # Everything lives in the ledger (C1): a restart drops only the pooled connections.
        self.engine.dispose()

    def ledger(self) -> Ledger:
        with db.transaction(self.engine, read_only=True) as conn:
            return ledger_store.read_ledger(conn, self.name)

    def close(self) -> None:
        self.engine.dispose()


def reference_factory(grace: timedelta, template: Path | None = None) -> ConsumerFactory:
    def make(name: str, folder: Path) -> ConsumerProgram:
        return ReferenceConsumer(name, folder, grace=grace, template=template)

    return make


def ledger_template(folder: Path) -> Path:
    """An empty consumer ledger with its schema at head, to copy for many short runs."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ledger-template.db"
    if not path.exists():
        engine = db.make_engine(f"sqlite:///{path}", create=True)
        try:
            ledger_migrations.upgrade(engine)
        finally:
            engine.dispose()  # the last connection closing folds the WAL into the file
        # The migration's lock file: nothing else ever migrates this copy.
        Path(f"{path}.{ledger_migrations.MIGRATION_LOCK}.lock").unlink(missing_ok=True)
    return path


class StepClock:
    """The consumer's own clock (C2): one simulated second per scheduler step, plus an offset
    the final drain moves forward so that rolled-back id holes finally pass their grace."""

    def __init__(self, start: datetime, steps: Callable[[], int]) -> None:
        self.start = start
        self.steps = steps
        self.offset = timedelta(0)

    def now(self, conn: object = None) -> datetime:
        return self.start + timedelta(seconds=self.steps()) + self.offset
