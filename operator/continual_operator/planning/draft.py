"""The working state of one :func:`~continual_operator.planning.planner.plan` call, shared by the deciders.

A :class:`Draft` holds the snapshot of the world the plan is made from (the run, its batches sorted in
queue order, its workloads' views, ``now``) and what the deciders have decided so far (new batch
statuses, Events, deletions, the workload to create, the next wake-up). Each decider is a function over
a Draft; :meth:`Draft.to_plan` turns the decisions into a :class:`~continual_operator.planning.actions.Plan`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from continual_operator.api import ContinualTrainingRun, TrainingBatch
from continual_operator.api.batch import TrainingBatchStatus
from continual_operator.api.meta import ConditionStatus
from continual_operator.planning.actions import (
    Action,
    CreateWorkload,
    DeleteWorkload,
    EmitEvent,
    EventType,
    ObjectKind,
    Plan,
    Propagation,
    RequeueAfter,
    UpdateBatchStatus,
    UpdateRunStatus,
)
from continual_operator.planning.refusals import Refusal, run_refusal
from continual_operator.planning.status import merge_patch, rfc3339, wire
from continual_operator.workloads.gang import Engines
from continual_operator.workloads.registry import owned_objects
from continual_operator.workloads.train import TRAIN
from continual_operator.workloads.views import JobView

_EPOCH = dt.datetime.min.replace(tzinfo=dt.UTC)


def batch_order_key(batch: TrainingBatch) -> tuple[int, int, dt.datetime, str]:
    """Explicit order first (ascending), then creation time, then name (decision 1)."""
    order = batch.spec.order
    created = batch.metadata.creation_timestamp or dt.datetime.max.replace(tzinfo=dt.UTC)
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.UTC)
    return (0 if order is not None else 1, order or 0, created, batch.metadata.name)


@dataclass(frozen=True)
class PlanContext:
    """What the planner may know besides the run's own objects (the cluster executor fills it in).

    ``other_runs``: the other runs of the namespace (one run per folder, decision 12). ``check_paths``:
    refuse paths outside the volume's mount -- on a cluster, where the pod sees the volume at ``/data``;
    local mode maps paths to local folders itself and leaves the check to the trainer's ``dataRoot``.
    ``data_roots``: see below. ``engines``: the multi-node engines the cluster offers (discovered by the
    cluster executor); None where the executor runs one node only (local mode).
    """

    other_runs: Sequence[ContinualTrainingRun] = ()
    check_paths: bool = False
    #: Folders besides the volume that batches' data is confined to (local mode's ``--inbox``): batches
    #: under different ones are not coalesced into one trainer process (it has one ``dataRoot``).
    data_roots: tuple[str, ...] = ()
    engines: Engines | None = None


class Draft:
    """The world one plan is made from, and the decisions made on it so far."""

    def __init__(
        self,
        run: ContinualTrainingRun,
        batches: Sequence[TrainingBatch],
        jobs: Sequence[JobView],
        now: dt.datetime,
        context: PlanContext,
    ) -> None:
        self.run = run
        self.context = context
        self.spec = run.spec
        self.name = run.metadata.name
        self.now = now
        self.batches = sorted((b for b in batches if b.spec.run_name == self.name), key=batch_order_key)
        self.by_name = {b.metadata.name: b for b in self.batches}
        self.original: dict[str, TrainingBatchStatus] = {b.metadata.name: b.status for b in self.batches}
        self.statuses = dict(self.original)
        #: Every workload of the run (the writer lease counts them all) ...
        self.workloads = sorted(jobs, key=lambda j: (j.kind, j.batch, j.attempt, j.name))
        #: ... and the trainer attempts among them (the batch deciders read only those).
        self.jobs = [j for j in self.workloads if j.kind == TRAIN.name]
        self.events: list[EmitEvent] = []
        self.deletes: list[DeleteWorkload] = []
        self.create: CreateWorkload | None = None
        #: The batch that waits for its retry's back-off, and until when.
        self.waiting: tuple[str, dt.datetime] | None = None
        self.requeue: float | None = None
        #: The trainer's progress fields to write to the run's status (set when a result is recorded).
        self.progress: dict[str, Any] = {}
        #: Where a batch deleted while it trained ended (decision 9): it moves the completed step too.
        self.orphan_step: int | None = None
        #: Trainer batch ids of failed batches deleted since (decision 9): abandoned like Failed ones.
        self.removed_failed: list[str] = []
        #: Run status fields set by artifact results (lastSnapshot, lastConsolidation, inbox after a restore).
        self.run_fields: dict[str, Any] = {}
        #: Where a restore left the run: the step the next batch starts from.
        self.restored_step: int | None = None
        #: Conditions besides the four the run always has, as (type, status, reason, message).
        self.extra_conditions: list[tuple[str, ConditionStatus, str, str]] = []
        #: Why batches may not start although nobody holds the lease (a restore comes first): phase, reason,
        #: message.
        self.hold: tuple[str, str, str] | None = None
        others = [r for r in context.other_runs if r.metadata.name != run.metadata.name]
        self.refusal: Refusal | None = run_refusal(
            run, others, check_paths=context.check_paths, engines=context.engines
        )

    # -- recording decisions ----------------------------------------------------------------------------
    def update(self, batch: str, **changes: Any) -> None:
        """Change a batch's status (its transition time moves with its phase)."""
        old = self.statuses[batch]
        if "phase" in changes and changes["phase"] != old.phase:
            changes["last_transition_time"] = rfc3339(self.now)
        changes["observed_generation"] = self.by_name[batch].metadata.generation
        self.statuses[batch] = old.model_copy(update=changes)

    def event(self, kind: ObjectKind, name: str, type_: EventType, reason: str, message: str) -> None:
        self.events.append(EmitEvent(kind, name, type_, reason, message))

    def run_event(self, type_: EventType, reason: str, message: str) -> None:
        """An Event on the run itself."""
        self.event("ContinualTrainingRun", self.name, type_, reason, message)

    def delete(self, job: JobView, reason: str, propagation: Propagation = "Background") -> None:
        """Delete a workload with the objects its kind owns."""
        self.deletes.append(DeleteWorkload(job.name, reason, propagation, owned_objects(job)))

    def wake_up_in(self, seconds: float) -> None:
        """Plan again after ``seconds`` at the latest."""
        self.requeue = seconds if self.requeue is None else min(self.requeue, seconds)

    # -- reading the draft ------------------------------------------------------------------------------
    def completed_step(self, exclude: str | None = None) -> int | None:
        """Where the last completed batch ended (decision 5): steps only grow, so the maximum is it."""
        steps = [s.end_step for k, s in self.statuses.items() if s.end_step is not None and k != exclude]
        steps += [
            s for s in (self.run.status.completed_step, self.orphan_step, self.restored_step) if s is not None
        ]
        return max(steps) if steps else None

    def writers(self) -> list[JobView]:
        """The workloads that hold the writer lease: any kind that writes, until its Job has finished."""
        return [j for j in self.workloads if j.writing]

    # -- the plan -----------------------------------------------------------------------------------------
    def to_plan(self, run_patch: dict[str, Any]) -> Plan:
        """The decisions as actions, in the order that is safe to stop at anywhere (see actions.py)."""
        actions: list[Action] = []
        for batch in self.batches:
            name = batch.metadata.name
            patch = merge_patch(wire(self.original[name]), wire(self.statuses[name]))
            if patch:
                actions.append(UpdateBatchStatus(name, patch))
        if self.create is not None:
            actions.append(self.create)
        if run_patch:
            actions.append(UpdateRunStatus(run_patch))
        actions.extend(self.deletes)
        actions.extend(self.events)
        if self.requeue is not None:
            actions.append(RequeueAfter(self.requeue))
        return Plan(tuple(actions))
