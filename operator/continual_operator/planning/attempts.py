"""Decider: attempts and retries (decisions 3-6). A train workload's finished Job becomes its batch's status.

A finished Job is recorded once: when its attempt is the batch's latest and the batch is still marked
Training (or the attempt is newer than the status knows); a Job that exists without that mark is adopted.
Jobs being deleted are never recorded or adopted. A success is checked for step contiguity; a preemption
retries at once; other failures back off until the retries are used up, then the batch is Failed.

A coalesced Job (:func:`record_coalesced`) is its first batch's attempt; each batch after it is recorded
from its own result when the Job ends (its attempt counted then), or goes back to Queued untouched when
the Job did not reach it (or went away before it ended).
"""

from __future__ import annotations

import datetime as dt
import posixpath
from collections import defaultdict
from typing import Any

from continual_operator.api.batch import TrainingBatchStatus
from continual_operator.planning.draft import Draft
from continual_operator.planning.status import parse_time, rfc3339
from continual_operator.workloads.outcomes import Outcome, backoff_seconds, classify_batch
from continual_operator.workloads.train import TRAIN
from continual_operator.workloads.views import JobView

#: Significant digits of the losses written to status (a float32 loss has about 7; 5 keep the 4 decimals people compare).
LOSS_DIGITS = 5
STEPS_NOT_CONTIGUOUS = "StepsNotContiguous"
CHECKPOINT_REBUILT = "CheckpointRebuilt"


def round_loss(loss: float | None) -> float | None:
    """A loss as status shows it: :data:`LOSS_DIGITS` significant digits."""
    return None if loss is None else float(f"{loss:.{LOSS_DIGITS}g}")


def live_jobs_by_batch(draft: Draft) -> dict[str, list[JobView]]:
    """The run's train Jobs that are not being deleted, by batch name.

    A Job being deleted was dealt with already: its result was recorded before its cleanup, or it is being
    stopped by a suspend (its batch stays Training and the attempt is re-created).
    """
    by_batch: dict[str, list[JobView]] = defaultdict(list)
    for job in draft.jobs:
        if not job.deleting:
            by_batch[job.batch].append(job)
    return by_batch


def is_recorded(job: JobView, status: TrainingBatchStatus, draft: Draft) -> bool:
    """The batch status (of the Job's first batch) already accounts for this attempt.

    A batch marked Training for a coalesced Job that trains it after another batch has recorded this one.
    """
    attempts = status.attempts or 0
    if job.attempt != attempts:
        return job.attempt < attempts
    return status.phase != "Training" or status.job in coalescing(draft, job.batch)


def coalescing(draft: Draft, batch: str) -> set[str]:
    """The Jobs that train ``batch`` after another batch (coalesced)."""
    return {j.name for j in draft.jobs if batch in j.next_batches}


def record_jobs(draft: Draft) -> None:
    """Finished attempts of existing batches into their statuses; running ones adopted."""
    by_batch = live_jobs_by_batch(draft)
    for batch in draft.batches:
        name = batch.metadata.name
        if name not in by_batch:
            continue
        latest = max(by_batch[name], key=lambda j: j.attempt)
        status = draft.statuses[name]
        attempts = status.attempts or 0
        if is_recorded(latest, status, draft):
            continue
        if latest.finished:
            record(draft, name, latest)
        elif latest.attempt != attempts or status.job != latest.name or status.phase != "Training":
            draft.update(
                name, phase="Training", attempts=latest.attempt, job=latest.name, next_attempt_time=None
            )


def record(draft: Draft, batch: str, job: JobView) -> None:
    """One finished attempt of an existing batch (the first batch of its Job)."""
    record_outcome(draft, batch, job, TRAIN.classify(job), job.attempt)


def record_outcome(draft: Draft, batch: str, job: JobView, outcome: Outcome, attempt: int) -> None:
    """How the batch's attempt ``attempt`` (trained by ``job``) ended, into its status."""
    status = draft.statuses[batch]
    draft.update(batch, attempts=attempt, job=job.name)
    if outcome.kind == "Succeeded":
        record_success(draft, batch, outcome)
    elif outcome.kind == "Preempted":
        step = outcome.result.end_step if outcome.result is not None else None
        at = f" at step {step}" if step is not None else ""
        draft.update(
            batch,
            phase="Queued",
            preemptions=(status.preemptions or 0) + 1,
            reason="Preempted",
            message=f"attempt {attempt} was preempted{at} ({outcome.message}); it resumes from its last "
            "checkpoint in the next attempt",
            next_attempt_time=None,
        )
        draft.event("TrainingBatch", batch, "Normal", "Preempted", draft.statuses[batch].message or "")
    else:
        failed(draft, batch, job, outcome, attempt)


def record_coalesced(draft: Draft) -> None:
    """The batches coalesced Jobs train after their first one: results recorded, running Jobs adopted,
    and batches whose Job went away before it reached them queued again."""
    for job in draft.jobs:
        if job.deleting or not job.next_batches:
            continue
        first = draft.original.get(job.batch)
        fresh = first is None or not is_recorded(job, first, draft)  # its result is recorded in this plan
        for name in job.next_batches:
            if name not in draft.by_name:
                if job.finished and fresh:
                    _deleted_follower(draft, job, name)
                continue
            status = draft.statuses[name]
            if status.phase in {"Succeeded", "Failed"} or draft.by_name[name].metadata.deletion_timestamp:
                continue
            mine = status.phase == "Training" and status.job == job.name
            if job.finished and mine:
                _record_follower(draft, name, job)
            elif not job.finished and not mine:
                draft.update(name, phase="Training", job=job.name, next_attempt_time=None)
    _release_followers(draft)


def _record_follower(draft: Draft, batch: str, job: JobView) -> None:
    outcome = classify_batch(job, batch)
    if outcome is None:
        draft.update(
            batch,
            phase="Queued",
            reason="Queued",
            message=f"Job {job.name} stopped before it reached this batch (nothing trained, no attempt "
            "counted); it trains in the next Job",
        )
        return
    record_outcome(draft, batch, job, outcome, (draft.statuses[batch].attempts or 0) + 1)


def _deleted_follower(draft: Draft, job: JobView, batch: str) -> None:
    """A batch deleted while a coalesced Job trained it: a success moves the completed step (decision 9)."""
    outcome = classify_batch(job, batch)
    result = outcome.result if outcome is not None else None
    if outcome is None or outcome.kind != "Succeeded" or result is None or result.end_step is None:
        return
    completed = draft.completed_step()
    if completed is None or result.end_step > completed:
        draft.orphan_step = result.end_step
        record_progress(draft, result.end_step, result.checkpoint, result.mean_loss)
        draft.run_event(
            "Normal",
            "DeletedBatchCompleted",
            f"TrainingBatch {batch} was deleted while Job {job.name} trained it; the Job finished steps "
            f"{result.start_step}..{result.end_step} and the next batch continues from step {result.end_step}",
        )


def _release_followers(draft: Draft) -> None:
    """A batch marked Training for a coalesced Job that does not train it any more (being deleted: a
    suspend, a start deadline, its first batch deleted; or finished without listing it) waits for the next
    Job: it had no attempt there, and no Job being deleted is ever recorded."""
    by_name = {j.name: j for j in draft.jobs}
    for batch in draft.batches:
        name = batch.metadata.name
        status = draft.statuses[name]
        job = by_name.get(status.job or "")
        if status.phase != "Training" or job is None or name == job.batch:
            continue
        if (job.deleting and name in job.next_batches) or (job.finished and name not in job.next_batches):
            draft.update(
                name,
                phase="Queued",
                reason="Queued",
                message=f"Job {job.name}, which was to train this batch after batch {job.batch}, "
                f"{'is being deleted' if job.deleting else 'ended without it'}: the batch trains in the next Job",
            )


def failed(draft: Draft, batch: str, job: JobView, outcome: Outcome, attempt: int | None = None) -> None:
    """A failed attempt: retried after the back-off while retries are left, else the batch fails."""
    failures = (draft.statuses[batch].failures or 0) + 1
    if outcome.kind == "Retry" and failures <= draft.spec.failure_policy.max_retries_per_batch:
        retry(draft, batch, job, outcome, failures, attempt)
    else:
        fail(draft, batch, outcome, failures)


def retry(
    draft: Draft, batch: str, job: JobView, outcome: Outcome, failures: int, attempt: int | None = None
) -> None:
    policy = draft.spec.failure_policy
    delay = backoff_seconds(failures, base=policy.backoff_seconds, cap=policy.max_backoff_seconds)
    # Rounded up to the whole second nextAttemptTime is stored with: rounded down, any reconcile in
    # that last part of a second (a Job event, another batch) would start the retry early.
    retry_at = _whole_second_up(draft.now + dt.timedelta(seconds=delay))
    # The retry first: the outcome's message may be a 1 KB log tail (a crash leaves no result record),
    # and Event messages are cut at 1 KB.
    message = (
        f"attempt {attempt or job.attempt} failed ({outcome.reason}); retry {failures} of "
        f"{policy.max_retries_per_batch} at {rfc3339(retry_at)}: {outcome.message}"
    )
    draft.update(
        batch,
        phase="Queued",
        failures=failures,
        reason=outcome.reason,
        message=message,
        next_attempt_time=rfc3339(retry_at),
    )
    draft.event("TrainingBatch", batch, "Warning", "Retrying", message)


def fail(draft: Draft, batch: str, outcome: Outcome, failures: int) -> None:
    if outcome.kind == "Permanent":
        reason, message = outcome.reason, outcome.message
    else:
        reason = "RetriesExhausted"
        message = (
            f"{failures} failed attempts, the last one {outcome.reason}: {outcome.message} "
            f"(spec.failurePolicy.maxRetriesPerBatch is {draft.spec.failure_policy.max_retries_per_batch})"
        )
    result = outcome.result
    draft.update(
        batch,
        phase="Failed",
        failures=failures,
        reason=reason,
        message=message,
        next_attempt_time=None,
        start_step=result.start_step if result is not None else None,
        target_step=result.target_step if result is not None else None,
    )
    if draft.spec.failure_policy.on_permanent_failure == "Halt":
        then = (
            "the run is halted (spec.failurePolicy.onPermanentFailure is Halt): fix the cause and submit the "
            "data as a new TrainingBatch, delete this one, or set onPermanentFailure to SkipBatch"
        )
    else:
        then = "going on with the next batch (spec.failurePolicy.onPermanentFailure is SkipBatch)"
    draft.event("TrainingBatch", batch, "Warning", "Failed", f"{reason}: {message}; {then}")


def record_success(draft: Draft, batch: str, outcome: Outcome) -> None:
    result = outcome.result
    # classify() returns Succeeded only with a result that has both steps.
    assert result is not None
    assert result.start_step is not None
    assert result.end_step is not None
    start, end = result.start_step, result.end_step
    completed = draft.completed_step(exclude=batch)
    problem = contiguity_problem(batch, result.outcome, start, end, completed)
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
        draft.update(batch, phase="Failed", reason=STEPS_NOT_CONTIGUOUS, message=problem, **fields)
        draft.event("TrainingBatch", batch, "Warning", STEPS_NOT_CONTIGUOUS, problem)
    else:
        loss = f", mean loss {result.mean_loss:.4f}" if result.mean_loss is not None else ""
        message = f"trained steps {start}..{end} ({result.samples} samples{loss})"
        if result.outcome == "AlreadyCompleted":
            message = f"already completed before: {message}"
        draft.update(batch, phase="Succeeded", reason=result.outcome, message=message, **fields)
        draft.event("TrainingBatch", batch, "Normal", result.outcome, f"{message}{_how(draft, batch)}")
    if result.rebuilt:
        # The trainer found the checkpoint this batch starts from damaged and re-trained it bit for bit
        # (docs/trainer.md, "Self-healing batch-end checkpoints"): nothing was lost, but the volume had
        # a problem someone should know about.
        draft.event("TrainingBatch", batch, "Warning", CHECKPOINT_REBUILT, result.rebuilt)
    if completed is None or end >= completed:
        record_progress(draft, end, result.checkpoint, result.mean_loss)


def _how(draft: Draft, batch: str) -> str:
    """Which attempt trained a batch and how long it was Training: what the one Event of a batch's end
    tells ``kubectl describe`` (no Event is posted when it starts)."""
    status, before = draft.statuses[batch], draft.original[batch]
    how = f"; Job {status.job}, attempt {status.attempts}" if status.job else ""
    since = parse_time(before.last_transition_time) if before.phase == "Training" else None
    if since is not None:
        how += f", {max(0.0, (draft.now - since).total_seconds()):.0f} s after it started"
    return how


def record_progress(draft: Draft, step: int, checkpoint: str | None, loss: float | None) -> None:
    """The trainer's progress fields, set from a recorded result (the trainer may not have reported)."""
    draft.progress["globalStep"] = step
    if checkpoint is not None:
        # The trainer reports the folder name (checkpoint-N); the result has it under checkpoints/.
        draft.progress["latestCheckpoint"] = posixpath.basename(checkpoint)
    if loss is not None and not draft.spec.progress.enabled:
        draft.progress["lastLoss"] = round_loss(loss)


def _whole_second_up(when: dt.datetime) -> dt.datetime:
    """``when``, rounded up to a whole second (the precision of status timestamps)."""
    whole = when.replace(microsecond=0)
    return whole if whole == when else whole + dt.timedelta(seconds=1)


def contiguity_problem(batch: str, outcome: str, start: int, end: int, completed: int | None) -> str | None:
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
