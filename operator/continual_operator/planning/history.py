"""Decider: history (decisions 7 and 10) -- finished Jobs to delete, and whether a failure halts the run.

Finished Jobs whose result is recorded are deleted, except the newest :data:`FINISHED_JOBS_KEPT` (for
``kubectl logs``); the result lives on in the batch status. Halting is derived from the batches' history,
not stored: the run is halted while a Failed batch is not followed by a later success and either the
policy is Halt or the failure is a contiguity violation.
"""

from __future__ import annotations

import datetime as dt

from continual_operator.planning.attempts import STEPS_NOT_CONTIGUOUS, is_recorded
from continual_operator.planning.draft import Draft
from continual_operator.planning.status import parse_time

#: Recorded finished Jobs kept for ``kubectl logs``; older ones are deleted.
FINISHED_JOBS_KEPT = 3
_EPOCH = dt.datetime.min.replace(tzinfo=dt.UTC)


def clean_up_history(draft: Draft) -> None:
    """Delete the recorded finished train Jobs beyond the newest :data:`FINISHED_JOBS_KEPT`."""
    recorded = []
    for job in draft.jobs:
        status = draft.original.get(job.batch)
        if status is None or not job.finished or job.deleting:
            continue
        if is_recorded(job, status, draft):
            recorded.append(job)
    recorded.sort(key=lambda j: (j.created or _EPOCH, j.name), reverse=True)
    for job in recorded[FINISHED_JOBS_KEPT:]:
        draft.delete(job, reason="ResultRecorded")


def halting_batch(draft: Draft) -> str | None:
    """The Failed batch that halts the run, if any."""
    successes = [
        parse_time(s.last_transition_time) or _EPOCH
        for s in draft.statuses.values()
        if s.phase == "Succeeded"
    ]
    latest_success = max(successes, default=None)
    halt_on_failure = draft.spec.failure_policy.on_permanent_failure == "Halt"
    for batch in draft.batches:
        status = draft.statuses[batch.metadata.name]
        if status.phase != "Failed" or not (halt_on_failure or status.reason == STEPS_NOT_CONTIGUOUS):
            continue
        failed_at = parse_time(status.last_transition_time) or _EPOCH
        if latest_success is None or failed_at >= latest_success:
            return batch.metadata.name
    return None
