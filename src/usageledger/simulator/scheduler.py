"""The scheduler (SPEC S3): actors run the project's real functions, each in its own thread on
its own Engine; a gate on SQLAlchemy's connection events parks the thread before every database
interaction until the scheduler grants it, as PostgreSQL's isolation tester does with sessions.

Only one actor runs at a time (the granted one), so the Python code between two statements runs
in a deterministic order. A granted statement that does not come back is checked against the
backend's lock tables; if it waits on a lock it is marked blocked and other actors run until it
is released. Every decision goes into the schedule, which can be replayed step for step.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import attrs
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from usageledger import db
from usageledger.clock import SimulatedClock
from usageledger.errors import ReplayDivergenceError, StuckRunError
from usageledger.simulator.scenario import KILL_PREFIX, TICK, ScheduleEntry

log = logging.getLogger(__name__)

#: How long a granted step may take before the scheduler asks the backend whether it waits on a
#: lock, and how long an actor may stay unresolved before the run is declared stuck.
STEP_CHECK_SECONDS = 0.05
#: Schedule entries for hand-written race specs (see `Scheduler._directive`).
FREE_RUN = "*"
DIRECTIVES = ("until:", "through:", "op")
STUCK_SECONDS = 60.0
#: How long a replay waits for a recorded actor whose previous step is still blocked.
REPLAY_WAIT_SECONDS = 2.0


def _settled(actor: ActorRuntime) -> bool:
    return actor.status in ("parked", "done")


def _unblocked(actor: ActorRuntime) -> bool:
    return actor.status != "blocked"


class SimulatedCrash(BaseException):
    """Raised inside an actor's thread to kill it mid-operation (S4). A BaseException, so the
    production code's `except Exception` never swallows it; its context managers roll back."""


@attrs.frozen
class Pending:
    """What a parked actor is about to do."""

    kind: str  # op | sql | commit | rollback
    text: str
    fingerprint: str
    ready_at: datetime | None = None
    params: str = ""


@attrs.frozen
class HistoryEntry:
    """One line of the run's history (SIMULATOR.md): a step invoked and how it completed, or an
    operation's outcome, or an info note (tick, fault). `seq` is the line's position; `step`
    the scheduler step it belongs to. Optional fields are None/empty when they do not apply."""

    seq: int
    step: int
    actor: str
    phase: str  # invoke | ok | fail | info | blocked | unblocked
    kind: str  # op | sql | commit | rollback | tick | fault
    what: str
    fingerprint: str = ""
    params: str = ""
    """A digest of the statement's parameters (they hold fresh guids, so it differs per run)."""
    rows: int | None = None
    ids: tuple[int, ...] = ()
    cursor_before: tuple[tuple[str, int], ...] | None = None
    cursor_after: tuple[tuple[str, int], ...] | None = None
    commit_order: int | None = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "seq": self.seq,
            "step": self.step,
            "actor": self.actor,
            "phase": self.phase,
            "kind": self.kind,
            "what": self.what,
        }
        for name in ("fingerprint", "params", "rows", "commit_order", "detail"):
            value = getattr(self, name)
            if value not in (None, ""):
                document[name] = value
        if self.ids:
            document["ids"] = list(self.ids)
        for name in ("cursor_before", "cursor_after"):
            value = getattr(self, name)
            if value is not None:
                document[name] = dict(value)
        return document


def _what(kind: str, text: str) -> str:
    """A short name of a step: the operation, or the statement's first words."""
    if kind != "sql":
        return text
    words = _SPACES.sub(" ", text.strip()).split(" ")
    return " ".join(words[:4])[:60]


def _param_digest(parameters: Any) -> str:
    if not parameters:
        return ""
    return hashlib.blake2b(repr(parameters).encode(), digest_size=4).hexdigest()


_SPACES = re.compile(r"\s+")
_LISTS = re.compile(r"\((?:\s*(?:\?|%s|%\(\w+\)s|:\w+)\s*,?)+\)")


#: Names that differ per run (the scratch database `usageledger_sim_…`, a test run's database
#: `ul_test_…`) as a schema/database qualifier or a quoted name in a statement's text.
_RUN_NAMES = re.compile(r"(?:usageledger_sim|ul_test)_\w+")


def _without_names(text: str, names: tuple[str, ...]) -> str:
    """`text` with the per-run database names dropped where they qualify an object
    (`` `db`.`t` `` becomes `` `t` ``, also with double quotes or bare) and replaced by `~db`
    anywhere else they stand quoted. MariaDB's DESCRIBE of `has_table` names the database."""
    patterns = [re.escape(n) for n in names if n] + [_RUN_NAMES.pattern]
    for pattern in patterns:
        text = re.sub(rf"(?:`{pattern}`|\"{pattern}\"|\b{pattern}\b)\s*\.\s*", "", text)
        text = re.sub(rf"`{pattern}`|\"{pattern}\"|'{pattern}'", "~db", text)
    return text


def fingerprint(kind: str, text: str, names: tuple[str, ...] = ()) -> str:
    """A short digest of a step: its kind and normalized SQL (parameters left out: guids are
    fresh UUIDs on every run, ids and sizes are the same). Per-run names — `names` (the run's
    database) and any scratch or test database name — are normalized away (SPEC S1: a replay
    runs in a database of another name)."""
    normal = _LISTS.sub("(…)", _SPACES.sub(" ", _without_names(text.strip(), names)))
    return hashlib.blake2b(f"{kind}:{normal}".encode(), digest_size=4).hexdigest()


def _database_names(engine: Engine) -> tuple[str, ...]:
    """The database name of a server engine's URL, which differs per run (a scratch database);
    SQLite's file name never appears in a statement."""
    database = engine.url.database or ""
    if not database or engine.url.get_backend_name() == "sqlite":
        return ()
    return (database,)


class ActorRuntime:
    """One actor's thread, engine and gate state; fields are guarded by the scheduler's lock."""

    def __init__(self, name: str, kind: str, engine: Engine, scheduler: Scheduler) -> None:
        self.name = name
        self.kind = kind
        self.engine = engine
        self.scheduler = scheduler
        self.status = "new"  # new | parked | running | blocked | done
        self.pending: Pending | None = None
        #: How many times the actor has parked: names one parked step (object ids are reused).
        self.parks = 0
        self.granted = False
        self.crash_pending = False
        self.crashing = False
        self.session_id = 0
        self.in_transaction = False
        self.holds_sqlite_writer = False
        self.last_step = 0
        self.txn_first_step = 0
        self.last_txn_first_step = 0
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None
        self.abandoned = False
        #: When the actor's next operation is due, while it is busy with the current one: a
        #: tick never moves the clock past it (else its operations would pile up late).
        self.upcoming: datetime | None = None
        #: The simulated time the current operation began (None between operations).
        self.op_started_at: datetime | None = None
        #: What the granted step did, set in the actor's thread (history).
        self.result_rows: int | None = None
        self.result_ids: tuple[int, ...] = ()
        self.result_error = ""
        #: The granted step still in flight (its pending and step), for a blocked actor.
        self.inflight: tuple[Pending, int] | None = None
        self._install_gate()

    # -- the gate (runs in the actor's thread) --------------------------------------------------

    def _install_gate(self) -> None:
        engine = self.engine

        @event.listens_for(engine, "before_cursor_execute")
        def _before(
            conn: Connection, cursor: Any, statement: str, parameters: Any, *args: Any
        ) -> None:
            self._gate(conn, "sql", statement, parameters)

        @event.listens_for(engine, "after_cursor_execute")
        def _after(conn: Connection, cursor: Any, statement: str, *args: Any) -> None:
            if threading.current_thread() is not self.thread:
                return
            rows = getattr(cursor, "rowcount", -1)
            self.result_rows = rows if isinstance(rows, int) and rows >= 0 else None
            last = getattr(cursor, "lastrowid", None)
            # Inserted ids where the driver reports them (SQLite, MariaDB: one-row INSERTs).
            if statement.lstrip()[:6].upper() == "INSERT" and rows == 1 and last:
                self.result_ids = (int(last),)

        @event.listens_for(engine, "handle_error")
        def _error(context: Any) -> None:
            if threading.current_thread() is self.thread:
                self.result_error = db.one_line(context.original_exception)

        @event.listens_for(engine, "commit")
        def _commit(conn: Connection) -> None:
            self._gate(conn, "commit", "COMMIT")

        @event.listens_for(engine, "rollback")
        def _rollback(conn: Connection) -> None:
            self._gate(conn, "rollback", "ROLLBACK")

    def _gate(self, conn: Connection, kind: str, text: str, parameters: Any = None) -> None:
        if self.crashing or threading.current_thread() is not self.thread:
            return
        session = 0
        try:
            raw = conn.connection.dbapi_connection
            session = db.dbapi_session_id(raw) if raw is not None else 0
        except Exception:  # an invalidated connection has no session
            session = 0
        names = self.scheduler.run_names
        self.park(
            Pending(kind, text, fingerprint(kind, text, names), params=_param_digest(parameters)),
            session=session,
        )

    def park(self, pending: Pending, *, session: int = 0) -> None:
        """Wait until the scheduler grants `pending`; raise SimulatedCrash if told to crash."""
        sched = self.scheduler
        if self.abandoned:
            self.crashing = True
            raise SimulatedCrash(self.name)
        with sched.cv:
            self.pending = pending
            self.parks += 1
            self.session_id = session
            self.status = "parked"
            sched.cv.notify_all()
            while not self.granted:
                sched.cv.wait()
            self.granted = False
            self.status = "running"
            if self.crash_pending or self.abandoned:
                self.crash_pending = False
                self.crashing = True
                raise SimulatedCrash(self.name)

    def await_op(self, at: datetime, what: str) -> None:
        """Park before an operation until the simulated clock reaches `at` and it is granted."""
        self.park(Pending("op", what, fingerprint("op", what.split(" ")[0]), ready_at=at))

    def plan(self, times: list[datetime]) -> Callable[[int], None]:
        """Tell the scheduler when each of this actor's operations is due; the returned
        function marks operation `i` as started (its successor becomes `upcoming`)."""

        def started(i: int) -> None:
            self.upcoming = times[i + 1] if i + 1 < len(times) else None

        return started

    def crashed(self) -> None:
        """Called by the actor's program once it has unwound a SimulatedCrash."""
        self.crashing = False
        self.in_transaction = False
        self.holds_sqlite_writer = False


@attrs.define
class SchedulerStats:
    steps: int = 0
    ticks: int = 0
    blocked: int = 0
    kills: int = 0
    sqlite_writer_waits: int = 0
    longest_transaction: int = 0
    """The most steps any transaction stayed open (the consumer's grace must exceed it)."""


class Scheduler:
    """Interleaves the actors one step at a time (S3); see the module docstring."""

    def __init__(
        self,
        *,
        control: Engine,
        clock: SimulatedClock,
        rng: random.Random,
        strategy: str = "random",
        replay: tuple[ScheduleEntry, ...] = (),
        kill_probability: float = 0.0,
        on_commit: Callable[[ActorRuntime, int], None] | None = None,
        max_steps: int = 200_000,
        overlap: timedelta = timedelta(hours=6),
    ) -> None:
        self.cv = threading.Condition()
        self.control = control
        self.backend = db.backend_of(control)
        self.clock = clock
        self.rng = rng
        self.strategy = strategy
        self.replay = replay
        self.kill_probability = kill_probability
        self.on_commit = on_commit
        self.max_steps = max_steps
        self.overlap = overlap
        self.actors: list[ActorRuntime] = []
        self.schedule: list[ScheduleEntry] = []
        self.stats = SchedulerStats()
        self.step = 0
        self.kill_log: list[tuple[int, str]] = []
        #: Sessions killed on the server: a pooled connection of one of them must never be
        #: handed out again (actors and the observer share one pool).
        self.killed_sessions: set[int] = set()
        self.on_kill: Callable[[ActorRuntime, int], None] | None = None
        self._priorities: dict[str, float] = {}
        self._change_points: set[int] = set()
        self._counted_waits: set[tuple[str, int]] = set()
        #: Names that differ per run (the database's), kept out of fingerprints.
        self.run_names: tuple[str, ...] = _database_names(control)
        self.history: list[HistoryEntry] = []
        self.commits = 0
        self._history_lock = threading.Lock()

    # -- history -------------------------------------------------------------------------------

    def note(self, actor: str, phase: str, kind: str, what: str, **fields: Any) -> None:
        """Append one history line (from the scheduler, or from the one running actor)."""
        with self._history_lock:
            self.history.append(
                HistoryEntry(len(self.history), self.step, actor, phase, kind, what, **fields)
            )

    def _note_step(self, actor: ActorRuntime, phase: str, pending: Pending, step: int) -> None:
        fields: dict[str, Any] = {"fingerprint": pending.fingerprint, "params": pending.params}
        if phase in ("ok", "fail"):
            fields.update(rows=actor.result_rows, ids=actor.result_ids, detail=actor.result_error)
            if phase == "ok" and pending.kind == "commit":
                self.commits += 1
                fields["commit_order"] = self.commits
        with self._history_lock:
            self.history.append(
                HistoryEntry(
                    len(self.history),
                    step,
                    actor.name,
                    phase,
                    pending.kind,
                    _what(pending.kind, pending.text),
                    **fields,
                )
            )

    def _complete(self, actor: ActorRuntime, pending: Pending, step: int) -> None:
        """Record how a granted step ended: blocked on a lock, failed, or done. A commit's
        `on_commit` runs once the commit has completed, not while it waits on a lock."""
        if actor.status == "blocked":
            actor.inflight = (pending, step)
            self._note_step(actor, "blocked", pending, step)
            return
        actor.inflight = None
        if pending.kind in ("commit", "rollback"):
            actor.holds_sqlite_writer = False
        if pending.kind == "op":
            return  # the operation's own outcome is noted when it ends
        failed = bool(actor.result_error) or (actor.status == "done" and actor.error is not None)
        self._note_step(actor, "fail" if failed else "ok", pending, step)
        if pending.kind == "commit" and not failed and self.on_commit is not None:
            self.on_commit(actor, self.step)

    # -- setup ---------------------------------------------------------------------------------

    def add(self, name: str, kind: str, engine: Engine) -> ActorRuntime:
        runtime = ActorRuntime(name, kind, engine, self)
        self.actors.append(runtime)
        return runtime

    def start(self, programs: dict[str, Callable[[ActorRuntime], None]]) -> None:
        if self.strategy == "pct":
            for a in self.actors:
                self._priorities[a.name] = self.rng.random()
            self._priorities[TICK] = self.rng.random()
            self._change_points = {self.rng.randrange(1, 5000) for _ in range(3)}
        for runtime in self.actors:
            program = programs[runtime.name]
            runtime.thread = threading.Thread(
                target=self._run_actor, args=(runtime, program), name=runtime.name, daemon=True
            )
        for runtime in self.actors:
            assert runtime.thread is not None
            runtime.thread.start()
            with self.cv:
                # Start threads one at a time so each reaches its first gate in a fixed order.
                if not self.cv.wait_for(partial(_settled, runtime), 30):
                    raise StuckRunError(f"actor {runtime.name} did not reach its first step")

    def _run_actor(self, runtime: ActorRuntime, program: Callable[[ActorRuntime], None]) -> None:
        try:
            program(runtime)
        except BaseException as exc:  # recorded; the checker sees what it left behind
            runtime.error = exc
            log.warning("actor %s stopped: %s", runtime.name, exc)
        finally:
            with self.cv:
                runtime.status = "done"
                runtime.pending = None
                runtime.in_transaction = False
                runtime.holds_sqlite_writer = False
                self.cv.notify_all()

    # -- choosing ------------------------------------------------------------------------------

    def _eligible(self, a: ActorRuntime) -> bool:
        if a.status != "parked" or a.pending is None or a.inflight is not None:
            return False  # a released step is settled (its outcome recorded) first
        p = a.pending
        if p.kind == "op":
            return p.ready_at is None or p.ready_at <= self.clock.now()
        if (
            self.backend is db.Backend.SQLITE
            and p.kind == "sql"
            and db.is_sqlite_write_begin(p.text)
        ):
            # SQLite has one writer: its BEGIN IMMEDIATE would wait; model the lock instead.
            return not any(o.holds_sqlite_writer for o in self.actors if o is not a)
        return True

    def _next_time(self) -> datetime | None:
        """The earliest moment some actor's operation is due after now; None if none is."""
        now = self.clock.now()
        waiting = [
            a.pending.ready_at
            for a in self.actors
            if a.status == "parked"
            and a.pending is not None
            and a.pending.kind == "op"
            and a.pending.ready_at is not None
            and a.pending.ready_at > now
        ]
        if not waiting:
            return None
        busy = [
            a.upcoming
            for a in self.actors
            if a.status != "done"
            and not (a.pending is not None and a.pending.kind == "op" and a.status == "parked")
            and a.upcoming is not None
            and a.upcoming > now
        ]
        return min(waiting + busy)

    def _choose(self, ready: list[ActorRuntime], can_tick: bool) -> str:
        names = [a.name for a in ready] + ([TICK] if can_tick else [])
        if self.strategy == "pct":
            if self.step in self._change_points and names:
                lowest = min(self._priorities.values()) - 1.0
                top = max(names, key=lambda n: self._priorities[n])
                self._priorities[top] = lowest
            return max(names, key=lambda n: self._priorities[n])
        return names[self.rng.randrange(len(names))]

    # -- running -------------------------------------------------------------------------------

    def run(self) -> None:
        """Drive every actor to the end of its program."""
        replay_at = 0
        while True:
            self._settle_blocked()
            with self.cv:
                live = [a for a in self.actors if a.status != "done"]
                if not live:
                    return
                ready = [a for a in self.actors if self._eligible(a)]
                blocked = [a for a in self.actors if a.status == "blocked"]
                next_time = self._next_time()
                for a in self.actors:
                    if (
                        a.status == "parked"
                        and a.pending is not None
                        and a.pending.kind == "sql"
                        and (a.name, a.parks) not in self._counted_waits
                        and not self._eligible(a)
                    ):
                        # One wait per parked BEGIN IMMEDIATE, however long it lasts.
                        self._counted_waits.add((a.name, a.parks))
                        self.stats.sqlite_writer_waits += 1
                        holder = next((o.name for o in self.actors if o.holds_sqlite_writer), "")
                        self.note(
                            a.name,
                            "blocked",
                            a.pending.kind,
                            _what(a.pending.kind, a.pending.text),
                            fingerprint=a.pending.fingerprint,
                            detail=f"waits for the SQLite write lock held by {holder}",
                        )
            if self.step >= self.max_steps:
                raise StuckRunError(f"the run exceeded {self.max_steps} steps")
            if not ready and next_time is None:
                if blocked:
                    self._wait_for_deadlock_resolution(blocked)
                    continue
                raise StuckRunError(
                    "no actor can move: "
                    + ", ".join(f"{a.name} {a.status} at {a.pending}" for a in live)
                )
            if self.replay:
                if replay_at >= len(self.replay):
                    raise ReplayDivergenceError(
                        f"divergence at step {self.step}: the recorded schedule ended but actors "
                        f"still run ({', '.join(a.name for a in live)})"
                    )
                entry = self.replay[replay_at]
                replay_at += 1
                if entry.choice == FREE_RUN:
                    # A hand-written race spec ends here; the seeded strategy takes over.
                    self.replay = ()
                    continue
                if entry.fingerprint.startswith(DIRECTIVES):
                    self._directive(entry)
                    continue
                self._replay_entry(entry, ready, next_time)
                continue
            if self.kill_probability and self.rng.random() < self.kill_probability:
                victims = [
                    a
                    for a in ready
                    if a.in_transaction and a.pending is not None and a.pending.kind != "op"
                ]
                if victims:
                    victim = victims[self.rng.randrange(len(victims))]
                    self._kill(victim)
                    continue
            # Time may pass while transactions are open, but not past an operation that is due
            # and not yet begun: that would make every later operation run late.
            now = self.clock.now()
            due = any(a.pending is not None and a.pending.kind == "op" for a in ready) or any(
                a.upcoming is not None and a.upcoming <= now for a in ready
            )
            # An operation in flight lets time run on only within the overlap window from its
            # start: operations due meanwhile interleave with it, later ones wait.
            started = [
                a.op_started_at
                for a in self.actors
                if a.op_started_at is not None
                and a.status != "done"
                and not (a.pending is not None and a.pending.kind == "op" and a.status == "parked")
            ]
            within = next_time is not None and (
                not started or next_time <= min(started) + self.overlap
            )
            choice = self._choose(ready, within and not due) if ready else TICK
            if choice == TICK:
                assert next_time is not None
                self._tick(next_time)
            else:
                self._grant(next(a for a in ready if a.name == choice))

    def _replay_entry(
        self, entry: ScheduleEntry, ready: list[ActorRuntime], next_time: datetime | None
    ) -> None:
        if entry.choice == TICK:
            if next_time is None:
                raise ReplayDivergenceError(
                    f"divergence at step {self.step}: the schedule advances the clock but no "
                    "actor waits for a later time"
                )
            self._tick(next_time)
            return
        if entry.choice.startswith(KILL_PREFIX):
            name = entry.choice[len(KILL_PREFIX) :]
            victim = next((a for a in ready if a.name == name and a.in_transaction), None)
            if victim is None:
                raise ReplayDivergenceError(
                    f"divergence at step {self.step}: the schedule kills {name}, which is not "
                    "inside a transaction"
                )
            self._kill(victim)
            return
        actor = next((a for a in ready if a.name == entry.choice), None)
        if actor is None:
            actor = self._await_released(entry.choice)
        if actor is None or actor.pending is None:
            state = next((a.status for a in self.actors if a.name == entry.choice), "unknown")
            raise ReplayDivergenceError(
                f"divergence at step {self.step}: the schedule runs {entry.choice}, which is "
                f"{state} and cannot take a step"
                + (
                    " (its step waits on a lock it did not wait on when recorded)"
                    if state == "blocked"
                    else ""
                )
            )
        if entry.fingerprint and actor.pending.fingerprint != entry.fingerprint:
            raise ReplayDivergenceError(
                f"divergence at step {self.step}: {entry.choice} was recorded at step "
                f"{entry.fingerprint} but is now at {actor.pending.fingerprint} "
                f"({actor.pending.text[:80]!r})"
            )
        self._grant(actor)

    def _await_released(self, name: str) -> ActorRuntime | None:
        """Replay: the recorded actor's previous step waits on a lock. Whether a wait is caught,
        and when it ends, depends on timing (a lock that is being released, InnoDB's purge), so
        give it up to REPLAY_WAIT_SECONDS to end by itself before calling it a divergence. Its
        lock may instead be held by an actor the schedule has not yet resumed: then the run
        truly diverged."""
        actor = next((a for a in self.actors if a.name == name), None)
        if actor is None or actor.inflight is None:
            return None
        deadline = time.monotonic() + REPLAY_WAIT_SECONDS
        while time.monotonic() < deadline:
            self._settle(actor)
            if actor.inflight is None:
                return actor if self._eligible(actor) else None
            time.sleep(STEP_CHECK_SECONDS)
        return None

    def _directive(self, entry: ScheduleEntry) -> None:
        """Hand-written race specs: `[actor, "until:SQL"]` runs the actor up to (not
        including) its next statement containing SQL, `"through:SQL"` runs that statement
        too, `"op"` runs it to the end of its current operation. A directive also ends when
        the actor blocks on a lock."""
        actor = next((a for a in self.actors if a.name == entry.choice), None)
        if actor is None:
            raise ReplayDivergenceError(f"divergence at step {self.step}: no actor {entry.choice}")
        kind, _, prefix = entry.fingerprint.partition(":")
        prefix = prefix.strip().upper()
        for granted in range(10_000):
            self._settle_blocked()
            if actor.status == "done":
                if kind == "op":
                    return
                raise ReplayDivergenceError(
                    f"divergence at step {self.step}: {actor.name} ended before {prefix!r}"
                )
            if actor.status == "blocked":
                return  # it waits on a lock; the next entries decide who releases it
            pending = actor.pending
            assert pending is not None
            at_prefix = bool(prefix) and prefix in " ".join(pending.text.upper().split())
            if kind == "until" and at_prefix:
                return
            if granted and pending.kind == "op":
                return  # the operation ended (a statement that never came ends it too)
            if not self._eligible(actor):
                raise ReplayDivergenceError(
                    f"divergence at step {self.step}: {actor.name} cannot take a step now "
                    f"({pending.text[:60]!r})"
                )
            self._grant(actor)
            if kind == "through" and at_prefix:
                return
        raise ReplayDivergenceError(f"{entry.fingerprint!r} never matched for {actor.name}")

    def _tick(self, moment: datetime) -> None:
        self.clock.set(moment)
        self.schedule.append(ScheduleEntry(TICK))
        self.stats.ticks += 1
        self.step += 1
        self.note("~clock", "info", "tick", "tick", detail=moment.isoformat())

    def _kill(self, victim: ActorRuntime) -> None:
        """Kill the victim's session mid-transaction (S4): pg_terminate_backend / KILL on a
        server, and on SQLite a crash of the thread, which rolls its connection back."""
        self.schedule.append(ScheduleEntry(KILL_PREFIX + victim.name))
        self.step += 1
        self.stats.kills += 1
        self.kill_log.append((self.step, victim.name))
        self.note(victim.name, "info", "fault", "kill", detail=f"session {victim.session_id}")
        if self.on_kill is not None:
            self.on_kill(victim, self.step)
        if self.backend is not db.Backend.SQLITE and victim.session_id:
            self.killed_sessions.add(victim.session_id)
            db.kill_connection(self.control, victim.session_id)
            deadline = time.monotonic() + 10
            while db.session_alive(self.control, victim.session_id):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.005)
        else:
            victim.crash_pending = True
        # The victim's next step runs now and fails; it is part of the kill.
        self._grant(victim, record=False)

    def _grant(self, actor: ActorRuntime, *, record: bool = True) -> None:
        if actor.inflight is not None:
            # Its blocked step ended and it parked again before the re-check saw it.
            self._settle(actor)
        pending = actor.pending
        assert pending is not None
        if record:
            self.schedule.append(ScheduleEntry(actor.name, pending.fingerprint))
        self.step += 1
        step = self.step
        self.stats.steps += 1
        actor.last_step = step
        if pending.kind == "op":
            actor.op_started_at = self.clock.now()
        actor.result_rows = None
        actor.result_ids = ()
        actor.result_error = ""
        self._note_step(actor, "invoke", pending, step)
        if pending.kind == "sql":
            if not actor.in_transaction:
                actor.txn_first_step = step
            actor.in_transaction = True
            if self.backend is db.Backend.SQLITE and db.is_sqlite_write_begin(pending.text):
                actor.holds_sqlite_writer = True
        elif pending.kind in ("commit", "rollback"):
            if actor.in_transaction:
                self.stats.longest_transaction = max(
                    self.stats.longest_transaction, step - actor.txn_first_step
                )
            actor.in_transaction = False
            actor.last_txn_first_step = actor.txn_first_step
        with self.cv:
            # "running" from the moment of the grant: the step is complete only when the actor
            # parks again (or ends), never because it has not woken up yet.
            actor.granted = True
            actor.status = "running"
            self.cv.notify_all()
        self._await(actor)
        self._complete(actor, pending, step)

    def _await(self, actor: ActorRuntime) -> None:
        """Wait until the granted step completes, or mark it blocked on a lock."""
        started = time.monotonic()
        while True:
            with self.cv:
                if self.cv.wait_for(lambda: actor.status in ("parked", "done"), STEP_CHECK_SECONDS):
                    return
            if (
                self.backend is not db.Backend.SQLITE
                and actor.session_id
                and db.is_waiting_for_lock(self.control, actor.session_id)
            ):
                with self.cv:
                    if actor.status == "running":
                        actor.status = "blocked"
                        self.stats.blocked += 1
                        return
            if time.monotonic() - started > STUCK_SECONDS:
                raise StuckRunError(f"{actor.name} neither finished nor waited on a lock")

    def _settle_blocked(self) -> None:
        """Re-check, in a fixed order, every actor whose granted step waited on a lock, whatever
        its status now: a released one has run on to its next gate (or its end), and its step's
        outcome is recorded — rows, or a deadlock victim's error."""
        for actor in self.actors:
            if actor.inflight is not None:
                self._settle(actor)

    def _settle(self, actor: ActorRuntime) -> None:
        """Record `unblocked` and the outcome of `actor`'s in-flight step if its wait ended."""
        inflight = actor.inflight
        assert inflight is not None
        with self.cv:
            released = self.cv.wait_for(partial(_unblocked, actor), 0.001)
        if not released:
            if actor.session_id and db.is_waiting_for_lock(self.control, actor.session_id):
                return
            with self.cv:
                if actor.status == "blocked":
                    actor.status = "running"
        self._note_step(actor, "unblocked", *inflight)
        actor.inflight = None
        self._await(actor)
        self._complete(actor, *inflight)  # blocked again (another lock): in flight again

    def _wait_for_deadlock_resolution(self, blocked: list[ActorRuntime]) -> None:
        """Every live actor waits on another: let the database's deadlock detector pick a
        victim (its error is an outcome to record), within a bound."""
        deadline = time.monotonic() + STUCK_SECONDS
        while time.monotonic() < deadline:
            for actor in blocked:
                if actor.status != "blocked" or not db.is_waiting_for_lock(
                    self.control, actor.session_id
                ):
                    return
            time.sleep(0.01)
        raise StuckRunError(
            "every actor waits on a lock and the database chose no deadlock victim: "
            + ", ".join(a.name for a in blocked)
        )

    def abandon(self) -> None:
        """Release every parked thread with a crash so that none outlives the run."""
        with self.cv:
            for actor in self.actors:
                actor.abandoned = True
                if actor.status == "parked":
                    actor.granted = True
            self.cv.notify_all()
        for actor in self.actors:
            if actor.thread is not None:
                actor.thread.join(timeout=5)
