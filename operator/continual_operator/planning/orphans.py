"""Decider: batches deleted while (or after) they trained (decision 9).

A batch deleted while its Job trains lets the Job run to the end (stopping it would leave steps on the
volume that no batch accounts for); a success moves the run's completed step, either way an Event says
what happened and the Job is deleted. A batch deleted after it had failed (its Job is not the run's
``currentJob``) is what the Degraded message advises: its Jobs go, and the next trainer abandons it.
"""

from __future__ import annotations

from continual_operator.naming import batch_id
from continual_operator.planning.attempts import STEPS_NOT_CONTIGUOUS, live_jobs_by_batch, record_progress
from continual_operator.planning.draft import Draft
from continual_operator.workloads.train import TRAIN
from continual_operator.workloads.views import JobView


def record_orphans(draft: Draft) -> None:
    """The finished Jobs of batches that no longer exist."""
    by_batch = live_jobs_by_batch(draft)
    for batch_name in sorted(by_batch.keys() - draft.by_name.keys()):
        recorded_failures = []
        for job in by_batch[batch_name]:
            if not job.finished:
                continue
            if job.name != draft.run.status.current_job and TRAIN.classify(job).kind != "Succeeded":
                # Not the Job the run was waiting for: its failure was recorded on the batch before the
                # batch was deleted (as the Degraded message advises).
                recorded_failures.append(job)
                draft.delete(job, reason="BatchDeleted")
            else:
                _record_orphan(draft, job)
        if recorded_failures:
            _failed_batch_removed(draft, batch_name, recorded_failures)


def _record_orphan(draft: Draft, job: JobView) -> None:
    """A finished Job whose TrainingBatch was deleted while it trained."""
    outcome = TRAIN.classify(job)
    result = outcome.result
    completed = draft.completed_step()
    if outcome.kind == "Succeeded" and result is not None and result.end_step is not None:
        if completed is None or result.end_step > completed:
            start = result.start_step
            draft.orphan_step = result.end_step
            record_progress(draft, result.end_step, result.checkpoint, result.mean_loss)
            contiguous = completed is None or start == completed
            draft.run_event(
                "Normal" if contiguous else "Warning",
                "DeletedBatchCompleted" if contiguous else STEPS_NOT_CONTIGUOUS,
                f"TrainingBatch {job.batch} was deleted while Job {job.name} trained it; the Job finished "
                f"steps {start}..{result.end_step} and the next batch continues from step {result.end_step}",
            )
    elif outcome.kind != "Succeeded":
        draft.run_event(
            "Warning",
            "DeletedBatchNotCompleted",
            f"TrainingBatch {job.batch} was deleted while Job {job.name} trained it, and the Job did not "
            f"complete ({outcome.reason}: {outcome.message}). If it had started training, the trainer's "
            f"ledger still has it in progress and later batches cannot start: re-create TrainingBatch "
            f"{job.batch} with the same data to finish it",
        )
    draft.delete(job, reason="BatchDeleted")


def _failed_batch_removed(draft: Draft, batch: str, jobs: list[JobView]) -> None:
    """A batch deleted after it had failed: its Jobs go, and the trainer sets its leftovers aside."""
    draft.removed_failed.append(batch_id(batch))
    last = max(jobs, key=lambda j: j.attempt)
    outcome = TRAIN.classify(last)
    draft.run_event(
        "Normal",
        "FailedBatchRemoved",
        f"TrainingBatch {batch}, which had failed (attempt {last.attempt}, {outcome.reason}), was deleted: its "
        f"Job(s) {', '.join(j.name for j in jobs)} are removed, the next batch's trainer sets aside whatever "
        "the failed batch left on the volume, and the run goes on with the next batch",
    )
