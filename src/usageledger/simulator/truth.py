"""Ground truth (SPEC S5): what really ran, when and at which size, from the producer operations
that committed, on the simulated clock. Pure Python over plain values.

The truth never looks at the event tables: it replays the platform's own state changes (P1–P3)
in commit order, so that the checker can hold the consumer's bills against it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import attrs

from usageledger.reconstruct.billing import Footprint


@attrs.frozen
class CommittedOp:
    """One producer operation that committed: on which resource, what, at which moment.

    `at` is the simulated time the operation read for its event (or the commit time when it
    wrote none). `instances`/`memory`/`plan_guid` are the operation's arguments, resolved.
    """

    step: int
    actor: str
    kind: str  # app | task | service | staging
    guid: str
    label: str
    op: str
    at: datetime
    instances: int | None = None
    memory: int | None = None
    plan_guid: str | None = None
    wrote_event: bool | None = None


@attrs.frozen
class TrueSegment:
    """One stretch of time a resource really ran at one footprint; `end` None = still running."""

    kind: str
    guid: str
    label: str
    start: datetime
    end: datetime | None
    footprint: Footprint


@attrs.frozen
class Truth:
    """Every resource's true segments, plus which resources run at the horizon."""

    segments: tuple[TrueSegment, ...]
    labels: Mapping[str, str]  # guid -> label
    kinds: Mapping[str, str]  # guid -> kind
    running_at_end: frozenset[str]
    horizon: datetime
    cancelled_before_running: frozenset[str] = frozenset()
    """Tasks cancelled while PENDING (possible when their run_task failed): the table cannot
    tell them from a cancelled running task, and B1 seeds every CANCELING task."""
    canceling_at_end: frozenset[str] = frozenset()
    """Of those, the ones still CANCELING at the horizon (B1 counts them as running)."""

    def segments_of(self, guid: str) -> tuple[TrueSegment, ...]:
        return tuple(s for s in self.segments if s.guid == guid)

    def running_at(self, guid: str, moment: datetime) -> bool:
        return any(
            s.start <= moment and (s.end is None or moment < s.end) for s in self.segments_of(guid)
        )

    def ever_ran(self, guid: str) -> bool:
        return any(True for _ in self.segments_of(guid))


@attrs.define
class _Resource:
    kind: str
    guid: str
    label: str
    running: bool = False
    gone: bool = False
    task_state: str = "PENDING"
    instances: int = 1
    memory: int = 256
    plan_guid: str | None = None
    open_since: datetime | None = None


@attrs.frozen
class InitialSize:
    """A process's or task's size when the run began (processes are created before actors)."""

    instances: int = 1
    memory: int = 256


class TruthBuilder:
    """Applies committed operations in commit order (P1–P3) and cuts true segments."""

    def __init__(self, initial: Mapping[str, tuple[str, str, InitialSize]]) -> None:
        # guid -> (kind, label, size)
        self._resources: dict[str, _Resource] = {}
        for guid, (kind, label, size) in initial.items():
            self._resources[guid] = _Resource(
                kind=kind, guid=guid, label=label, instances=size.instances, memory=size.memory
            )
        self._segments: list[TrueSegment] = []
        self._cancelled_pending: set[str] = set()

    def _resource(self, op: CommittedOp) -> _Resource:
        if op.guid not in self._resources:
            self._resources[op.guid] = _Resource(kind=op.kind, guid=op.guid, label=op.label)
        return self._resources[op.guid]

    def _footprint(self, r: _Resource) -> Footprint:
        if r.kind == "service":
            return Footprint(service_plan_guid=r.plan_guid)
        return Footprint(instance_count=r.instances, memory_in_mb_per_instance=r.memory)

    def _open(self, r: _Resource, at: datetime) -> None:
        r.running = True
        r.open_since = at

    def _close(self, r: _Resource, at: datetime) -> None:
        assert r.open_since is not None
        self._segments.append(
            TrueSegment(
                r.kind, r.guid, r.label, r.open_since, max(at, r.open_since), self._footprint(r)
            )
        )
        r.running = False
        r.open_since = None

    def _resize(self, r: _Resource, at: datetime, change: dict[str, Any]) -> None:
        if r.running:
            before = self._footprint(r)
            after_r = attrs.evolve(r, **change)
            if self._footprint(after_r) != before:
                self._close(r, at)
                for key, value in change.items():
                    setattr(r, key, value)
                self._open(r, at)
                return
        for key, value in change.items():
            setattr(r, key, value)

    def apply(self, op: CommittedOp) -> None:
        r = self._resource(op)
        at = op.at
        name = op.op
        if name == "start_process":
            if not r.running and not r.gone:
                self._open(r, at)
        elif name in ("stop_process", "destroy_process"):
            if r.running:
                self._close(r, at)
            if name == "destroy_process":
                r.gone = True
        elif name == "scale_process":
            change: dict[str, Any] = {}
            if op.instances is not None:
                change["instances"] = op.instances
            if op.memory is not None:
                change["memory"] = op.memory
            self._resize(r, at, change)
        elif name == "run_task":
            if r.task_state == "PENDING":
                r.task_state = "RUNNING"
                self._open(r, at)
        elif name == "cancel_task":
            if r.task_state == "PENDING":
                self._cancelled_pending.add(r.guid)
            if r.task_state in ("PENDING", "RUNNING"):
                r.task_state = "CANCELING"  # still billable (B1)
        elif name in ("succeed_task", "fail_task", "destroy_task"):
            if r.running:
                self._close(r, at)
            r.task_state = "ENDED"
        elif name == "create_service_instance":
            r.plan_guid = op.plan_guid
            self._open(r, at)
        elif name == "update_service_instance":
            if op.plan_guid is not None:
                self._resize(r, at, {"plan_guid": op.plan_guid})
        elif name == "delete_service_instance":
            if r.running:
                self._close(r, at)
            r.gone = True
        # staging operations are not billed by lifecycle; the truth leaves them out.

    def finish(self, horizon: datetime) -> Truth:
        segments = list(self._segments)
        running: set[str] = set()
        for r in self._resources.values():
            if r.running:
                assert r.open_since is not None
                segments.append(
                    TrueSegment(r.kind, r.guid, r.label, r.open_since, None, self._footprint(r))
                )
                running.add(r.guid)
        segments.sort(key=lambda s: (s.kind, s.label, s.start))
        return Truth(
            segments=tuple(segments),
            labels={r.guid: r.label for r in self._resources.values()},
            kinds={r.guid: r.kind for r in self._resources.values()},
            running_at_end=frozenset(running),
            horizon=horizon,
            cancelled_before_running=frozenset(self._cancelled_pending),
            canceling_at_end=frozenset(
                g for g in self._cancelled_pending if self._resources[g].task_state == "CANCELING"
            ),
        )


def build_truth(
    initial: Mapping[str, tuple[str, str, InitialSize]],
    committed: Iterable[CommittedOp],
    horizon: datetime,
) -> Truth:
    """The truth from the committed operations, in the order they committed (by step)."""
    builder = TruthBuilder(initial)
    for op in sorted(committed, key=lambda o: o.step):
        builder.apply(op)
    return builder.finish(horizon)
