"""The pure planner: from a run, its batches and its workloads, decide what to do next.

Plain data in (parsed models, :class:`~continual_operator.workloads.views.JobView` and ``now``), a
:class:`~continual_operator.planning.actions.Plan` out; no kopf, no Kubernetes client, no clock, no
randomness: the same inputs always give the same plan, and tests are tables of cases. An executor feeds it
and applies the plan; everything the planner needs to remember lives in the objects' statuses. The plan
carries built workloads (the kind builds them, :mod:`continual_operator.workloads`), so executors build
nothing.

:func:`plan` composes small deciders, each a function over one :class:`~.draft.Draft` (the snapshot of the
world and the decisions so far): :mod:`.attempts` and :mod:`.orphans` (results, retries), :mod:`.starting`
(workloads that do not start), :mod:`.history` (clean-up, halting), :mod:`.artifacts` (restore, snapshots,
consolidations), :mod:`.queue` (which batch next), :mod:`.lease` (the single writer, suspend) and
:mod:`.run_status`.

The decisions, in the order they are applied:

1. **Order.** Batches train by explicit ``spec.order`` (those with one first, ascending), then by creation
   time, then by name. A batch that arrives late with a small order is simply the next one to train.
2. **One writer.** A Job that has not finished (running, waiting for Kueue, or being deleted while its pod
   checkpoints) may write to the volume: while one exists, no Job is created. The trainer's lock on the
   volume is the second line of defence.
3. **Deterministic Job names** (``{run}-{batch}-a{attempt}``, :func:`~continual_operator.naming.job_name`).
   A duplicated event or a restarted operator computes the same name, the create answers 409, and no
   second Job appears. A batch is marked Training *before* its Job is created; a Job that exists without
   that mark (the operator died in between) is adopted. **Coalesced**: the queued batches right after it
   (up to ``spec.training.maxBatchesPerJob`` in all) ride in the same Job, named after the first one's
   attempt and marked Training with it; when it ends each is recorded from its own result
   (:func:`.attempts.record_coalesced`), and those it did not reach are Queued again, no attempt counted.
4. **Results.** A finished Job is recorded once: when its attempt is the batch's latest and the batch is
   still marked Training (or the attempt is newer than the status knows). Jobs being deleted are never
   recorded or adopted: the operator deletes a Job only after recording it, or to stop it on suspend.
   The outcome rules are in :mod:`continual_operator.workloads.outcomes`.
5. **Contiguity.** A batch must start exactly where the last completed batch ended (``status.completedStep``
   of the run, which survives the deletion of old TrainingBatches) and must not end before it starts. The
   very first batch a run records may start anywhere: a run re-created on a retained volume continues
   from the step its checkpoints hold. A trainer answering AlreadyCompleted re-reports history and is not
   checked against the current step. A violation marks the batch Failed (reason StepsNotContiguous), sets
   Degraded and halts the run whatever the failure policy: the volume holds training nobody accounted for.
6. **Failures.** Preemptions retry at once and are counted apart (``preemptions``). Transient and
   unclassified failures retry after ``backoffSeconds * 2^(n-1)`` (capped) until ``maxRetriesPerBatch``
   retries are used up; then, or on a permanent failure, the batch is Failed.
7. **Halting** is derived, not stored: the run is halted while a Failed batch is not followed by a later
   success and either the policy is Halt or the failure is a contiguity violation. The user lifts it by
   deleting (or re-submitting) the failed batch, or by switching to SkipBatch; a failure from a SkipBatch
   period does not halt the run later unless it is the newest terminal event (equal timestamps count as
   halting: the safe side).
8. **Suspend.** No new Job; a running Job is deleted with foreground propagation so that its pod gets
   SIGTERM and checkpoints (the trainer exits 85), while the Job object keeps counting as the writer until
   the pod is gone. The batch stays Training and the same attempt is re-created on resume.
9. **Batches deleted while training.** Their Job runs to the end (stopping it would leave steps on the
   volume that no batch accounts for, and the trainer's ledger would block every later batch). A success
   moves the run's ``completedStep``; either way an Event says what happened and the Job is deleted.
   A batch deleted *after* it had failed (its failure recorded: its Job is not the run's ``currentJob``)
   is what the Degraded message advises: a Normal Event FailedBatchRemoved says so, its Jobs are deleted
   and the next Job's trainer abandons the batch like a Failed one.
10. **History.** Finished Jobs whose result is recorded are deleted, except the newest
    :data:`FINISHED_JOBS_KEPT` (for ``kubectl logs``); the result lives on in the batch status.
11. **Status.** The run's phase, counters, current batch/Job, ``completedStep`` and conditions (Ready,
    Training, Degraded, Suspended) are recomputed on every plan and patched only when they changed. The
    trainer's own progress fields are written only when a batch result is recorded; losses are rounded to
    :data:`LOSS_DIGITS` significant digits (``kubectl get`` prints what is stored).
12. **Refusals** (:mod:`continual_operator.planning.refusals`). What the run trained with is recorded in
    ``status.trainedWith`` with its first Job; a spec that differs there, a ``baseModel.path`` outside the
    volume, or a folder another run of the namespace holds (:class:`PlanContext`) stops the run from
    starting Jobs: Halted, Degraded naming the field (or the other run) and the fix, a Warning Event. A
    running Job is left to finish and is recorded. A batch whose ``data.path`` resolves outside the volume
    fails permanently (reason DataPathOutsideVolume) without a Job.
13. **Starting.** A Job whose trainer container has not started gets ``spec.failurePolicy.
    startDeadlineSeconds`` from its pod's creation. While it waits for something that will not happen by
    itself (a missing Secret, an image that cannot be pulled, an unschedulable pod) the batch's reason and
    message say so, with a Warning Event, and the run is Pending. Past the deadline the Job is stopped
    (foreground deletion) and the attempt counts as a transient failure: retried after the back-off.
14. **Artifacts** (:mod:`.artifacts`). A restore (``spec.restoreFrom``) runs before the first batch of a run
    with no progress; a due snapshot or consolidation runs when nobody holds the lease, before the next
    batch. Every artifact kind holds the writer lease. Results go into the run's status.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from continual_operator.api import ContinualTrainingRun, TrainingBatch
from continual_operator.planning import (
    artifacts,
    attempts,
    history,
    lease,
    orphans,
    queue,
    run_status,
    starting,
)
from continual_operator.planning.actions import Plan
from continual_operator.planning.attempts import LOSS_DIGITS, round_loss
from continual_operator.planning.draft import Draft, PlanContext, batch_order_key
from continual_operator.planning.history import FINISHED_JOBS_KEPT
from continual_operator.workloads.views import JobView

__all__ = ["FINISHED_JOBS_KEPT", "LOSS_DIGITS", "PlanContext", "batch_order_key", "plan", "round_loss"]


def plan(
    run: ContinualTrainingRun,
    batches: Sequence[TrainingBatch],
    jobs: Sequence[JobView],
    *,
    now: dt.datetime,
    context: PlanContext | None = None,
) -> Plan:
    """What to do next for ``run`` (see the module docstring for the rules).

    ``batches`` may include other runs' batches (they are ignored); ``jobs`` are the run's workloads.
    """
    if run.metadata.deletion_timestamp is not None:
        # Owner references let the garbage collector remove the Jobs; nothing new may start.
        return Plan()
    draft = Draft(run, batches, jobs, now, context or PlanContext())
    attempts.record_jobs(draft)  # decisions 3-6
    orphans.record_orphans(draft)  # decision 9
    attempts.record_coalesced(draft)  # decisions 4, 9: the batches after a coalesced Job's first
    artifacts.record_artifacts(draft)  # decision 14
    starting.watch_starting_jobs(draft)  # decision 13
    artifacts.watch_starting_artifacts(draft)  # decisions 13, 14
    history.clean_up_history(draft)  # decision 10
    halting = history.halting_batch(draft)  # decision 7
    writers = draft.writers()  # decision 2
    queue.mark_new_batches_queued(draft)
    if draft.spec.suspend:
        lease.suspend(draft, writers)  # decision 8
    elif lease.may_start(draft, writers, halting) and not artifacts.start_artifact(draft):  # decision 14
        queue.start_next(draft)  # decisions 1, 3, 12
        halting = history.halting_batch(draft)  # a batch refused on the way may halt the run
    return draft.to_plan(run_status.run_status(draft, halting, writers))  # decisions 11, 12
