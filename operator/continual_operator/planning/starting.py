"""Decider: workloads that do not start (decision 13).

A Job whose container has not started gets ``spec.failurePolicy.startDeadlineSeconds`` from its pod's
creation. While it waits for something that will not happen by itself (a missing Secret, an image that
cannot be pulled, an unschedulable pod) the batch says so, with a Warning Event; past the deadline the
Job is stopped (foreground deletion) and the attempt counts as a transient failure.
"""

from __future__ import annotations

import datetime as dt

from continual_operator.planning.attempts import failed
from continual_operator.planning.draft import Draft
from continual_operator.planning.status import rfc3339
from continual_operator.workloads.outcomes import Outcome
from continual_operator.workloads.views import STARTUP_PROBLEMS, JobView

START_DEADLINE_EXCEEDED = "StartDeadlineExceeded"
#: While a Job waits for its container to start, look again this often (pods have no watch of their own).
STARTING_RECHECK_SECONDS = 10.0


def watch_starting_jobs(draft: Draft) -> None:
    if draft.spec.suspend:
        return  # every Job is being stopped anyway; a suspend is nobody's failure
    deadline_seconds = draft.spec.failure_policy.start_deadline_seconds
    for job in draft.jobs:
        if job.finished or job.deleting:
            continue
        status = draft.statuses.get(job.batch)
        current = (
            status is not None
            and status.phase == "Training"
            and (status.attempts or 0) == job.attempt
            and draft.by_name[job.batch].metadata.deletion_timestamp is None
        )
        if job.pending_since is None:
            if current and status is not None and status.reason in STARTUP_PROBLEMS and not job.suspended:
                # It started after all (the Secret was created): the problem is no longer the story.
                message = f"attempt {job.attempt}: Job {job.name} (its pod started)"
                draft.update(job.batch, reason="Started", message=message)
            continue
        deadline = job.pending_since + dt.timedelta(seconds=deadline_seconds)
        if draft.now >= deadline:
            # Foreground: should the container start after all, the Job is a writer until its pod is gone.
            draft.delete(job, reason=START_DEADLINE_EXCEEDED, propagation="Foreground")
            if current:
                _start_deadline_exceeded(draft, job, deadline_seconds)
            continue
        draft.wake_up_in(min(STARTING_RECHECK_SECONDS, (deadline - draft.now).total_seconds()))
        if current and job.cannot_start:
            _cannot_start(draft, job, deadline)


def _cannot_start(draft: Draft, job: JobView, deadline: dt.datetime) -> None:
    """Say on the batch why its pod waits (and, the first time for this attempt, in a Warning Event)."""
    status = draft.statuses[job.batch]
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
    draft.update(job.batch, reason=reason, message=message)
    if first:
        draft.event("TrainingBatch", job.batch, "Warning", reason, message)


def _start_deadline_exceeded(draft: Draft, job: JobView, deadline_seconds: int) -> None:
    waited = f"; it was waiting with {job.waiting_reason}" if job.waiting_reason else ""
    detail = f": {job.waiting_message}" if job.waiting_message else ""
    outcome = Outcome(
        "Retry",
        START_DEADLINE_EXCEEDED,
        f"the trainer container did not start within spec.failurePolicy.startDeadlineSeconds "
        f"({deadline_seconds}s){waited}{detail}; Job {job.name} is stopped",
    )
    failed(draft, job.batch, job, outcome)
