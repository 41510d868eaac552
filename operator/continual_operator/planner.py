"""The pure planner: from a run, its batches and its Jobs, decide what to do next.

Plain data in (parsed models, :class:`~continual_operator.views.JobView` and ``now``), a
:class:`~continual_operator.actions.Plan` out; no kopf, no Kubernetes client, no clock, no randomness: the
same inputs always give the same plan, and tests are tables of cases. The handler layer feeds it and
carries out the plan; everything the planner needs to remember lives in the objects' statuses.

The decisions, in the order they are applied:

1. **Order.** Batches train by explicit ``spec.order`` (those with one first, ascending), then by creation
   time, then by name. A batch that arrives late with a small order is simply the next one to train.
2. **One writer.** A Job that has not finished (running, waiting for Kueue, or being deleted while its pod
   checkpoints) may write to the volume: while one exists, no Job is created. The trainer's lock on the
   volume is the second line of defence.
3. **Deterministic Job names** (``{run}-{batch}-a{attempt}``, :func:`~continual_operator.naming.job_name`).
   A duplicated event or a restarted operator computes the same name, the create answers 409, and no
   second Job appears. A batch is marked Training *before* its Job is created; a Job that exists without
   that mark (the operator died in between) is adopted.
4. **Results.** A finished Job is recorded once: when its attempt is the batch's latest and the batch is
   still marked Training (or the attempt is newer than the status knows). Jobs being deleted are never
   recorded or adopted: the operator deletes a Job only after recording it, or to stop it on suspend.
   The outcome rules are in :mod:`continual_operator.outcomes`.
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
12. **Refusals** (:mod:`continual_operator.refusals`). What the run trained with is recorded in
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
"""

from __future__ import annotations

import datetime as dt
import posixpath
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from continual_operator.actions import (
    Action,
    CreateJob,
    DeleteJob,
    EmitEvent,
    EventType,
    ObjectKind,
    Plan,
    RequeueAfter,
    UpdateBatchStatus,
    UpdateRunStatus,
)
from continual_operator.api import (
    ContinualTrainingRun,
    ContinualTrainingRunStatus,
    RunPhase,
    TrainingBatch,
)
from continual_operator.api.meta import ConditionStatus
from continual_operator.naming import batch_id, job_name
from continual_operator.outcomes import Outcome, backoff_seconds, classify
from continual_operator.refusals import Refusal, batch_path_refusal, run_refusal, trained_with
from continual_operator.status import (
    RUN_NOT_FOUND,
    merge_patch,
    parse_time,
    rfc3339,
    set_condition,
    wire,
)
from continual_operator.views import STARTUP_PROBLEMS, JobView

#: Recorded finished Jobs kept for ``kubectl logs``; older ones are deleted.
FINISHED_JOBS_KEPT = 3
#: Re-check soon when a Job name is still taken by a Job that is going away.
NAME_TAKEN_REQUEUE_SECONDS = 5.0
#: While a Job waits for its container to start, look again this often (pods have no watch of their own).
STARTING_RECHECK_SECONDS = 10.0
#: Significant digits of the losses written to status (a float32 loss has about 7; 5 keep the 4 decimals people compare).
LOSS_DIGITS = 5
TERMINAL = frozenset({"Succeeded", "Failed"})
STEPS_NOT_CONTIGUOUS = "StepsNotContiguous"
START_DEADLINE_EXCEEDED = "StartDeadlineExceeded"
CHECKPOINT_REBUILT = "CheckpointRebuilt"
SUSPENDED = "Suspended"
_EPOCH = dt.datetime.min.replace(tzinfo=dt.UTC)


def batch_order_key(batch: TrainingBatch) -> tuple[int, int, dt.datetime, str]:
    """Explicit order first (ascending), then creation time, then name (decision 1)."""
    order = batch.spec.order
    created = batch.metadata.creation_timestamp or dt.datetime.max.replace(tzinfo=dt.UTC)
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.UTC)
    return (0 if order is not None else 1, order or 0, created, batch.metadata.name)


def round_loss(loss: float | None) -> float | None:
    """A loss as status shows it: :data:`LOSS_DIGITS` significant digits."""
    return None if loss is None else float(f"{loss:.{LOSS_DIGITS}g}")


@dataclass(frozen=True)
class PlanContext:
    """What the planner may know besides the run's own objects (the cluster executor fills it in).

    ``other_runs``: the other runs of the namespace (one run per folder, decision 12). ``check_paths``:
    refuse paths outside the volume's mount -- on a cluster, where the pod sees the volume at ``/data``;
    local mode maps paths to local folders itself and leaves the check to the trainer's ``dataRoot``.
    """

    other_runs: Sequence[ContinualTrainingRun] = ()
    check_paths: bool = False


def plan(
    run: ContinualTrainingRun,
    batches: Sequence[TrainingBatch],
    jobs: Sequence[JobView],
    *,
    now: dt.datetime,
    context: PlanContext | None = None,
) -> Plan:
    """What to do next for ``run`` (see the module docstring for the rules).

    ``batches`` may include other runs' batches (they are ignored); ``jobs`` are the run's Jobs.
    """
    if run.metadata.deletion_timestamp is not None:
        # Owner references let the garbage collector remove the Jobs; nothing new may start.
        return Plan()
    return _Planner(run, batches, jobs, now, context or PlanContext()).plan()


class _Planner:
    """The working state of one :func:`plan` call."""

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
        self.original = {b.metadata.name: b.status for b in self.batches}
        self.statuses = dict(self.original)
        self.jobs = sorted(jobs, key=lambda j: (j.batch, j.attempt, j.name))
        self.events: list[EmitEvent] = []
        self.deletes: list[DeleteJob] = []
        self.create: CreateJob | None = None
        self.waiting: tuple[str, dt.datetime] | None = None
        self.requeue: float | None = None
        self.progress: dict[str, Any] = {}
        self.orphan_step: int | None = None
        #: Trainer batch ids of failed batches deleted since (decision 9): abandoned like Failed ones.
        self.removed_failed: list[str] = []
        others = [r for r in context.other_runs if r.metadata.name != run.metadata.name]
        self.refusal: Refusal | None = run_refusal(run, others, check_paths=context.check_paths)

    # -- the whole plan ---------------------------------------------------------------------------------
    def plan(self) -> Plan:
        self._record_jobs()
        self._watch_starting_jobs()
        self._clean_up_history()
        halting = self._halting_batch()
        writers = [j for j in self.jobs if j.writing]
        self._mark_new_batches_queued()
        if self.spec.suspend:
            self._suspend(writers)
        elif halting is None and not writers and self.refusal is None:
            self._start_next()
            halting = self._halting_batch()  # a batch refused on the way may halt the run
        run_patch = self._run_status(halting, writers)
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

    # -- helpers ----------------------------------------------------------------------------------------
    def _mark_new_batches_queued(self) -> None:
        """A batch nobody has looked at yet says so (``kubectl get tbatch`` shows Queued, not a blank); so does
        one that waited for its run to be created."""
        for batch in self.batches:
            name = batch.metadata.name
            status = self.statuses[name]
            waited_for_run = status.phase == "Queued" and status.reason == RUN_NOT_FOUND
            if (status.phase is None or waited_for_run) and batch.metadata.deletion_timestamp is None:
                self._update(
                    name,
                    phase="Queued",
                    reason="Queued",
                    message="waiting for its turn: batches train one at a time, in order",
                )

    def _update(self, batch: str, **changes: Any) -> None:
        old = self.statuses[batch]
        if "phase" in changes and changes["phase"] != old.phase:
            changes["last_transition_time"] = rfc3339(self.now)
        changes["observed_generation"] = self.by_name[batch].metadata.generation
        self.statuses[batch] = old.model_copy(update=changes)

    def _event(self, kind: ObjectKind, name: str, type_: EventType, reason: str, message: str) -> None:
        self.events.append(EmitEvent(kind, name, type_, reason, message))

    def _completed_step(self, exclude: str | None = None) -> int | None:
        """Where the last completed batch ended (decision 5): steps only grow, so the maximum is it."""
        steps = [s.end_step for k, s in self.statuses.items() if s.end_step is not None and k != exclude]
        steps += [s for s in (self.run.status.completed_step, self.orphan_step) if s is not None]
        return max(steps) if steps else None

    # -- decisions 3, 4, 9: Jobs -> batch statuses -----------------------------------------------------
    def _record_jobs(self) -> None:
        by_batch: dict[str, list[JobView]] = defaultdict(list)
        for job in self.jobs:
            # A Job being deleted was dealt with already: its result was recorded before its cleanup, or it
            # is being stopped by a suspend (its batch stays Training and the attempt is re-created).
            if not job.deleting:
                by_batch[job.batch].append(job)
        for batch in self.batches:
            name = batch.metadata.name
            if name not in by_batch:
                continue
            latest = max(by_batch[name], key=lambda j: j.attempt)
            status = self.statuses[name]
            attempts = status.attempts or 0
            if latest.attempt < attempts or (latest.attempt == attempts and status.phase != "Training"):
                continue  # recorded before
            if latest.finished:
                self._record(name, latest)
            elif latest.attempt != attempts or status.job != latest.name or status.phase != "Training":
                self._update(
                    name, phase="Training", attempts=latest.attempt, job=latest.name, next_attempt_time=None
                )
        for batch_name in sorted(by_batch.keys() - self.by_name.keys()):
            recorded_failures = []
            for job in by_batch[batch_name]:
                if not job.finished:
                    continue
                if job.name != self.run.status.current_job and classify(job).kind != "Succeeded":
                    # Not the Job the run was waiting for: its failure was recorded on the batch before the
                    # batch was deleted (as the Degraded message advises).
                    recorded_failures.append(job)
                    self.deletes.append(DeleteJob(job.name, reason="BatchDeleted"))
                else:
                    self._record_orphan(job)
            if recorded_failures:
                self._failed_batch_removed(batch_name, recorded_failures)

    def _record(self, batch: str, job: JobView) -> None:
        outcome = classify(job)
        status = self.statuses[batch]
        self._update(batch, attempts=job.attempt, job=job.name)
        if outcome.kind == "Succeeded":
            self._record_success(batch, outcome)
        elif outcome.kind == "Preempted":
            step = outcome.result.end_step if outcome.result is not None else None
            at = f" at step {step}" if step is not None else ""
            self._update(
                batch,
                phase="Queued",
                preemptions=(status.preemptions or 0) + 1,
                reason="Preempted",
                message=f"attempt {job.attempt} was preempted{at} ({outcome.message}); it resumes from its last "
                "checkpoint in the next attempt",
                next_attempt_time=None,
            )
            self._event("TrainingBatch", batch, "Normal", "Preempted", self.statuses[batch].message or "")
        else:
            failures = (status.failures or 0) + 1
            limit = self.spec.failure_policy.max_retries_per_batch
            if outcome.kind == "Retry" and failures <= limit:
                self._retry(batch, job, outcome, failures)
            else:
                self._fail(batch, outcome, failures)

    def _retry(self, batch: str, job: JobView, outcome: Outcome, failures: int) -> None:
        policy = self.spec.failure_policy
        delay = backoff_seconds(failures, base=policy.backoff_seconds, cap=policy.max_backoff_seconds)
        # Rounded up to the whole second nextAttemptTime is stored with: rounded down, any reconcile in
        # that last part of a second (a Job event, another batch) would start the retry early.
        retry_at = _whole_second_up(self.now + dt.timedelta(seconds=delay))
        # The retry first: the outcome's message may be a 1 KB log tail (a crash leaves no result record),
        # and Event messages are cut at 1 KB.
        message = (
            f"attempt {job.attempt} failed ({outcome.reason}); retry {failures} of "
            f"{policy.max_retries_per_batch} at {rfc3339(retry_at)}: {outcome.message}"
        )
        self._update(
            batch,
            phase="Queued",
            failures=failures,
            reason=outcome.reason,
            message=message,
            next_attempt_time=rfc3339(retry_at),
        )
        self._event("TrainingBatch", batch, "Warning", "Retrying", message)

    def _fail(self, batch: str, outcome: Outcome, failures: int) -> None:
        if outcome.kind == "Permanent":
            reason, message = outcome.reason, outcome.message
        else:
            reason = "RetriesExhausted"
            message = (
                f"{failures} failed attempts, the last one {outcome.reason}: {outcome.message} "
                f"(spec.failurePolicy.maxRetriesPerBatch is {self.spec.failure_policy.max_retries_per_batch})"
            )
        result = outcome.result
        self._update(
            batch,
            phase="Failed",
            failures=failures,
            reason=reason,
            message=message,
            next_attempt_time=None,
            start_step=result.start_step if result is not None else None,
            target_step=result.target_step if result is not None else None,
        )
        if self.spec.failure_policy.on_permanent_failure == "Halt":
            then = (
                "the run is halted (spec.failurePolicy.onPermanentFailure is Halt): fix the cause and submit the "
                "data as a new TrainingBatch, delete this one, or set onPermanentFailure to SkipBatch"
            )
        else:
            then = "going on with the next batch (spec.failurePolicy.onPermanentFailure is SkipBatch)"
        self._event("TrainingBatch", batch, "Warning", "Failed", f"{reason}: {message}; {then}")

    def _record_success(self, batch: str, outcome: Outcome) -> None:
        result = outcome.result
        # classify() returns Succeeded only with a result that has both steps.
        assert result is not None
        assert result.start_step is not None
        assert result.end_step is not None
        start, end = result.start_step, result.end_step
        completed = self._completed_step(exclude=batch)
        problem = _contiguity_problem(batch, result.outcome, start, end, completed)
        fields: dict[str, Any] = {
            "start_step": start,
            "end_step": end,
            "target_step": result.target_step,
            "samples": result.samples,
            "tokens": result.tokens,
            "mean_loss": round_loss(result.mean_loss),
            "checkpoint": result.checkpoint,
            "next_attempt_time": None,
        }
        if problem is not None:
            self._update(batch, phase="Failed", reason=STEPS_NOT_CONTIGUOUS, message=problem, **fields)
            self._event("TrainingBatch", batch, "Warning", STEPS_NOT_CONTIGUOUS, problem)
        else:
            loss = f", mean loss {result.mean_loss:.4f}" if result.mean_loss is not None else ""
            message = f"trained steps {start}..{end} ({result.samples} samples{loss})"
            if result.outcome == "AlreadyCompleted":
                message = f"already completed before: {message}"
            self._update(batch, phase="Succeeded", reason=result.outcome, message=message, **fields)
            self._event("TrainingBatch", batch, "Normal", result.outcome, message)
        if result.rebuilt:
            # The trainer found the checkpoint this batch starts from damaged and re-trained it bit for bit
            # (docs/trainer.md, "Self-healing batch-end checkpoints"): nothing was lost, but the volume had
            # a problem someone should know about.
            self._event("TrainingBatch", batch, "Warning", CHECKPOINT_REBUILT, result.rebuilt)
        if completed is None or end >= completed:
            self._record_progress(end, result.checkpoint, result.mean_loss)

    def _record_progress(self, step: int, checkpoint: str | None, loss: float | None) -> None:
        """The trainer's progress fields, set from a recorded result (the trainer may not have reported)."""
        self.progress["globalStep"] = step
        if checkpoint is not None:
            # The trainer reports the folder name (checkpoint-N); the result has it under checkpoints/.
            self.progress["latestCheckpoint"] = posixpath.basename(checkpoint)
        if loss is not None and not self.spec.progress.enabled:
            self.progress["lastLoss"] = round_loss(loss)

    def _record_orphan(self, job: JobView) -> None:
        """A finished Job whose TrainingBatch was deleted while it trained (decision 9)."""
        outcome = classify(job)
        result = outcome.result
        completed = self._completed_step()
        if outcome.kind == "Succeeded" and result is not None and result.end_step is not None:
            if completed is None or result.end_step > completed:
                start = result.start_step
                self.orphan_step = result.end_step
                self._record_progress(result.end_step, result.checkpoint, result.mean_loss)
                contiguous = completed is None or start == completed
                self._event(
                    "ContinualTrainingRun",
                    self.name,
                    "Normal" if contiguous else "Warning",
                    "DeletedBatchCompleted" if contiguous else STEPS_NOT_CONTIGUOUS,
                    f"TrainingBatch {job.batch} was deleted while Job {job.name} trained it; the Job finished "
                    f"steps {start}..{result.end_step} and the next batch continues from step {result.end_step}",
                )
        elif outcome.kind != "Succeeded":
            self._event(
                "ContinualTrainingRun",
                self.name,
                "Warning",
                "DeletedBatchNotCompleted",
                f"TrainingBatch {job.batch} was deleted while Job {job.name} trained it, and the Job did not "
                f"complete ({outcome.reason}: {outcome.message}). If it had started training, the trainer's "
                f"ledger still has it in progress and later batches cannot start: re-create TrainingBatch "
                f"{job.batch} with the same data to finish it",
            )
        self.deletes.append(DeleteJob(job.name, reason="BatchDeleted"))

    # -- decision 13: Jobs that do not start -----------------------------------------------------------
    def _watch_starting_jobs(self) -> None:
        if self.spec.suspend:
            return  # every Job is being stopped anyway; a suspend is nobody's failure
        deadline_seconds = self.spec.failure_policy.start_deadline_seconds
        for job in self.jobs:
            if job.finished or job.deleting:
                continue
            status = self.statuses.get(job.batch)
            current = (
                status is not None
                and status.phase == "Training"
                and (status.attempts or 0) == job.attempt
                and self.by_name[job.batch].metadata.deletion_timestamp is None
            )
            if job.pending_since is None:
                if current and status is not None and status.reason in STARTUP_PROBLEMS and not job.suspended:
                    # It started after all (the Secret was created): the problem is no longer the story.
                    message = f"attempt {job.attempt}: Job {job.name} (its pod started)"
                    self._update(job.batch, reason="Started", message=message)
                continue
            deadline = job.pending_since + dt.timedelta(seconds=deadline_seconds)
            if self.now >= deadline:
                # Foreground: should the container start after all, the Job is a writer until its pod is gone.
                self.deletes.append(
                    DeleteJob(job.name, reason=START_DEADLINE_EXCEEDED, propagation="Foreground")
                )
                if current:
                    self._start_deadline_exceeded(job, deadline_seconds)
                continue
            self._wake_up_in(min(STARTING_RECHECK_SECONDS, (deadline - self.now).total_seconds()))
            if current and job.cannot_start:
                self._cannot_start(job, deadline)

    def _cannot_start(self, job: JobView, deadline: dt.datetime) -> None:
        """Say on the batch why its pod waits (and, the first time for this attempt, in a Warning Event)."""
        status = self.statuses[job.batch]
        reason = job.waiting_reason or "CannotStart"
        message = (
            f"attempt {job.attempt} (Job {job.name}) cannot start: {reason}"
            + (f": {job.waiting_message}" if job.waiting_message else "")
            + f". Fix it and the pod starts; otherwise the attempt is stopped at {rfc3339(deadline)} and retried "
            "(spec.failurePolicy.startDeadlineSeconds)"
        )
        if (status.reason, status.message) == (reason, message):
            return
        first = status.reason not in STARTUP_PROBLEMS
        self._update(job.batch, reason=reason, message=message)
        if first:
            self._event("TrainingBatch", job.batch, "Warning", reason, message)

    def _start_deadline_exceeded(self, job: JobView, deadline_seconds: int) -> None:
        waited = f"; it was waiting with {job.waiting_reason}" if job.waiting_reason else ""
        detail = f": {job.waiting_message}" if job.waiting_message else ""
        outcome = Outcome(
            "Retry",
            START_DEADLINE_EXCEEDED,
            f"the trainer container did not start within spec.failurePolicy.startDeadlineSeconds "
            f"({deadline_seconds}s){waited}{detail}; Job {job.name} is stopped",
        )
        status = self.statuses[job.batch]
        failures = (status.failures or 0) + 1
        if failures <= self.spec.failure_policy.max_retries_per_batch:
            self._retry(job.batch, job, outcome, failures)
        else:
            self._fail(job.batch, outcome, failures)

    def _wake_up_in(self, seconds: float) -> None:
        self.requeue = seconds if self.requeue is None else min(self.requeue, seconds)

    def _failed_batch_removed(self, batch: str, jobs: list[JobView]) -> None:
        """A batch deleted after it had failed: its Jobs go, and the trainer sets its leftovers aside."""
        self.removed_failed.append(batch_id(batch))
        last = max(jobs, key=lambda j: j.attempt)
        outcome = classify(last)
        self._event(
            "ContinualTrainingRun",
            self.name,
            "Normal",
            "FailedBatchRemoved",
            f"TrainingBatch {batch}, which had failed (attempt {last.attempt}, {outcome.reason}), was deleted: its "
            f"Job(s) {', '.join(j.name for j in jobs)} are removed, the next batch's trainer sets aside whatever "
            "the failed batch left on the volume, and the run goes on with the next batch",
        )

    # -- decision 10: history ---------------------------------------------------------------------------
    def _clean_up_history(self) -> None:
        recorded = []
        for job in self.jobs:
            status = self.original.get(job.batch)
            if status is None or not job.finished or job.deleting:
                continue
            attempts = status.attempts or 0
            if job.attempt < attempts or (job.attempt == attempts and status.phase != "Training"):
                recorded.append(job)
        recorded.sort(key=lambda j: (j.created or _EPOCH, j.name), reverse=True)
        self.deletes.extend(DeleteJob(j.name, reason="ResultRecorded") for j in recorded[FINISHED_JOBS_KEPT:])

    # -- decision 7: halting ----------------------------------------------------------------------------
    def _halting_batch(self) -> str | None:
        successes = [
            parse_time(s.last_transition_time) or _EPOCH
            for s in self.statuses.values()
            if s.phase == "Succeeded"
        ]
        latest_success = max(successes, default=None)
        halt_on_failure = self.spec.failure_policy.on_permanent_failure == "Halt"
        for batch in self.batches:
            status = self.statuses[batch.metadata.name]
            if status.phase != "Failed" or not (halt_on_failure or status.reason == STEPS_NOT_CONTIGUOUS):
                continue
            failed_at = parse_time(status.last_transition_time) or _EPOCH
            if latest_success is None or failed_at >= latest_success:
                return batch.metadata.name
        return None

    # -- decisions 2, 8: Jobs to create or stop ---------------------------------------------------------
    def _suspend(self, writers: list[JobView]) -> None:
        for job in writers:
            if job.deleting:
                continue
            self.deletes.append(DeleteJob(job.name, reason="Suspended", propagation="Foreground"))
            self._event(
                "ContinualTrainingRun",
                self.name,
                "Normal",
                "Suspending",
                f"spec.suspend is true: stopping Job {job.name} so that it checkpoints; batch {job.batch} "
                "resumes from that checkpoint when spec.suspend is false",
            )
        # A batch whose Job is being stopped (or is gone) no longer shows Training; being deleted, that Job
        # is never recorded, and the same attempt is created again on resume (see _start_next).
        running = {j.name for j in self.jobs if not j.deleting}
        for batch in self.batches:
            name = batch.metadata.name
            status = self.statuses[name]
            if status.phase == "Training" and status.job not in running:
                self._update(
                    name,
                    phase="Queued",
                    reason=SUSPENDED,
                    message=f"run {self.name} is suspended (spec.suspend is true): attempt {status.attempts} "
                    "stopped at its last checkpoint and resumes from it when spec.suspend is false",
                )

    def _start_next(self) -> None:
        for batch in self.batches:
            name = batch.metadata.name
            status = self.statuses[name]
            if status.phase in TERMINAL or batch.metadata.deletion_timestamp is not None:
                continue
            if self.context.check_paths and (refusal := batch_path_refusal(self.run, batch)) is not None:
                self._refuse_batch(name, refusal)
                if self.spec.failure_policy.on_permanent_failure == "Halt":
                    return
                continue
            if status.phase == "Training" or (status.phase == "Queued" and status.reason == SUSPENDED):
                # Its Job disappeared, or was stopped by a suspend: create the same attempt again.
                attempt = max(status.attempts or 0, 1)
            else:
                retry_at = parse_time(status.next_attempt_time)
                if retry_at is not None and retry_at > self.now:
                    self.waiting = (name, retry_at)
                    self._wake_up_in((retry_at - self.now).total_seconds())
                    return
                attempt = (status.attempts or 0) + 1
            job = job_name(self.name, name, attempt)
            if any(j.name == job for j in self.jobs):
                self._wake_up_in(NAME_TAKEN_REQUEUE_SECONDS)  # a Job of that name is still being deleted
                return
            failed = tuple(
                batch_id(b.metadata.name)
                for b in self.batches
                if self.statuses[b.metadata.name].phase == "Failed"
            ) + tuple(self.removed_failed)
            self.create = CreateJob(batch=name, attempt=attempt, job_name=job, abandon_batches=failed)
            message = f"attempt {attempt}: Job {job}"
            self._update(
                name,
                phase="Training",
                attempts=attempt,
                job=job,
                reason="Started",
                message=message,
                next_attempt_time=None,
            )
            self._event("TrainingBatch", name, "Normal", "Started", message)
            return

    def _refuse_batch(self, batch: str, refusal: Refusal) -> None:
        """A batch that may not train fails permanently, without a Job (decision 12)."""
        self._update(
            batch, phase="Failed", reason=refusal.reason, message=refusal.message, next_attempt_time=None
        )
        self._event("TrainingBatch", batch, "Warning", refusal.reason, refusal.message)

    # -- decision 11: the run's status ------------------------------------------------------------------
    def _run_status(self, halting: str | None, writers: list[JobView]) -> dict[str, Any]:
        old = self.run.status
        generation = self.run.metadata.generation
        kueue = self.spec.scheduling.kueue_queue_name is not None
        current: tuple[str, str] | None = None
        waiting_for_admission = False
        stuck: JobView | None = None
        if self.create is not None:
            current, waiting_for_admission = (self.create.job_name, self.create.batch), kueue
        elif writers:
            writer = max(writers, key=lambda j: (j.created or _EPOCH, j.name))
            current, waiting_for_admission = (writer.name, writer.batch), writer.suspended
            stuck = writer if writer.cannot_start and not writer.deleting else None

        phase: RunPhase
        training: tuple[ConditionStatus, str, str]
        if self.spec.suspend:
            phase = "Suspended"
            stopping = f": Job {current[0]} is checkpointing and stopping" if current else ""
            training = ("False", "Suspended", f"spec.suspend is true{stopping}")
        elif halting is not None or (self.refusal is not None and current is None):
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
                f"Job {stuck.name} cannot start its pod ({stuck.waiting_reason}{why}): see TrainingBatch {stuck.batch}",
            )
        elif current is not None:
            phase = "Training"
            training = ("True", "JobRunning", f"Job {current[0]} trains batch {current[1]}")
        elif self.waiting is not None:
            phase = "Pending"
            training = (
                "False",
                "BackingOff",
                f"batch {self.waiting[0]} is retried at {rfc3339(self.waiting[1])}",
            )
        else:
            phase = "Idle"
            training = ("False", "Idle", "no batch is waiting to be trained")

        conditions = list(old.conditions)
        degraded = self._degraded(halting)
        ready: tuple[ConditionStatus, str, str] = (
            ("False", "Suspended", "spec.suspend is true")
            if self.spec.suspend
            else ("False", degraded[1], degraded[2])
            if self.refusal is not None
            else ("False", "Halted", degraded[2])
            if halting is not None
            else ("True", "Ready", "batches are trained in order as they arrive")
        )
        suspended: tuple[ConditionStatus, str, str] = (
            ("True", "Suspended", "spec.suspend is true")
            if self.spec.suspend
            else ("False", "NotSuspended", "spec.suspend is false")  # not "": see _degraded
        )
        for type_, (status, reason, message) in (
            ("Ready", ready),
            ("Training", training),
            ("Degraded", degraded),
            ("Suspended", suspended),
        ):
            conditions = set_condition(
                conditions, type_, status, reason, message, generation=generation, now=self.now
            )

        counts = [self.statuses[b.metadata.name].phase for b in self.batches]
        current_batch = batch_id(current[1]) if current is not None else None
        desired = wire(old) | {
            "phase": phase,
            "observedGeneration": generation,
            "batchesCompleted": counts.count("Succeeded"),
            "batchesQueued": sum(1 for p in counts if p in {None, "Queued"}),
            "batchesFailed": counts.count("Failed"),
            "currentJob": current[0] if current is not None else None,
            "currentBatch": current_batch,
            "completedStep": self._completed_step(),
            "conditions": [wire(c) for c in conditions],
            **self.progress,
        }
        if current_batch != old.current_batch:
            desired["currentBatchProgress"] = 0.0 if current_batch is not None else None
        if self.create is not None and old.trained_with is None:
            desired["trainedWith"] = wire(trained_with(self.run))  # decision 12: recorded once, then kept
        if self.refusal is not None:
            self._refusal_event(old, degraded)
        else:
            self._phase_events(old.phase, phase, degraded[2])
        return merge_patch(wire(old), desired)

    def _refusal_event(
        self, old: ContinualTrainingRunStatus, degraded: tuple[ConditionStatus, str, str]
    ) -> None:
        """One Warning Event when the refusal starts or changes (not on every reconcile)."""
        before = next((c for c in old.conditions if c.type == "Degraded"), None)
        if before is None or (before.status, before.reason, before.message) != degraded:
            self._event("ContinualTrainingRun", self.name, "Warning", degraded[1], degraded[2])

    def _degraded(self, halting: str | None) -> tuple[ConditionStatus, str, str]:
        if self.refusal is not None:
            return ("True", self.refusal.reason, self.refusal.message)
        if halting is None:
            # Never an empty message: the 1.20 API server (the e2e tier's) reads "" inside a list item of a
            # status as null and refuses the whole status patch ("must be of type string").
            return ("False", "Healthy", "no batch has failed permanently and steps are contiguous")
        status = self.statuses[halting]
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

    def _phase_events(self, old: str | None, new: RunPhase, degraded_message: str) -> None:
        if old == new:
            return
        if new == "Halted":
            self._event("ContinualTrainingRun", self.name, "Warning", "Halted", degraded_message)
        elif new == "Suspended":
            self._event("ContinualTrainingRun", self.name, "Normal", "Suspended", "spec.suspend is true")
        elif old in {"Suspended", "Halted", "Failed"}:
            self._event("ContinualTrainingRun", self.name, "Normal", "Resumed", f"the run is {new} again")


def _whole_second_up(when: dt.datetime) -> dt.datetime:
    """``when``, rounded up to a whole second (the precision of status timestamps)."""
    whole = when.replace(microsecond=0)
    return whole if whole == when else whole + dt.timedelta(seconds=1)


def _contiguity_problem(batch: str, outcome: str, start: int, end: int, completed: int | None) -> str | None:
    """Why a succeeded batch's step range is inconsistent with the run (decision 5), or None."""
    if end < start:
        return f"batch {batch} reports steps {start}..{end}: global_step went backwards inside the batch"
    if outcome == "AlreadyCompleted" or completed is None or start == completed:
        return None
    if start < completed:
        return (
            f"batch {batch} started at step {start}, before step {completed} where the last completed batch "
            "ended: training went backwards (the volume was restored from an older state, or another writer "
            "trained on it)"
        )
    return (
        f"batch {batch} started at step {start}, after step {completed} where the last completed batch ended: "
        f"steps {completed}..{start} were trained by something this run did not record (another writer on "
        "the volume?)"
    )
