"""Decider: the run's status (decisions 11 and 12) -- phase, counters, current workload, conditions, Events.

Recomputed on every plan from the draft's decisions and patched only when it changed. The trainer's own
progress fields are written only when a batch result is recorded. A refusal (:mod:`.refusals`) shows as
Halted with Degraded naming the field and the fix, and one Warning Event when it starts or changes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from continual_operator.api import ContinualTrainingRunStatus, RunPhase
from continual_operator.api.meta import ConditionStatus
from continual_operator.naming import batch_id
from continual_operator.planning.attempts import STEPS_NOT_CONTIGUOUS
from continual_operator.planning.draft import Draft
from continual_operator.planning.refusals import trained_with
from continual_operator.planning.status import merge_patch, rfc3339, set_condition, wire
from continual_operator.workloads.train import TRAIN
from continual_operator.workloads.views import JobView

_EPOCH = dt.datetime.min.replace(tzinfo=dt.UTC)
#: The Training condition's reason while an artifact job holds the volume.
ARTIFACT_RUNNING = {
    "snapshot": "SnapshotRunning",
    "restore": "RestoreRunning",
    "consolidate": "ConsolidationRunning",
}
#: A condition as (status, reason, message).
Condition = tuple[ConditionStatus, str, str]


def run_status(draft: Draft, halting: str | None, writers: list[JobView]) -> dict[str, Any]:
    """The merge patch of the run's status (empty when nothing changed); Events on phase changes."""
    old = draft.run.status
    spec = draft.spec
    generation = draft.run.metadata.generation
    kueue = spec.scheduling.kueue_queue_name is not None
    current: tuple[str, str] | None = None
    current_kind = TRAIN.name
    waiting_for_admission = False
    stuck: JobView | None = None
    if draft.create is not None:
        current, waiting_for_admission = (draft.create.job_name, draft.create.batch), kueue
        current_kind = draft.create.kind
    elif writers:
        writer = max(writers, key=lambda j: (j.created or _EPOCH, j.name))
        current, waiting_for_admission = (writer.name, writer.batch), writer.suspended
        current_kind = writer.kind
        stuck = writer if writer.cannot_start and not writer.deleting else None

    phase, training = _phase(draft, halting, current, waiting_for_admission, stuck)
    if phase == "Training" and current is not None and current_kind != TRAIN.name:
        # An artifact job holds the volume: batches wait for it.
        phase, training = (
            "Pending",
            (
                "False",
                ARTIFACT_RUNNING.get(current_kind, "WorkloadRunning"),
                f"Job {current[0]} runs ({current_kind}): batches wait for it",
            ),
        )
    elif phase == "Idle" and draft.hold is not None:
        phase, training = draft.hold[0], ("False", draft.hold[1], draft.hold[2])  # type: ignore[assignment]
    conditions = list(old.conditions)
    degraded = _degraded(draft, halting)
    ready: Condition = (
        ("False", "Suspended", "spec.suspend is true")
        if spec.suspend
        else ("False", degraded[1], degraded[2])
        if draft.refusal is not None
        else ("False", "Halted", degraded[2])
        if halting is not None
        else ("True", "Ready", "batches are trained in order as they arrive")
    )
    suspended: Condition = (
        ("True", "Suspended", "spec.suspend is true")
        if spec.suspend
        else ("False", "NotSuspended", "spec.suspend is false")  # not "": see _degraded
    )
    for type_, (status, reason, message) in (
        ("Ready", ready),
        ("Training", training),
        ("Degraded", degraded),
        ("Suspended", suspended),
        *((type_, (status, reason, message)) for type_, status, reason, message in draft.extra_conditions),
    ):
        conditions = set_condition(
            conditions, type_, status, reason, message, generation=generation, now=draft.now
        )

    counts = [draft.statuses[b.metadata.name].phase for b in draft.batches]
    current_batch = batch_id(current[1]) if current is not None and current_kind == TRAIN.name else None
    desired = wire(old) | {
        "phase": phase,
        "observedGeneration": generation,
        "batchesCompleted": counts.count("Succeeded"),
        "batchesQueued": sum(1 for p in counts if p in {None, "Queued"}),
        "batchesFailed": counts.count("Failed"),
        "currentJob": current[0] if current is not None else None,
        "currentBatch": current_batch,
        "completedStep": draft.completed_step(),
        "conditions": [wire(c) for c in conditions],
        **draft.progress,
        **draft.run_fields,
    }
    if current_batch != old.current_batch:
        desired["currentBatchProgress"] = 0.0 if current_batch is not None else None
    if draft.create is not None and old.trained_with is None:
        desired["trainedWith"] = wire(trained_with(draft.run))  # decision 12: recorded once, then kept
    if draft.refusal is not None:
        _refusal_event(draft, old, degraded)
    else:
        _phase_events(draft, old.phase, phase, degraded[2])
    return merge_patch(wire(old), desired)


def _phase(
    draft: Draft,
    halting: str | None,
    current: tuple[str, str] | None,
    waiting_for_admission: bool,
    stuck: JobView | None,
) -> tuple[RunPhase, Condition]:
    """The run's phase and its Training condition."""
    phase: RunPhase
    training: Condition
    if draft.spec.suspend:
        phase = "Suspended"
        stopping = f": Job {current[0]} is checkpointing and stopping" if current else ""
        training = ("False", "Suspended", f"spec.suspend is true{stopping}")
    elif halting is not None or (draft.refusal is not None and current is None):
        phase = "Halted"
        training = ("False", "Halted", "training is halted: see the Degraded condition")
    elif current is not None and waiting_for_admission:
        phase = "Pending"
        training = ("False", "AwaitingAdmission", f"Job {current[0]} waits for admission by Kueue")
    elif stuck is not None:
        phase = "Pending"
        why = f": {stuck.waiting_message}" if stuck.waiting_message else ""
        training = (
            "False",
            stuck.waiting_reason or "CannotStart",
            f"Job {stuck.name} cannot start its pod ({stuck.waiting_reason}{why}): "
            + (
                f"see TrainingBatch {stuck.batch}"
                if stuck.batch
                else f"its {stuck.kind} waits, and batches wait for it"
            ),
        )
    elif current is not None:
        phase = "Training"
        training = ("True", "JobRunning", f"Job {current[0]} trains batch {current[1]}")
    elif draft.waiting is not None:
        phase = "Pending"
        training = (
            "False",
            "BackingOff",
            f"batch {draft.waiting[0]} is retried at {rfc3339(draft.waiting[1])}",
        )
    else:
        phase = "Idle"
        training = ("False", "Idle", "no batch is waiting to be trained")
    return phase, training


def _refusal_event(draft: Draft, old: ContinualTrainingRunStatus, degraded: Condition) -> None:
    """One Warning Event when the refusal starts or changes (not on every reconcile)."""
    before = next((c for c in old.conditions if c.type == "Degraded"), None)
    if before is None or (before.status, before.reason, before.message) != degraded:
        draft.run_event("Warning", degraded[1], degraded[2])


def _degraded(draft: Draft, halting: str | None) -> Condition:
    if draft.refusal is not None:
        return ("True", draft.refusal.reason, draft.refusal.message)
    if halting is None:
        # Never an empty message: the 1.20 API server (the e2e tier's) reads "" inside a list item of a
        # status as null and refuses the whole status patch ("must be of type string").
        return ("False", "Healthy", "no batch has failed permanently and steps are contiguous")
    status = draft.statuses[halting]
    if status.reason == STEPS_NOT_CONTIGUOUS:
        fix = (
            "inspect the volume (ledger/ and checkpoints/ in the run folder); once it is consistent, delete "
            f"TrainingBatch {halting} to go on, or create a new run"
        )
    else:
        fix = (
            f"fix the cause and submit the data as a new TrainingBatch, delete TrainingBatch {halting}, or set "
            "spec.failurePolicy.onPermanentFailure to SkipBatch"
        )
    return (
        "True",
        STEPS_NOT_CONTIGUOUS if status.reason == STEPS_NOT_CONTIGUOUS else "BatchFailed",
        f"TrainingBatch {halting} failed ({status.reason}: {status.message}); training is halted: {fix}",
    )


def _phase_events(draft: Draft, old: str | None, new: RunPhase, degraded_message: str) -> None:
    if old == new:
        return
    if new == "Halted":
        draft.run_event("Warning", "Halted", degraded_message)
    elif new == "Suspended":
        draft.run_event("Normal", "Suspended", "spec.suspend is true")
    elif old in {"Suspended", "Halted", "Failed"}:
        draft.run_event("Normal", "Resumed", f"the run is {new} again")
